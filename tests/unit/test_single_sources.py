"""Values with one home: each is defined in one module of service/ and read from there everywhere else.

Each test scans the source with ``ast`` (no import), so a copy that was never executed is found too.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"

# --- guideline thresholds (osteoporosis below 80, normal above 120 mg/cm3) -------------------------------------

GUIDELINES = SERVICE / "domain" / "guidelines.py"
THRESHOLD_VALUES = (80, 120)
THRESHOLD_NAME = re.compile(r"osteopor|osteopen|normal_above|normal_from|threshold|cut_?off", re.IGNORECASE)
"""A name that holds a diagnosis cut-off (constant, field, argument, keyword)."""
CATEGORY_KEYS = frozenset({"normal", "osteopenia", "osteoporosis"})
"""Dictionary keys of per-category values (e.g. BMD bands)."""
THRESHOLD_TEXT = re.compile(r"(?:<|&lt;)\s*80\b|\b80\s*(?:-|–|to)\s*120\b|(?:>|&gt;)\s*120\b")
"""The cut-offs written into user-facing text, e.g. '<80 osteoporosis · 80–120 osteopenia'."""


def _is_threshold_number(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and type(node.value) in (int, float)
            and node.value in THRESHOLD_VALUES)


def _holds_threshold_number(node: ast.AST | None) -> bool:
    return node is not None and any(_is_threshold_number(n) for n in ast.walk(node))


def _target_names(target: ast.AST) -> Iterator[str]:
    for n in ast.walk(target):
        if isinstance(n, ast.Name):
            yield n.id
        elif isinstance(n, ast.Attribute):
            yield n.attr


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring constants (module, class, function) and attribute docstrings (a string statement)."""
    return {id(n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)}


def threshold_copies(source: str, filename: str = "<source>") -> list[str]:
    """Places in ``source`` that spell the guideline thresholds 80 / 120 as a diagnosis cut-off.

    Found: a value assigned to, or the default of, a name like ``*osteopor*`` / ``*normal_above*`` /
    ``*threshold*``; a keyword argument of such a name; a tuple / list / set holding both 80 and 120; a comparison of
    a ``*bmd*`` value with 80 or 120; a dictionary value under a category key ('normal', 'osteopenia',
    'osteoporosis'); user-facing text such as '<80' / '80-120' / '>120' (docstrings excluded).
    """
    tree = ast.parse(source, filename)
    docstrings = _docstrings(tree)
    hits: list[str] = []

    def hit(node: ast.AST, why: str) -> None:
        hits.append(f"{filename}:{getattr(node, 'lineno', '?')}: {why}")

    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [name for t in targets for name in _target_names(t) if THRESHOLD_NAME.search(name)]
            if names and _holds_threshold_number(node.value):
                hit(node, f"{names[0]} = 80/120")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
            for arg, default in pairs:
                if THRESHOLD_NAME.search(arg.arg) and _holds_threshold_number(default):
                    hit(default, f"default of {arg.arg} = 80/120")
        elif isinstance(node, ast.keyword):
            if node.arg and THRESHOLD_NAME.search(node.arg) and _holds_threshold_number(node.value):
                hit(node.value, f"{node.arg}=80/120")
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            values = {e.value for e in node.elts if _is_threshold_number(e)}  # type: ignore[attr-defined]
            if values == set(THRESHOLD_VALUES):
                hit(node, "(80, 120) pair")
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            names = [name.lower() for o in operands for name in _target_names(o)]
            if any(_is_threshold_number(o) for o in operands) and any("bmd" in name for name in names):
                hit(node, "BMD compared with 80/120")
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (isinstance(key, ast.Constant) and key.value in CATEGORY_KEYS
                        and _holds_threshold_number(value)):
                    hit(value, f"{key.value!r}: 80/120")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
              and THRESHOLD_TEXT.search(node.value)):
            hit(node, f"text {node.value.strip()[:60]!r}")
    return hits


