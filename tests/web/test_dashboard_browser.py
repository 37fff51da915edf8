"""The dashboard of a running node in a real browser (Debian's headless Chromium through Selenium).

``bmd-node serve`` runs as a subprocess with a small real pipeline (tests/web/support.py); DCMTK storescu sends
small CT studies, DCMTK storescp is the PACS that receives the results. In the browser: log in, see the study the
node has just processed, open its result page (key image, per-level table), retry a failed job and watch it
succeed; a viewer gets no retry button and its POST is refused with 403. /metrics parses with prometheus_client's
text parser and its counters move when a study is sent.

Screenshots go to the test's folder, and to ``$BMD_NODE_SCREENSHOT_DIR`` when set (docs/dashboard:
``BMD_NODE_SCREENSHOT_DIR=docs/dashboard .venv/bin/pytest tests/web/test_dashboard_browser.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from service.offline.viewer.browser import chromium
from tests.integration.dicom_net_support import echoscu, storescp_process, storescu
from tests.support.net import free_port, wait_for_port
from tests.support.waiting import wait_until
from tests.web.support import PATIENT_NAME_SHOWN, REJECT_ONCE_ENV, csrf_of, write_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN, ADMIN_PASSWORD = "radiology-it", "admin password 1"
VIEWER, VIEWER_PASSWORD = "reader", "viewer password 1"
PIPELINE = "tests.web.support:make_key_image_pipeline"


@dataclass(frozen=True)
class Node:
    http: str
    dicom_port: int
    work: Path
    reject_flag: Path


def _bmd_node(config: Path, *args: str, stdin: str | None = None, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "service", "--config", str(config), *args], input=stdin, text=True,
                   check=True, capture_output=True, cwd=REPO_ROOT, env=env, timeout=120)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    work = tmp_path_factory.mktemp("dashboard_node")
    node_port, http_port, pacs_port = free_port(), free_port(), free_port()
    config = work / "bmd-node.toml"
    config.write_text(f"""
