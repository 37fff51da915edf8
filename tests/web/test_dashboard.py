"""The dashboard through Starlette's TestClient: login, pages, roles, CSRF, patient data kept out of lists."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from PIL import Image
from starlette.testclient import TestClient

from service.config import Config, DashboardSettings
from service.db.engine import read_session
from service.db.tables import Export, Job, JobEvent
from service.export.outbox import claim_due_exports, mark_export_dead
from service.web.app import build_app
from service.web.auth import load_or_create_secret
from service.web.common import safe_next
from service.web.users import add_user, set_password
from tests.web.support import PATIENT_ID, PATIENT_NAME_SHOWN, csrf_of, failed_job, log_in, succeeded_study

ADMIN_PASSWORD = "admin password 1"
VIEWER_PASSWORD = "viewer password 1"


def _config(tmp_path: Path, *, show_names: bool = False) -> Config:
    return dataclasses.replace(
        Config().with_node(storage_dir=tmp_path / "storage"),
        dashboard=DashboardSettings(session_secret_file=tmp_path / "session.key", show_patient_names=show_names))


@pytest.fixture
def engine(sqlite_engine: sqlalchemy.Engine) -> sqlalchemy.Engine:
    add_user(sqlite_engine, "alice", "admin", ADMIN_PASSWORD)
    add_user(sqlite_engine, "victor", "viewer", VIEWER_PASSWORD)
    return sqlite_engine


@pytest.fixture
def client(engine: sqlalchemy.Engine, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(build_app(_config(tmp_path), engine)) as test_client:
        yield test_client


def test_pages_need_a_login_but_health_and_metrics_do_not(client: TestClient) -> None:
    for path in ("/", "/failures", "/exports", "/studies/1.2.3", "/jobs/1/key_image.png"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login"), path
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/metrics.json").status_code == 200
    assert client.post("/jobs/1/retry", data={"csrf_token": "x"}).status_code == 401


def test_wrong_password_is_refused_and_failures_are_limited(client: TestClient) -> None:
    page = client.get("/login")
    for _ in range(5):
        response = client.post("/login", data={"csrf_token": csrf_of(page.text), "username": "alice",
                                               "password": "wrong password"})
        assert response.status_code == 401 and "Wrong user name or password" in response.text
    response = client.post("/login", data={"csrf_token": csrf_of(page.text), "username": "alice",
                                           "password": ADMIN_PASSWORD})
    assert response.status_code == 429  # blocked for a while even with the right password
    assert client.get("/", follow_redirects=False).status_code == 303


def test_session_cookie_flags(client: TestClient) -> None:
    page = client.get("/login")
    response = client.post("/login", data={"csrf_token": csrf_of(page.text), "username": "alice",
                                           "password": ADMIN_PASSWORD}, follow_redirects=False)
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=28800" in cookie
    assert ADMIN_PASSWORD not in response.headers["set-cookie"]


def test_login_post_without_csrf_token_is_refused(client: TestClient) -> None:
    client.get("/login")
    response = client.post("/login", data={"username": "alice", "password": ADMIN_PASSWORD})
    assert response.status_code == 403


def test_studies_list_and_result_page(client: TestClient, engine: sqlalchemy.Engine, tmp_path: Path) -> None:
    study, job_id = succeeded_study(engine, tmp_path / "storage")
    log_in(client, "victor", VIEWER_PASSWORD)
    listing = client.get("/")
    assert listing.status_code == 200 and study in listing.text
    assert "another series of the study was preferred: thinner slices" in listing.text
    assert "Doe" not in listing.text and "Jane" not in listing.text and PATIENT_ID not in listing.text
    page = client.get(f"/studies/{study}")
    assert page.status_code == 200
    for text in ("T12", "cut by fov", "L1<span class=\"uncertain\"", "L2", "osteoporosis", "BMD = 0.8000 × HU",
                 f"/jobs/{job_id}/key_image.png", PATIENT_NAME_SHOWN, PATIENT_ID):
        assert text in page.text, text
    image = client.get(f"/jobs/{job_id}/key_image.png")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    png = Image.open(io.BytesIO(image.content))
    assert png.size == (256, 256) and len(set(png.getdata())) > 10  # the key image's pixels, not a blank
    assert client.get("/studies/1.2.3.4.5").status_code == 404


def test_patient_names_in_lists_only_when_configured(engine: sqlalchemy.Engine, tmp_path: Path) -> None:
    succeeded_study(engine, tmp_path / "storage")
    with TestClient(build_app(_config(tmp_path, show_names=True), engine)) as client:
        log_in(client, "victor", VIEWER_PASSWORD)
        assert PATIENT_NAME_SHOWN in client.get("/").text


def test_viewer_cannot_retry_and_admin_can(client: TestClient, engine: sqlalchemy.Engine) -> None:
    job_id = failed_job(engine)
    log_in(client, "victor", VIEWER_PASSWORD)
    page = client.get("/failures")
    assert "slices 8 mm thick" in page.text and f"retry-{job_id}" not in page.text  # no button for a viewer
    refused = client.post(f"/jobs/{job_id}/retry", data={"csrf_token": csrf_of(page.text)})
    assert refused.status_code == 403
    client.post("/logout", data={"csrf_token": csrf_of(page.text)})

    log_in(client, "alice", ADMIN_PASSWORD)
    page = client.get("/failures")
    assert f"retry-{job_id}" in page.text
    assert client.post(f"/jobs/{job_id}/retry", data={"csrf_token": "forged"}).status_code == 403
    done = client.post(f"/jobs/{job_id}/retry", data={"csrf_token": csrf_of(page.text), "next": "/failures"})
    assert done.status_code == 200 and f"job {job_id} queued again" in done.text
    with read_session(engine) as session:
        assert session.get(Job, job_id).status == "queued"  # type: ignore[union-attr]
        actors = [e.actor for e in session.query(JobEvent).filter_by(job_id=job_id)]
    assert actors[-1] == "dashboard:alice"
    again = client.post(f"/jobs/{job_id}/retry", data={"csrf_token": csrf_of(page.text)})
    assert again.status_code == 409  # queued: nothing to retry


def test_admin_reruns_a_succeeded_job(client: TestClient, engine: sqlalchemy.Engine, tmp_path: Path) -> None:
    study, job_id = succeeded_study(engine, tmp_path / "storage")
    log_in(client, "alice", ADMIN_PASSWORD)
    page = client.get(f"/studies/{study}")
    done = client.post(f"/jobs/{job_id}/rerun", data={"csrf_token": csrf_of(page.text), "next": f"/studies/{study}"})
    assert done.status_code == 200 and "queued to re-run" in done.text
    with read_session(engine) as session:
        newest = session.query(Job).order_by(Job.id.desc()).first()
    assert newest is not None and newest.status == "queued" and newest.supersedes_job_id == job_id


def test_exports_page_and_dead_export_retry(client: TestClient, engine: sqlalchemy.Engine, tmp_path: Path) -> None:
    succeeded_study(engine, tmp_path / "storage")
    task = claim_due_exports(engine, exporter_id="e", limit=1, lease_seconds=60)[0]
    mark_export_dead(engine, task.export_id, error="0xA700 out of resources")
    log_in(client, "alice", ADMIN_PASSWORD)
    page = client.get("/exports")
    assert page.status_code == 200 and "pacs" in page.text and "0xA700 out of resources" in page.text
    assert "0xA700 out of resources" in client.get("/failures").text
    done = client.post(f"/exports/{task.export_id}/retry", data={"csrf_token": csrf_of(page.text)})
    assert done.status_code == 200 and f"export {task.export_id} queued again" in done.text
    with read_session(engine) as session:
        assert session.get(Export, task.export_id).status == "pending"  # type: ignore[union-attr]


def test_password_change_ends_sessions(client: TestClient, engine: sqlalchemy.Engine) -> None:
    log_in(client, "victor", VIEWER_PASSWORD)
    assert client.get("/", follow_redirects=False).status_code == 200
    set_password(engine, "victor", "a new password 2")
    assert client.get("/", follow_redirects=False).status_code == 303


def test_status_strip_and_security_headers(client: TestClient, engine: sqlalchemy.Engine) -> None:
    failed_job(engine)
    log_in(client, "victor", VIEWER_PASSWORD)
    page = client.get("/")
    assert 'id="status-strip"' in page.text and "Database: ok" in page.text and "Disk free" in page.text
    assert page.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in page.headers[
        "content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert client.get("/static/dashboard.css").status_code == 200


def test_session_key_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "session.key"
    first = load_or_create_secret(path)
    assert load_or_create_secret(path) == first and len(first) == 64
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["session.key"]  # no temporary file left


@pytest.mark.parametrize(("target", "expected"), [
    ("/failures", "/failures"), ("//evil.example/x", "/"), ("https://evil.example", "/"), ("/\\evil", "/"),
    ("/\t/evil.example", "/"), ("", "/"), (None, "/")])
def test_redirects_stay_on_the_node(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected
