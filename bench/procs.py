"""Processes the benchmarks start and watch: the node (CLI subprocesses), DCMTK storescp, Orthanc, PostgreSQL,
storescu senders, and a peak-RSS sampler. Reuses the tests' helpers (ports: tests.support.net; Orthanc, PostgreSQL,
DCMTK lookup: tests.integration).

The integration helpers are imported where a benchmark starts those programs, not at the top: the stage child
(``bench.stages``, which imports this module) stands for a worker, and its peak RSS must not include pytest,
pynetdicom or the test fixtures.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import REPO_ROOT
from tests.support.net import free_port, wait_for_port

# DCMTK and Orthanc stall ~40 ms per PDU without TCP_NODELAY (see ARCHITECTURE.md).
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}
SENDER_AE = "BENCHSCU"
NODE_AE = "BMDNODE"
PACS_AE = "BENCHPACS"


def require_tool(name: str) -> str:
    """Path of a system tool; DCMTK's, not the same-named pynetdicom apps in the virtual environment's bin."""
    from tests.integration.dicom_net_support import require_tool as system_tool  # noqa: PLC0415 (module doc)

    try:
        return system_tool(name)
    except RuntimeError:
        raise RuntimeError(f"{name} is not installed (`make install` installs the Debian packages)") from None


def orthanc_binary_or_none() -> str | None:
    from tests.integration.orthanc import orthanc_binary  # noqa: PLC0415 (module doc)

    try:
        return orthanc_binary()
    except RuntimeError:
        return None


def find_pg_bin() -> Path | None:
    from tests.integration.conftest import _find_pg_bin  # noqa: PLC0415 (module doc)

    return _find_pg_bin()


# --- memory ------------------------------------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM (peak resident set) of a live process, MiB."""
    kib = _status_kib(pid, "VmHWM")
    return None if kib is None else kib / 1024


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out.extend(int(c) for c in text)
    except OSError:
        pass
    return out