def test_threshold_scanner_finds_the_kinds_of_copies() -> None:
    """The scanner itself: every kind of copy it is meant to catch, and the look-alikes it must leave alone."""
    copies = {
        "NORMAL_ABOVE_MG_CM3 = 120.0": 1,
        "class S:\n    osteoporosis_below_mg_cm3: float = 80.0": 1,
        "def f(threshold_mg_cm3: float = 80) -> None: ...": 1,
        "t = Thresholds(normal_above_mg_cm3=120.0)": 1,
        "for t in (80.0, 120.0):\n    pass": 1,
        "x = bmd_mg_cm3 > 120": 1,
        "bands = {'osteopenia': (80.0, 119.0)}": 1,
        "draw('ACR QCT (mg/cm³): <80 osteoporosis · 80–120 osteopenia')": 1,
        "html = '(&lt;80 osteoporosis, 80-120 osteopenia, &gt;120 normal)'": 1,
    }
    for source, expected in copies.items():
        assert len(threshold_copies(source)) == expected, (source, threshold_copies(source))
    look_alikes = [
        '"""Maps the 80 and 120 mg/cm3 thresholds (<80 osteoporosis) to HU."""',
        "FAT_HU_BY_KVP = {100.0: -108.0, 120.0: -100.0}",
        "MUSCLE_POSTERIOR_MM = (30.0, 80.0)",
        "SUPPORTED_KVP = (100, 120, 140)",
        "dimse_timeout_seconds: float = 120.0",
        "if hu > 120:\n    pass",
        "text = line[:80]",
        "threshold_set = 'ACR2018-ISCD-v1'",
    ]
    for source in look_alikes:
        assert threshold_copies(source) == [], (source, threshold_copies(source))


def test_guideline_thresholds_are_defined_only_in_domain_guidelines() -> None:
    """80 / 120 mg/cm3 as a diagnosis cut-off appears in service/domain/guidelines.py and nowhere else in service/:
    configuration defaults, the key image legend, reports and the phantom's truth categories read it from there."""
    copies = [hit for path in sorted(SERVICE.rglob("*.py")) if path != GUIDELINES
              for hit in threshold_copies(path.read_text(encoding="utf-8"), str(path.relative_to(SERVICE.parent)))]
    assert copies == [], "guideline thresholds copied outside service/domain/guidelines.py:\n" + "\n".join(copies)
    assert threshold_copies(GUIDELINES.read_text(encoding="utf-8")), "the scanner no longer sees the one definition"


# --- tests and benchmarks: one free-port helper, one CT-series writer ------------------------------------------

REPO = SERVICE.parent
TESTS_AND_BENCH = (REPO / "tests", REPO / "bench")
PORT_HELPER = ("tests/support/net.py", "held_port")
"""The one function that binds a socket to port 0 (``free_port`` reads its port)."""
CT_WRITER = ("tests/support/ct_series.py", "write_ct_series")
MULTIFRAME_WRITERS = ("write_multiframe_ct_series",)
"""The multi-frame form of the same slices, in the same module."""
SAVE_CALLS = frozenset({"save_as", "dcmwrite", "write_file"})
DATASET_CLASSES = frozenset({"Dataset", "FileDataset"})


def _call_name(node: ast.AST) -> str | None:
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    yield from (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))


def _sets_pixel_data(node: ast.AST) -> bool:
    return any(isinstance(n, (ast.Assign, ast.AnnAssign)) and any(
        isinstance(t, ast.Attribute) and t.attr == "PixelData"
        for target in (n.targets if isinstance(n, ast.Assign) else [n.target]) for t in ast.walk(target))
        for n in ast.walk(node))


def binds_port_zero(function: ast.AST) -> bool:
    """``sock.bind((host, 0))``: the kernel picks a free port."""
    for node in ast.walk(function):
        if _call_name(node) == "bind" and node.args:  # type: ignore[attr-defined]
            address = node.args[0]  # type: ignore[attr-defined]
            if (isinstance(address, ast.Tuple) and len(address.elts) == 2
                    and isinstance(address.elts[1], ast.Constant) and address.elts[1].value == 0):
                return True
    return False


