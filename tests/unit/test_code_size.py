"""Size limits of the node's code: no ``.py`` file under service/ over 400 lines, no function or method over 80.

A function's length is ``end_lineno - lineno + 1`` of its ``def`` (decorators excluded: ``lineno`` of a
``FunctionDef`` is the line of ``def``); nested functions are measured on their own as well (and count towards
their enclosing function). A file's length is its number of lines.

Exceptions live in ``ALLOWED`` below, each with the reason. An entry that is no longer needed (the file or
function is within the limit, or gone) fails the test too, so the list cannot rot.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80

ALLOWED: dict[str, str] = {
    # "service/path/to/module.py": "reason the whole file may be longer",
    # "service/path/to/module.py::Class.method": "reason this function may be longer",
    # Empty on purpose: the phantom renderer's region painters, the one candidate, are split by region and step
    # (service/offline/phantom/render_*.py). Add an entry only for code that cannot be split without harm.
}
"""Allow-list: ``"path"`` (a file over MAX_FILE_LINES) or ``"path::qualified.function"`` -> reason."""


@dataclass(frozen=True)
class Oversize:
    key: str
    """``path`` or ``path::qualified.name`` (path relative to the repository root, with '/')."""
    lines: int
    limit: int


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every function and method, nested ones included."""
    found: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            name = prefix + node.name
            found.append((name, node))
            found.extend(_functions(node, name + "."))
        elif isinstance(node, ast.ClassDef):
            found.extend(_functions(node, prefix + node.name + "."))
        else:
            found.extend(_functions(node, prefix))
    return found


def oversized(root: Path = ROOT, package: Path = SERVICE) -> list[Oversize]:
    """Every file and function under ``package`` over the limits."""
    out: list[Oversize] = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        n_lines = len(text.splitlines())
        if n_lines > MAX_FILE_LINES:
            out.append(Oversize(rel, n_lines, MAX_FILE_LINES))
        for name, node in _functions(ast.parse(text, filename=rel)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append(Oversize(f"{rel}::{name}", length, MAX_FUNCTION_LINES))
    return out


def not_allowed(found: list[Oversize], allowed: dict[str, str]) -> list[str]:
    """Oversized files and functions that the allow-list does not name."""
    return [f"{o.key}: {o.lines} lines (limit {o.limit})" for o in found if o.key not in allowed]


def stale(found: list[Oversize], allowed: dict[str, str]) -> list[str]:
    """Allow-list entries that nothing oversized needs any more."""
    return sorted(set(allowed) - {o.key for o in found})


@pytest.fixture(scope="module")
def found() -> list[Oversize]:
    return oversized()


def test_allow_list_entries_have_reasons() -> None:
    for key, reason in ALLOWED.items():
        assert key.startswith("service/") and key.split("::")[0].endswith(".py"), f"bad allow-list key {key!r}"
        assert reason.strip(), f"allow-list entry {key!r} needs a reason"


def test_no_file_or_function_over_the_limits(found: list[Oversize]) -> None:
    over = not_allowed(found, ALLOWED)
    assert not over, "over the size limits (split them, or allow-list them with a reason):\n" + "\n".join(over)


def test_allow_list_has_no_stale_entries(found: list[Oversize]) -> None:
    unneeded = stale(found, ALLOWED)
    assert not unneeded, "allow-list entries no longer needed (remove them):\n" + "\n".join(unneeded)


def test_allow_list_checks_both_ways() -> None:
    found = [Oversize("service/a.py", 401, MAX_FILE_LINES), Oversize("service/b.py::f", 81, MAX_FUNCTION_LINES)]
    allowed = {"service/a.py": "generated table", "service/c.py::g": "was long once"}
    assert not_allowed(found, allowed) == [f"service/b.py::f: 81 lines (limit {MAX_FUNCTION_LINES})"]
    assert stale(found, allowed) == ["service/c.py::g"]


def test_the_measure_counts_def_to_last_line(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()

    def body(indent: str) -> str:
        return "\n".join(f"{indent}x{k} = {k}" for k in range(MAX_FUNCTION_LINES - 1))

    # 80 lines from ``def`` on (81 with the decorator): within the limit, decorators are not counted
    (package / "ok.py").write_text(f"@staticmethod\ndef fits():\n{body('    ')}\n", encoding="utf-8")
    (package / "long.py").write_text(
        f"class C:\n    def method(self):\n        pass\n\n    def too_long(self):\n{body(' ' * 8)}\n        y = 1\n",
        encoding="utf-8")
    (package / "big.py").write_text("\n" * (MAX_FILE_LINES + 1), encoding="utf-8")
    keys = {o.key: o.lines for o in oversized(tmp_path, package)}
    assert keys == {"pkg/big.py": MAX_FILE_LINES + 1, "pkg/long.py::C.too_long": MAX_FUNCTION_LINES + 1}