def tree_pids(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(_children(p))
    return pids


class CpuMeter:
    """CPU time of a process tree since this meter was made (``tree_cpu_s``), per image."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start_s = tree_cpu_s(pid)

    def ms_per_image(self, images: int) -> float:
        return (tree_cpu_s(self.pid) - self.start_s) * 1000 / images


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, with those of reaped children) of a process and its descendants so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / ticks


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def tree_rss_mib(pid: int) -> float:
    """Summed VmRSS (MiB) of a process and its descendants now (e.g. the SCP and its receiver processes)."""
    return sum(_status_kib(p, "VmRSS") or 0 for p in tree_pids(pid)) / 1024


class RssSampler:
    """Samples the summed VmRSS of a process and its descendants every ``interval_s``; ``peak_mib`` is the max.

    For one long-lived process VmHWM (``peak_rss_mib``) is exact; the sampler also covers forked children
    (storescp --fork) and processes that exit before they can be asked.
    """

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _sample(self) -> None:
        total = sum(_status_kib(p, "VmRSS") or 0 for p in tree_pids(self.pid))
        self.peak_kib = max(self.peak_kib, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sample()
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024


# --- generic subprocess handling ---------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def node_command() -> list[str]:
    return [sys.executable, "-m", "service"]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def write_toml(path: Path, sections: Mapping[str, Mapping[str, Any]], peers: Sequence[Mapping[str, Any]]) -> Path:
    """A node config file: ``[section]`` tables plus ``[[peers]]``."""
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        lines.append("")
    for peer in peers:
        lines.append("[[peers]]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in peer.items())
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def node_env(threads: int | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {**PEER_ENV, **(extra or {})}
    env.pop("BMD_NODE_CONFIG", None)
    for name in [k for k in env if k.startswith("BMD_NODE_")]:
        env.pop(name)
    if threads is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
    pythonpath = [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    return env


def run_node_cli(config: Path, *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 300) -> str:
    out = subprocess.run([*node_command(), "--config", str(config), *args], capture_output=True, text=True,
                         cwd=REPO_ROOT, env=dict(env or node_env()), timeout=timeout_s, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"bmd-node {' '.join(args)} failed ({out.returncode}): {out.stderr[-3000:]}")
    return out.stdout


@contextlib.contextmanager
def node_process(config: Path, args: Sequence[str], log_path: Path, *, env: Mapping[str, str] | None = None,
                 wait_port: int | None = None, stop_timeout_s: float = 60.0,
                 command: Sequence[str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m service --config CONFIG ARGS...`` (or ``command`` instead of ``python -m service``) as a
    subprocess, stopped with SIGTERM at the end. ``wait_port``: wait until the port is open and the node logged
    ``RECEIVING_LOG`` (every receiver process accepts), then ``WARM_UP_S``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen([*(command or node_command()), "--config", str(config), *args], cwd=REPO_ROOT,
                                env=dict(env or node_env()), stdout=log, stderr=subprocess.STDOUT)
        try:
            if wait_port is not None:
                _wait_or_exit(proc, lambda: port_open(wait_port), f"listening on {wait_port}", log_path)
                _wait_or_exit(proc, lambda: RECEIVING_LOG in log_path.read_text(errors="replace"),
                              f"logging {RECEIVING_LOG!r}", log_path)
                time.sleep(WARM_UP_S)
            yield proc
        finally:
            stop_process(proc, stop_timeout_s)


RECEIVING_LOG = "receiving with"
"""What service.receive.scp.run_scp logs once the node's process and every receiver process accept connections
(the port is open before: connections wait in its backlog while the receiver processes start)."""
WARM_UP_S = 2.0
"""After that, before the clock starts: the processes finish their imports (a node runs for days; the benchmarks
measure it running, not starting)."""


def _wait_or_exit(proc: subprocess.Popen[Any], ready: Callable[[], bool], what: str, log_path: Path,
                  timeout_s: float = 120.0) -> None:
    """Poll ``ready()`` until it holds; RuntimeError (with the log's tail) if the process exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {what}: "
                               f"{log_path.read_text(errors='replace')[-3000:]}")
        if ready():
            return
        time.sleep(0.1)
    raise TimeoutError(f"not {what} after {timeout_s} s")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --- DICOM peers -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def storescp(out_dir: Path, port: int, *, ae_title: str = PACS_AE, fork: bool = False) -> Iterator[
        subprocess.Popen[bytes]]:
    """DCMTK storescp writing what it receives into out_dir (one file per instance, no fsync)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [require_tool("storescp"), "-aet", ae_title, "-od", str(out_dir), *(["--fork"] if fork else []), str(port)]
    proc = subprocess.Popen(cmd, env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout_s=60.0)
        yield proc
    finally:
        for pid in reversed(tree_pids(proc.pid)[1:]):  # forked children first
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
        stop_process(proc, 10)


@contextlib.contextmanager
def orthanc(work_dir: Path) -> Iterator[Any]:
    """Orthanc (Debian package) with its default SQLite index, no Lua, loopback ports (tests' OrthancServer)."""
    from tests.integration.orthanc import OrthancServer  # noqa: PLC0415 (module doc)

    server = OrthancServer(work_dir, node_ae_title=NODE_AE, node_port=free_port(), lua_script=None)
    with server:
        yield server


def orthanc_pid(server: Any) -> int:
    proc = getattr(server, "_proc", None)
    if proc is None:
        raise RuntimeError("Orthanc is not running")
    return int(proc.pid)


def storescu_command(files: Sequence[Path], port: int, called_ae: str) -> list[str]:
    return [require_tool("storescu"), "-aet", SENDER_AE, "-aec", called_ae, "127.0.0.1", str(port), *map(str, files)]


def send_series(files: Sequence[Path], port: int, called_ae: str, timeout_s: float = 1800) -> float:
    """storescu over one association; returns the wall seconds (raises when storescu fails)."""
    start = time.perf_counter()
    out = subprocess.run(storescu_command(files, port, called_ae), capture_output=True, text=True, env=PEER_ENV,
                         timeout=timeout_s, check=False)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"storescu to {called_ae} failed ({out.returncode}): {out.stderr[-2000:]}")
    return seconds


def send_parallel(studies: Sequence[Sequence[Path]], port: int, called_ae: str, timeout_s: float = 1800) -> float:
    """One storescu (one association) per study, all started together; seconds until the last one ends."""
    start = time.perf_counter()
    procs = [subprocess.Popen(storescu_command(files, port, called_ae), env=PEER_ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for files in studies]
    errors = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode != 0:
            errors.append(f"({proc.returncode}) {err.decode(errors='replace')[-1000:]}")
    seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"storescu to {called_ae} failed: {'; '.join(errors)}")
    return seconds


# --- PostgreSQL --------------------------------------------------------------------------------------------


@dataclass
class Postgres:
    port: int
    base_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2  # noqa: PLC0415 (module doc: only where a benchmark runs PostgreSQL)

        conn = psycopg2.connect(self.url())
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A throw-away PostgreSQL server (initdb + pg_ctl as the postgres user when root), as the tests' fixture.

    Unlike the tests' server it keeps fsync on (production-like durability), so commit costs are real.
    """
    from tests.integration.conftest import _as_postgres  # noqa: PLC0415 (module doc)

    pg_bin = find_pg_bin()
    if pg_bin is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found: `make install` installs them")
    base = Path(tempfile.mkdtemp(prefix="bmd-bench-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
    data = base / "data"
    port = free_port()
    init = _as_postgres([str(pg_bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync",
                         "-E", "UTF8"])
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr[-2000:]}")
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=100"
    start = _as_postgres([str(pg_bin / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"), "-w",
                          "-t", "60", "start"])
    if start.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {start.stderr[-2000:]}")
    try:
        yield Postgres(port, base)
    finally:
        _as_postgres([str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(base, ignore_errors=True)
