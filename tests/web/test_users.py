"""Dashboard users: scrypt hashes, and ``bmd-node users`` on a migrated database."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import sqlalchemy

from service.cli.main import main
from service.db.engine import make_engine, read_session
from service.db.tables import User
from service.web.users import UserError, add_user, authenticate, hash_password, verify_password


def test_hash_is_salted_scrypt_and_verifies() -> None:
    first, second = hash_password("a long password"), hash_password("a long password")
    assert first.startswith("scrypt$32768$8$1$") and first != second  # a fresh salt each time
    assert "a long password" not in first
    assert verify_password("a long password", first) and verify_password("a long password", second)
    assert not verify_password("a long passwore", first)
    assert not verify_password("a long password", "md5$abc") and not verify_password("x", "garbage")


def test_add_refuses_duplicates_weak_passwords_and_odd_names(sqlite_engine: sqlalchemy.Engine) -> None:
    add_user(sqlite_engine, "alice", "admin", "0123456789")
    with pytest.raises(UserError, match="exists already"):
        add_user(sqlite_engine, "alice", "viewer", "0123456789")
    with pytest.raises(UserError, match="at least 10 characters"):
        add_user(sqlite_engine, "bob", "viewer", "short")
    with pytest.raises(UserError, match="username"):
        add_user(sqlite_engine, "bob smith", "viewer", "0123456789")
    with pytest.raises(ValueError):
        add_user(sqlite_engine, "bob", "root", "0123456789")
    assert authenticate(sqlite_engine, "alice", "0123456789") is not None
    assert authenticate(sqlite_engine, "alice", "wrong-password") is None
    assert authenticate(sqlite_engine, "nobody", "0123456789") is None


@pytest.fixture
def node_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    monkeypatch.setenv("BMD_NODE_NODE__DATABASE_URL", url)
    monkeypatch.setenv("BMD_NODE_NODE__STORAGE_DIR", str(tmp_path / "storage"))
    monkeypatch.delenv("BMD_NODE_CONFIG", raising=False)
    assert main(["db", "upgrade"]) == 0
    return url


def test_users_command(node_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("first password\n"))
    assert main(["users", "add", "carol", "--role", "admin", "--password-stdin"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("first password\n"))
    assert main(["users", "add", "carol", "--role", "viewer", "--password-stdin"]) == 1
    assert "exists already" in capsys.readouterr().err
    assert main(["users", "role", "carol", "viewer"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("second password\n"))
    assert main(["users", "passwd", "carol", "--password-stdin"]) == 0
    engine = make_engine(node_db)
    try:
        with read_session(engine) as session:
            row = session.query(User).filter_by(username="carol").one()
            assert row.role == "viewer" and "second password" not in row.password_hash
        assert authenticate(engine, "carol", "second password") is not None
        assert authenticate(engine, "carol", "first password") is None
        capsys.readouterr()
        assert main(["users", "list"]) == 0
        assert "carol" in capsys.readouterr().out
        assert main(["users", "remove", "carol"]) == 0
        assert authenticate(engine, "carol", "second password") is None
    finally:
        engine.dispose()