[node]
host = "127.0.0.1"
port = {node_port}
http_port = {http_port}
storage_dir = "{work / 'storage'}"
database_url = "sqlite:///{work / 'node.db'}"
series_stable_seconds = 1
[[peers]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
[worker]
processes = 1
poll_seconds = 0.2
[exporter]
poll_seconds = 0.5
[dashboard]
session_secret_file = "{work / 'session.key'}"
""")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), REJECT_ONCE_ENV: str(work / "reject-next-job")}
    env = {k: v for k, v in env.items() if not k.startswith("BMD_NODE_")}
    _bmd_node(config, "db", "upgrade", env=env)
    _bmd_node(config, "users", "add", ADMIN, "--role", "admin", "--password-stdin", stdin=ADMIN_PASSWORD + "\n",
              env=env)
    _bmd_node(config, "users", "add", VIEWER, "--role", "viewer", "--password-stdin", stdin=VIEWER_PASSWORD + "\n",
              env=env)
    log = (work / "serve.log").open("wb")
    with storescp_process(work / "pacs", port=pacs_port):
        proc = subprocess.Popen([sys.executable, "-m", "service", "--config", str(config), "serve", "--pipeline",
                                 PIPELINE], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(http_port, timeout_s=60)
            wait_for_port(node_port, timeout_s=60)
            yield Node(f"http://127.0.0.1:{http_port}", node_port, work, work / "reject-next-job")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _json(url: str) -> dict[str, dict[str, int]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def _metrics(node: Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(node.http + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _jobs(node: Node, status: str) -> int:
    return _json(node.http + "/metrics.json")["jobs"].get(status, 0)


def _send_study(node: Node, folder: Path, hu: float, *, then: str, with_short_series: bool = False) -> str:
    """Send a study (and, when asked, a second series of 6 slices that the node must refuse, with its reason) and
    wait until one more job is ``then``; returns the Study Instance UID."""
    before = _jobs(node, then)
    files = write_study(folder, hu=hu)
    if with_short_series:
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        files += write_study(folder.with_name(folder.name + "-short"), hu=hu, n_slices=6, study_uid=study)
    done = storescu(files, port=node.dicom_port, calling_ae="PACS")
    assert done.returncode == 0, done.stderr
    _wait_jobs(node, then, before + 1)
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _wait_jobs(node: Node, status: str, count: int) -> None:
    wait_until(lambda: _jobs(node, status) >= count or None,
               f"{count} job(s) {status}; log: {node.work / 'serve.log'}", timeout_s=90, poll_s=0.5)


def _screenshot(driver: WebDriver, folder: Path, name: str) -> None:
    path = folder / name
    driver.save_screenshot(str(path))
    target = os.environ.get("BMD_NODE_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / name)


def _log_in(driver: WebDriver, node: Node, username: str, password: str) -> None:
    driver.get(node.http + "/")
    assert "/login" in driver.current_url
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()
    wait_until(lambda: driver.find_elements(By.ID, "status-strip") or None, "the dashboard after login")


def test_metrics_counters_move_when_a_study_is_sent(node: Node, tmp_path: Path) -> None:
    before = _metrics(node)
    stored = ("bmd_node_instances_received_total", (("status", "stored"),))
    received_bytes = ("bmd_node_received_bytes_total", (("status", "stored"),))
    _send_study(node, tmp_path / "metrics-study", hu=150.0, then="succeeded")
    succeeded = ("bmd_node_jobs", (("status", "succeeded"),))
    after = wait_until(lambda: m if (m := _metrics(node))[succeeded] > before[succeeded] else None,
                       "the job in /metrics (cached up to 5 s)", timeout_s=20)
    assert after[stored] == before[stored] + 12
    assert after[received_bytes] > before[received_bytes]
    assert after[("bmd_node_stage_duration_seconds_count", (("stage", "run"),))] >= 1
    assert after[("bmd_node_component_up", (("component", "worker-0"),))] == 1
    assert "Doe" not in urllib.request.urlopen(node.http + "/metrics", timeout=5).read().decode()


def test_metrics_count_associations_with_their_reason(node: Node) -> None:
    """The serving node's /metrics carries the SCP's association counts (accepted, and rejected by reason)."""
    accepted = ("bmd_node_associations_total", (("outcome", "accepted"), ("reason", "peer")))
    wrong_ae = ("bmd_node_associations_total", (("outcome", "rejected"), ("reason", "wrong_called_ae")))
    before = _metrics(node)
    assert echoscu(port=node.dicom_port, calling_ae="PACS").returncode == 0
    assert echoscu(port=node.dicom_port, calling_ae="PACS", called_ae="NOTTHENODE").returncode != 0
    after = wait_until(lambda: m if (m := _metrics(node))[wrong_ae] > before[wrong_ae]
                       and m[accepted] > before[accepted] else None, "both associations in /metrics", timeout_s=20)
    assert after[accepted] == before[accepted] + 1
    assert after[wrong_ae] == before[wrong_ae] + 1


def test_dashboard_in_a_browser(node: Node, tmp_path: Path) -> None:
    good_study = _send_study(node, tmp_path / "good-study", hu=90.0, then="succeeded", with_short_series=True)
    node.reject_flag.touch()  # the next job is rejected once: it fails, and its retry succeeds
    _send_study(node, tmp_path / "failing-study", hu=130.0, then="failed")
    succeeded = _jobs(node, "succeeded")

    with chromium(window_size=(1440, 900)) as driver:
        _log_in(driver, node, ADMIN, ADMIN_PASSWORD)
        rows = driver.find_elements(By.CSS_SELECTOR, "#studies tr.study")
        assert len(rows) >= 2 and "Doe" not in driver.page_source  # patient names hidden in lists by default
        _screenshot(driver, tmp_path, "dashboard.png")

        assert any("failed" in r.text and "rejected on purpose" in r.text for r in rows)
        assert any("rejected" in r.text and "only 6 slices" in r.text for r in rows)  # the other series, and why
        driver.find_element(By.LINK_TEXT, good_study).click()
        wait_until(lambda: driver.find_elements(By.ID, "levels") or None, "the result page")
        table = driver.find_element(By.ID, "levels").text
        assert "T12" in table and "cut by fov" in table and "L1?" in table and "L2" in table
        image = driver.find_element(By.ID, "key-image")
        assert wait_until(lambda: driver.execute_script("return arguments[0].naturalWidth", image) or None,
                          "the key image to load") == 256
        assert PATIENT_NAME_SHOWN in driver.page_source  # the result page, behind login, may show the patient
        _screenshot(driver, tmp_path, "result_page.png")

        driver.get(node.http + "/failures")
        button = driver.find_element(By.CSS_SELECTOR, "#failed-jobs button.retry")
        job_id = int(button.get_attribute("id").split("-")[1])
        button.click()  # a form POST: the page that answers it loads after click() returns
        flash = wait_until(lambda: driver.find_elements(By.ID, "flash") or None, "the page after the retry")
        assert f"job {job_id} queued again" in flash[0].text
        _wait_jobs(node, "succeeded", succeeded + 1)  # the retried job ran again, and succeeded
        driver.get(node.http + "/failures")
        assert not driver.find_elements(By.CSS_SELECTOR, "#failed-jobs")

        driver.find_element(By.CSS_SELECTOR, "form.logout button").click()
        wait_until(lambda: "/login" in driver.current_url or None, "the login page after logging out")
        _log_in(driver, node, VIEWER, VIEWER_PASSWORD)
        driver.get(node.http + "/failures")
        assert not driver.find_elements(By.CSS_SELECTOR, "button.retry")


def test_viewer_post_retry_is_refused(node: Node, tmp_path: Path) -> None:
    node.reject_flag.touch()
    _send_study(node, tmp_path / "viewer-study", hu=110.0, then="failed")
    failed = _jobs(node, "failed")
    with httpx.Client(base_url=node.http) as client:
        page = client.get("/login")
        assert client.post("/login", data={"csrf_token": csrf_of(page.text), "username": VIEWER,
                                           "password": VIEWER_PASSWORD}).status_code == 303
        failures = client.get("/failures")
        job_ids = [int(x) for x in re.findall(r"<td>#(\d+)</td>", failures.text)]
        assert job_ids and "button" not in failures.text.split("failed-jobs")[1].split("</table>")[0]
        refused = client.post(f"/jobs/{job_ids[0]}/retry", data={"csrf_token": csrf_of(failures.text)})
        assert refused.status_code == 403
    assert _jobs(node, "failed") == failed  # still failed: nothing was retried