def series_writers(trees: dict[str, ast.Module]) -> list[str]:
    """Functions that write a series of images: a loop that saves DICOM files (``save_as`` / ``dcmwrite``) of
    datasets it builds (``Dataset()`` / ``FileDataset()`` / ``.PixelData = ...``, or a call of a function that sets
    PixelData).  A loop that re-saves files it read (new UIDs on copies) builds nothing and does not count."""
    builders = {f.name for tree in trees.values() for f in _functions(tree) if _sets_pixel_data(f)}
    found = []
    for name, tree in trees.items():
        for function in _functions(tree):
            for loop in (n for n in ast.walk(function) if isinstance(n, (ast.For, ast.While, ast.comprehension))):
                calls = {_call_name(n) for n in ast.walk(loop)} - {None}
                if calls & SAVE_CALLS and (calls & (DATASET_CLASSES | builders) or _sets_pixel_data(loop)):
                    found.append(f"{name}:{function.name}")
                    break
    return found


def _sources() -> dict[str, ast.Module]:
    return {str(path.relative_to(REPO)): ast.parse(path.read_text(encoding="utf-8"), str(path))
            for folder in TESTS_AND_BENCH for path in sorted(folder.rglob("*.py"))}


def test_support_scanners_find_the_copies() -> None:
    """The scanners themselves, on the kinds of copies the tree had (free-port helpers, series writers)."""
    ports = {
        "import socket\ndef free_port():\n    with socket.socket() as s:\n        s.bind(('127.0.0.1', 0))\n"
        "        return s.getsockname()[1]": True,
        "def test_taken():\n    with socket.socket() as taken:\n        taken.bind(('127.0.0.1', 0))\n": True,
        "def serve(port):\n    sock.bind(('127.0.0.1', port))": False,
    }
    for source, expected in ports.items():
        assert [binds_port_zero(f) for f in _functions(ast.parse(source))] == [expected], source
    writer = ("def write(folder, n):\n    for k in range(n):\n        ds = Dataset()\n        ds.PixelData = b''\n"
              "        ds.save_as(folder / f'{k}.dcm')\n")
    via_builder = ("def image(k):\n    ds = Dataset()\n    ds.PixelData = b''\n    return ds\n"
                   "def write(folder, n):\n    for k in range(n):\n        image(k).save_as(folder / f'{k}.dcm')\n")
    clone = ("def clone(paths, folder):\n    for p in paths:\n        ds = dcmread(p)\n"
             "        ds.save_as(folder / p.name)\n")
    assert series_writers({"a": ast.parse(writer)}) == ["a:write"]
    assert series_writers({"b": ast.parse(via_builder)}) == ["b:write"]
    assert series_writers({"c": ast.parse(clone)}) == []


def test_one_free_port_helper_in_tests_and_bench() -> None:
    """Exactly one function in tests/ and bench/ binds a socket to port 0 (tests/support/net.py: held_port, which
    free_port uses), and free_port is defined once: servers, fixtures and benchmarks all ask it for their ports."""
    trees = _sources()
    binders = [f"{name}:{f.name}" for name, tree in trees.items() for f in _functions(tree) if binds_port_zero(f)]
    assert binders == [":".join(PORT_HELPER)], f"port-0 binds outside {PORT_HELPER[0]}: {binders}"
    definitions = [f"{name}:{f.name}" for name, tree in trees.items() for f in _functions(tree)
                   if f.name.lstrip("_") == "free_port"]
    assert definitions == [f"{PORT_HELPER[0]}:free_port"], definitions


def test_one_ct_series_writer_in_tests_and_bench() -> None:
    """Only the one CT writer module of tests/ and bench/ (tests/support/ct_series.py) writes series of DICOM images
    it builds: write_ct_series (single-frame) and write_multiframe_ct_series (Enhanced / Legacy Converted Enhanced CT
    of the same slices, built by ct_slices); the tests' and benchmarks' series (odd geometry, missing attributes,
    another transfer syntax) are their parameters, not copies of them."""
    writers = series_writers(_sources())
    assert writers, "the scanner no longer sees the writer module"
    assert all(w.startswith(CT_WRITER[0] + ":") for w in writers), writers
    assert len(writers) <= len(MULTIFRAME_WRITERS) + 1, writers
