"""The bmd-node command line, run in-process (main(argv)) and, for serve, as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest

from service.cli import node
from service.cli.main import ROOT_OPTIONS_WITH_VALUE, build_parser, main
from service.cli.offline_commands import OFFLINE_COMMANDS, OfflineCommand, requested_command
from service.config import load_config
from service.db.engine import make_engine
from service.db.migrate import SchemaError, current_revision, heads, upgrade
from service.db.queries import record_instance
from service.queue import jobs
from service.serve import prepare_schema, serve
from tests.node_support import record, write_ct_series
from tests.support.net import free_port, held_port, port_of

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def node_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BMD_NODE_NODE__DATABASE_URL", f"sqlite:///{tmp_path / 'node.db'}")
    monkeypatch.setenv("BMD_NODE_NODE__STORAGE_DIR", str(tmp_path / "storage"))
    monkeypatch.delenv("BMD_NODE_CONFIG", raising=False)
    return tmp_path


def test_config_error_names_the_key(node_env: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BMD_NODE_NODE__PORT", "not-a-port")
    assert main(["jobs", "list"]) == 2
    assert "node.port" in capsys.readouterr().err


def test_config_file_option_and_show(node_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = node_env / "c.toml"
    path.write_text('[node]\nae_title = "CLITEST"\ndatabase_url = "postgresql://u:pw@db/x"\n')
    assert main(["--config", str(path), "config", "show"]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["node"]["ae_title"] == "CLITEST"
    assert "pw" not in out


def test_db_upgrade_jobs_and_series(node_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade"]) == 0
    assert "0007" in capsys.readouterr().out
    engine = make_engine(f"sqlite:///{node_env / 'node.db'}")
    record_instance(engine, record("1.2.3", "1.2.3.1"))
    record_instance(engine, record("7.7", "7.7.1", status="ignored", modality="MR"))
    job_id = jobs.enqueue(engine, "1.2.3", max_attempts=1)
    jobs.claim_next(engine, worker_id="w", lease_seconds=60)
    jobs.fail(engine, job_id, worker_id="w", error="series rejected: too thick", retryable=False)  # type: ignore[arg-type]
    assert main(["jobs", "list"]) == 0
    out = capsys.readouterr().out
    assert "failed" in out and "too thick" in out
    assert main(["jobs", "show", str(job_id)]) == 0
    out = capsys.readouterr().out
    assert "-> failed" in out and "series rejected: too thick" in out
    assert main(["jobs", "retry", str(job_id)]) == 0
    assert jobs.get_job(engine, job_id).status == "queued"  # type: ignore[arg-type,union-attr]
    assert main(["jobs", "retry", str(job_id)]) == 1
    assert "only failed or dead" in capsys.readouterr().err
    assert main(["series", "list"]) == 0
    out = capsys.readouterr().out
    assert "ignored" in out and "1.2.3" in out
    assert main(["exports", "list"]) == 0
    engine.dispose()


def test_role_refuses_unmigrated_database(node_env: Path) -> None:
    with pytest.raises(SystemExit, match="db upgrade"):
        main(["worker"])


# --- --config / --log-level before or after the command ----------------------------------------------------


def test_config_option_after_the_command(node_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = node_env / "c.toml"
    path.write_text('[node]\nae_title = "AFTERCMD"\n')
    args = build_parser().parse_args(["serve", "--config", str(path), "--log-level", "DEBUG"])
    assert args.func is node.cmd_serve
    assert args.config == str(path) and args.log_level == "DEBUG"
    assert load_config(args.config).node.ae_title == "AFTERCMD"
    assert main(["config", "show", "--config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["node"]["ae_title"] == "AFTERCMD"


def test_config_option_before_the_command_and_which_wins(node_env: Path) -> None:
    parser = build_parser()
    args = parser.parse_args(["--config", "root.toml", "--log-level", "ERROR", "serve"])
    assert args.func is node.cmd_serve
    assert (args.config, args.log_level) == ("root.toml", "ERROR")
    args = parser.parse_args(["--config", "root.toml", "serve", "--config", "sub.toml"])
    assert args.config == "sub.toml"  # the subcommand's value wins
    args = parser.parse_args(["jobs", "list", "--config", "nested.toml", "--status", "dead"])
    assert (args.config, args.log_level, args.status) == ("nested.toml", None, "dead")
    args = parser.parse_args(["serve"])
    assert (args.config, args.log_level) == (None, None)


# --- serve's startup schema step ----------------------------------------------------------------------------


def test_serve_schema_step_creates_the_schema_in_an_empty_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'node.db'}"
    prepare_schema(url)
    assert current_revision(url) == heads()[0]
    engine = make_engine(url)
    try:
        assert record_instance(engine, record("1.2.3", "1.2.3.1"))
        assert jobs.enqueue(engine, "1.2.3", max_attempts=1) is not None
    finally:
        engine.dispose()
    prepare_schema(url)  # at head: starts as it is
    assert current_revision(url) == heads()[0]


def test_serve_schema_step_refuses_an_older_revision(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    upgrade(url, "0001")
    with pytest.raises(SchemaError, match=r"revision 0001.*run `bmd-node db upgrade`"):
        prepare_schema(url)
    assert current_revision(url) == "0001"  # not upgraded silently


def test_serve_command_refuses_an_older_revision(node_env: Path) -> None:
    url = f"sqlite:///{node_env / 'node.db'}"
    upgrade(url, "0003")
    with pytest.raises(SystemExit, match="bmd-node db upgrade"):
        main(["serve", "--workers", "0"])
    assert current_revision(url) == "0003"


def test_serve_schema_step_refuses_an_unknown_sqlite_database(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE patients (id INTEGER PRIMARY KEY)")
        conn.commit()
    finally:
        conn.close()
    url = f"sqlite:///{path}"
    with pytest.raises(SchemaError, match=r"has tables \(patients\) but no schema revision"):
        prepare_schema(url)
    assert current_revision(url) is None


# --- commands, help and the offline tools ---------------------------------------------------------------------


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    for name in ("serve", "scp", "scheduler", "worker", "exporter", "db", "jobs", "series", "exports", "echo",
                 "send", "analyze", "config", "calibrate", *(entry.command for entry in OFFLINE_COMMANDS)):
        assert f"\n    {name} " in listed, name


@pytest.mark.parametrize("entry", OFFLINE_COMMANDS, ids=lambda entry: entry.command)
def test_offline_command_loads_when_it_runs(entry: OfflineCommand, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([entry.command, "--help"])
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    assert "unavailable" not in captured.err
    assert "--config" in captured.out  # the offline parsers take the node options too


def test_offline_subcommands_come_from_their_modules() -> None:
    args = build_parser("train").parse_args(["train", "models", "--cohort", "c.csv", "--out", "m", "--config", "x"])
    assert args.func.__module__ == "service.offline.cohort.commands" and args.config == "x"
    args = build_parser("train").parse_args(["train", "segmentation"])
    assert args.func.__module__ == "service.offline.evaluation.commands"
    with pytest.raises(SystemExit):
        build_parser(None).parse_args(["train", "models", "--cohort", "c.csv", "--out", "m"])


def test_node_commands_do_not_load_the_offline_tools() -> None:
    code = ("import sys; from service.cli.main import build_parser; build_parser('serve'); "
            "print(sorted(m for m in sys.modules if m.startswith('service.offline')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("argv", "command"), [
    (["serve"], "serve"),
    (["--config", "train", "serve"], "serve"),
    (["--config=c.toml", "--log-level", "DEBUG", "train", "models"], "train"),
    (["--conf", "c.toml", "phantom", "--out", "x"], "phantom"),
    (["--version"], None),
    ([], None),
])
def test_requested_command(argv: list[str], command: str | None) -> None:
    assert requested_command(argv, ROOT_OPTIONS_WITH_VALUE) == command


def test_analyze_writes_result_json_and_objects(node_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_ct_series(node_env / "ct", n_slices=12, size=16)
    out_dir = node_env / "out"
    code = main(["analyze", str(node_env / "ct"), "--out", str(out_dir), "--pipeline",
                 "tests.node_support:make_mean_hu_pipeline"])
    assert code == 0
    document = json.loads((out_dir / "result.json").read_text())
    header = pydicom.dcmread(next((node_env / "ct").glob("*.dcm")), stop_before_pixels=True)
    assert document["series_instance_uid"] == header.SeriesInstanceUID
    assert document["summary"]["category"] in ("normal", "osteopenia", "osteoporosis", "indeterminate")
    assert {p.name for p in out_dir.glob("*.dcm")} == {"sr.dcm", "key_image.dcm"}
    assert "L1" in capsys.readouterr().out


def test_every_helper_parent_exists() -> None:
    parser = build_parser()
    for name in ("train", "evaluate", "calibrate", "cohort", "serve", "scp", "worker", "exporter", "echo", "send",
                 "analyze"):
        assert name in parser._subparsers._group_actions[0].choices  # type: ignore[union-attr,operator]


def test_echo_unknown_peer(node_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", "nobody"]) == 2
    assert "no peer named 'nobody'" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_health_and_sigterm(node_env: Path) -> None:
    """`bmd-node serve` answers /health and stops cleanly on SIGTERM (workers included)."""
    http_port = free_port()
    env = {**os.environ, "BMD_NODE_NODE__PORT": str(free_port()), "BMD_NODE_NODE__HTTP_PORT": str(http_port),
           "BMD_NODE_NODE__HOST": "127.0.0.1", "BMD_NODE_WORKER__PROCESSES": "1", "PYTHONPATH": str(REPO_ROOT)}
    assert main(["db", "upgrade"]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve", "--pipeline",
                             "tests.node_support:make_mean_hu_pipeline"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=2) as response:
                    body = json.loads(response.read())
            except OSError:
                time.sleep(0.3)
        assert body is not None and body["status"] == "ok" and body["database"] == "ok"
        assert {"scp", "scheduler", "exporter", "http", "worker-0"} <= set(body["components"])  # type: ignore[arg-type]
        assert all(body["components"].values())  # type: ignore[union-attr]
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics.json", timeout=2) as response:
            assert set(json.loads(response.read())) == {"jobs", "exports", "series", "instances"}
        time.sleep(2)  # let the worker process start
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=45)[0].decode(errors="replace")
        assert proc.returncode == 0, output
        assert "worker" in output and "stopped" in output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_serve_exits_with_error_when_a_part_fails(node_env: Path) -> None:
    """The SCP port is taken: the node must not keep running without its SCP."""
    assert main(["db", "upgrade"]) == 0
    with held_port() as taken:
        taken.listen(1)
        config = load_config(env={**os.environ, "BMD_NODE_NODE__HOST": "127.0.0.1",
                                  "BMD_NODE_NODE__PORT": str(port_of(taken)),
                                  "BMD_NODE_NODE__HTTP_PORT": "0"})
        result: list[int] = []
        runner = threading.Thread(target=lambda: result.append(serve(config, workers=0)), daemon=True)
        runner.start()
        runner.join(timeout=60)
    assert result == [1]
