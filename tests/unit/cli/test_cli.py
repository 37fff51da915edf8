"""The bmd-node command line, run in-process (main(argv)) and, for serve, as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest

from service.cli.main import build_parser, main
from service.db.engine import make_engine
from service.db.queries import record_instance
from service.queue import jobs
from tests.node_support import record, write_ct_series

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
    assert "0004" in capsys.readouterr().out
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
        assert name in parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]


def test_echo_unknown_peer(node_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", "nobody"]) == 2
    assert "no peer named 'nobody'" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_health_and_sigterm(node_env: Path) -> None:
    """`bmd-node serve` answers /health and stops cleanly on SIGTERM (workers included)."""
    from tests.integration.conftest import _free_port

    http_port = _free_port()
    env = {**os.environ, "BMD_NODE_NODE__PORT": str(_free_port()), "BMD_NODE_NODE__HTTP_PORT": str(http_port),
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
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=2) as response:
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
    import socket
    import threading

    from service.config import load_config
    from service.serve import serve

    assert main(["db", "upgrade"]) == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        config = load_config(env={**os.environ, "BMD_NODE_NODE__HOST": "127.0.0.1",
                                  "BMD_NODE_NODE__PORT": str(taken.getsockname()[1]),
                                  "BMD_NODE_NODE__HTTP_PORT": "0"})
        result: list[int] = []
        runner = threading.Thread(target=lambda: result.append(serve(config, workers=0)), daemon=True)
        runner.start()
        runner.join(timeout=60)
    assert result == [1]
