from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from service.config import DEFAULTS_TOML, Config, NodeSettings, PeerSettings, load_config
from service.config_loader import ConfigError, toml_keys
from service.domain.levels import VertebraLevel
from service.domain.paths import PROJECT_ROOT, resolve_model_path
from service.domain.results import RoiMethod


def test_embedded_defaults_work_without_a_file() -> None:
    config = load_config(env={})
    assert config.node == NodeSettings()
    assert config.node.ae_title == "BMDNODE"
    assert config.node.port == 11112
    assert config.node.http_port == 8080
    assert config.node.storage_dir == Path("var/storage")
    assert config.node.database_url == "sqlite:///var/bmd-node.db"
    assert config.node.series_stable_seconds == 10
    assert config.peers == (PeerSettings("pacs", "ORTHANC", "127.0.0.1", 4242, True),)
    assert config.bmd.summary_levels == (VertebraLevel.L1, VertebraLevel.L2)


def test_defaults_toml_matches_dataclass_defaults() -> None:
    raw = tomllib.loads(DEFAULTS_TOML)
    for key, value in raw["node"].items():
        assert getattr(NodeSettings(), key) == (Path(value) if key == "storage_dir" else value), key


def test_file_then_env_override(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("""
[node]
ae_title = "MYNODE"
port = 104
[[peers]]
name = "pacs1"
ae_title = "PACS1"
host = "10.0.0.1"
port = 11112
[[peers]]
name = "viewer"
ae_title = "VIEW"
host = "10.0.0.2"
port = 104
send_results = false
[bmd]
summary_levels = ["L1", "L2", "L3"]
roi_method = "elliptical_cylinder"
""")
    env = {"BMD_NODE_NODE__PORT": "11113", "BMD_NODE_WORKER__PROCESSES": "3",
           "BMD_NODE_PEERS__VIEWER__SEND_RESULTS": "true", "BMD_NODE_PEERS__0__HOST": "10.0.0.9",
           "BMD_NODE_SERIES__MAX_SLICE_THICKNESS_MM": "3.5", "BMD_NODE_BMD__SUMMARY_LEVELS": "T12,L1"}
    config = load_config(path, env=env)
    assert config.node.ae_title == "MYNODE"
    assert config.node.port == 11113
    assert config.worker.processes == 3
    assert config.series.max_slice_thickness_mm == 3.5
    assert [p.name for p in config.peers] == ["pacs1", "viewer"]
    assert config.peer("pacs1").host == "10.0.0.9"
    assert config.peer("viewer").send_results is True
    assert config.bmd.roi_method is RoiMethod.ELLIPTICAL_CYLINDER
    assert config.bmd.summary_levels == (VertebraLevel.T12, VertebraLevel.L1)
    assert str(path) in config.source and "BMD_NODE_NODE__PORT" in config.source


def test_config_file_from_env(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[node]\nae_title = "FROMENV"\n')
    assert load_config(env={"BMD_NODE_CONFIG": str(path)}).node.ae_title == "FROMENV"


def test_env_can_append_a_peer() -> None:
    env = {"BMD_NODE_PEERS__1__NAME": "second", "BMD_NODE_PEERS__1__AE_TITLE": "SECOND",
           "BMD_NODE_PEERS__1__HOST": "127.0.0.1", "BMD_NODE_PEERS__1__PORT": "5000"}
    config = load_config(env=env)
    assert [p.name for p in config.peers] == ["pacs", "second"]
    assert config.peer("second").port == 5000


@pytest.mark.parametrize(("toml", "env", "key"), [
    ('[node]\nport = "abc"\n', {}, "node.port"),
    ('[node]\nport = 70000\n', {}, "node.port"),
    ('[node]\nae_title = "A_VERY_LONG_AE_TITLE_X"\n', {}, "node.ae_title"),
    ('[node]\nbogus = 1\n', {}, "node.bogus"),
    ('[nodes]\nport = 1\n', {}, "nodes"),
    ('[worker]\nheartbeat_seconds = 500\nlease_seconds = 100\n', {}, "worker.heartbeat_seconds"),
    ('[segmentation]\nbackend = "magic"\n', {}, "segmentation.backend"),
    ('[bmd]\nsummary_levels = ["L9"]\n', {}, "bmd.summary_levels"),
    ('[bmd]\nroi_method = "sphere"\n', {}, "bmd.roi_method"),
    ('[[peers]]\nname = "x"\nae_title = "X"\nhost = "h"\n', {}, "peers[0].port"),
    ('[[peers]]\nname = "x"\nae_title = "X"\nhost = "h"\nport = 1\nsend_results = "yes"\n', {},
     "peers[0].send_results"),
    ('', {"BMD_NODE_NODE__PORT": "eleven"}, "node.port"),
    ('', {"BMD_NODE_NODE__NOPE": "1"}, "node.nope"),
    ('', {"BMD_NODE_WHAT__EVER": "1"}, "what"),
    ('', {"BMD_NODE_PEERS__PACS__SEND_RESULTS": "maybe"}, "peers[pacs].send_results"),
    ('', {"BMD_NODE_NODE__DATABASE_URL": "mysql://u:secret@h/db"}, "node.database_url"),
])
def test_errors_name_the_key(tmp_path: Path, toml: str, env: dict[str, str], key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert str(info.value).startswith(key), str(info.value)
    assert "secret" not in str(info.value)


def test_duplicate_peer_names_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"peers\.name"):
        Config(peers=(PeerSettings("a", "A", "h", 1), PeerSettings("a", "B", "h", 2)))


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[node\n")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_config(path, env={})


def test_redacted_hides_database_password() -> None:
    config = load_config(env={"BMD_NODE_NODE__DATABASE_URL": "postgresql://bmd:s3cr3t@db:5432/bmd"})
    shown = config.redacted()
    assert shown["node"]["database_url"] == "postgresql://bmd:***@db:5432/bmd"
    assert "s3cr3t" not in repr(shown)
    assert config.node.database_url.endswith("s3cr3t@db:5432/bmd")


def test_config_is_frozen() -> None:
    config = load_config(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node.port = 1  # type: ignore[misc]


def test_deploy_example_lists_every_key_with_its_default() -> None:
    example = Path(__file__).resolve().parents[3] / "deploy" / "bmd-node.example.toml"
    raw = tomllib.loads(example.read_text())
    from_example = load_config(example, env={})
    assert dataclasses.replace(from_example, source="") == dataclasses.replace(load_config(env={}), source="")
    for section in ("node", "worker", "exporter", "series", "segmentation", "bmd", "site_models", "logging",
                    "dashboard", "storage", "quarantine"):
        expected = set(toml_keys(type(getattr(from_example, section))))
        assert set(raw[section]) == expected, section


def test_model_paths_resolve_against_the_project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (PROJECT_ROOT / "pyproject.toml").is_file()
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path(Path("models/vertebra_seg")) == PROJECT_ROOT / "models" / "vertebra_seg"
    (tmp_path / "models" / "vertebra_seg").mkdir(parents=True)
    assert resolve_model_path(Path("models/vertebra_seg")) == Path("models/vertebra_seg")  # the local one wins
    assert resolve_model_path(tmp_path / "x") == tmp_path / "x"
