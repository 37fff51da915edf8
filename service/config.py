"""One typed, frozen configuration object for the node.

Sources, later ones winning:
1. embedded defaults (``DEFAULTS_TOML`` below: a node that works with no file at all),
2. a TOML file: ``--config PATH`` or env ``BMD_NODE_CONFIG``,
3. env ``BMD_NODE_<SECTION>__<KEY>`` for every key, e.g. ``BMD_NODE_NODE__PORT=11113``;
   peers by index or name: ``BMD_NODE_PEERS__0__HOST=10.0.0.5`` / ``BMD_NODE_PEERS__PACS__PORT=104``
   (an index equal to the number of peers appends a new peer).

Unknown sections, unknown keys and bad values raise ``ConfigError`` whose message names the key
(``node.port: expected an integer, got 'abc'``). The object is loaded once and passed explicitly.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from service.domain.levels import VertebraLevel
from service.domain.results import RoiMethod

ENV_PREFIX = "BMD_NODE_"
ENV_CONFIG_FILE = "BMD_NODE_CONFIG"

_AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash, no control chars


PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The checkout / install root that holds models/ (bundles and calibration files shipped with the code)."""


def resolve_model_path(path: Path) -> Path:
    """A model path from the configuration: absolute as given; relative to the working directory when it exists
    there, else relative to the project root (so that ``models/...`` works whatever the working directory,
    e.g. under systemd with WorkingDirectory=/var/lib/bmd-node)."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    return PROJECT_ROOT / path


class ConfigError(ValueError):
    """A configuration problem; the message starts with the dotted key that is wrong."""


def _check_ae_title(key: str, value: str) -> None:
    if not value.strip() or not _AE_TITLE_RE.match(value):
        raise ConfigError(f"{key}: AE title must be 1-16 printable characters without backslash, got {value!r}")


def _check_port(key: str, value: int, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not (low <= value <= 65535):
        raise ConfigError(f"{key}: port must be in {low}..65535, got {value}")


def _check_positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass(frozen=True)
class NodeSettings:
    ae_title: str = "BMDNODE"
    host: str = "0.0.0.0"
    port: int = 11112
    http_port: int = 8080
    storage_dir: Path = Path("var/storage")
    database_url: str = "sqlite:///var/bmd-node.db"
    series_stable_seconds: float = 10.0

    def __post_init__(self) -> None:
        _check_ae_title("node.ae_title", self.ae_title)
        if not self.host:
            raise ConfigError("node.host: must not be empty")
        _check_port("node.port", self.port, allow_zero=True)  # 0 = any free port (tests, demo)
        _check_port("node.http_port", self.http_port, allow_zero=True)
        _check_positive("node.series_stable_seconds", self.series_stable_seconds, allow_zero=True)
        if not (self.database_url.startswith("sqlite") or self.database_url.startswith("postgresql")):
            raise ConfigError(f"node.database_url: only sqlite:/// and postgresql:// URLs are supported, "
                              f"got {redact_url(self.database_url)!r}")


@dataclass(frozen=True)
class PeerSettings:
    """A remote AE: allowed to send to us, and a result destination when ``send_results``."""

    name: str
    ae_title: str
    host: str
    port: int
    send_results: bool = True

    def __post_init__(self) -> None:
        if not re.match(r"^[A-Za-z0-9_.-]+$", self.name):
            raise ConfigError(f"peers.name: must be letters, digits, '_', '.', '-', got {self.name!r}")
        _check_ae_title(f"peers[{self.name}].ae_title", self.ae_title)
        if not self.host:
            raise ConfigError(f"peers[{self.name}].host: must not be empty")
        _check_port(f"peers[{self.name}].port", self.port)


@dataclass(frozen=True)
class WorkerSettings:
    processes: int = 1
    lease_seconds: float = 300.0
    """A running job whose lease is not renewed for this long is re-queued by the reaper."""
    heartbeat_seconds: float = 30.0
    max_attempts: int = 3
    """Runs of one job before it is dead (a crash or an error each count as one)."""
    backoff_initial_seconds: float = 30.0
    backoff_multiplier: float = 2.0
    backoff_max_seconds: float = 900.0
    poll_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.processes < 0:
            raise ConfigError(f"worker.processes: must be >= 0, got {self.processes}")
        _check_positive("worker.lease_seconds", self.lease_seconds)
        _check_positive("worker.heartbeat_seconds", self.heartbeat_seconds)
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ConfigError(f"worker.heartbeat_seconds: must be shorter than worker.lease_seconds "
                              f"({self.lease_seconds}), got {self.heartbeat_seconds}")
        if self.max_attempts < 1:
            raise ConfigError(f"worker.max_attempts: must be >= 1, got {self.max_attempts}")
        _check_positive("worker.backoff_initial_seconds", self.backoff_initial_seconds, allow_zero=True)
        if self.backoff_multiplier < 1:
            raise ConfigError(f"worker.backoff_multiplier: must be >= 1, got {self.backoff_multiplier}")
        _check_positive("worker.backoff_max_seconds", self.backoff_max_seconds, allow_zero=True)
        _check_positive("worker.poll_seconds", self.poll_seconds)


@dataclass(frozen=True)
class ExporterSettings:
    poll_seconds: float = 2.0
    batch_size: int = 20
    lease_seconds: float = 300.0
    """A claimed export not marked within this time is claimed again (exporter crash)."""
    backoff_initial_seconds: float = 10.0
    backoff_multiplier: float = 2.0
    backoff_max_seconds: float = 300.0
    max_attempts: int = 500
    """Attempts before the dead letter; with the 300 s cap this covers > 24 h of PACS downtime."""
    max_age_seconds: float = 172800.0
    """An export still not sent this long after it was created goes to the dead letter (48 h)."""
    connect_timeout_seconds: float = 10.0
    acse_timeout_seconds: float = 30.0
    dimse_timeout_seconds: float = 120.0
    network_timeout_seconds: float = 120.0

    def __post_init__(self) -> None:
        _check_positive("exporter.poll_seconds", self.poll_seconds)
        if self.batch_size < 1:
            raise ConfigError(f"exporter.batch_size: must be >= 1, got {self.batch_size}")
        _check_positive("exporter.lease_seconds", self.lease_seconds)
        _check_positive("exporter.backoff_initial_seconds", self.backoff_initial_seconds, allow_zero=True)
        if self.backoff_multiplier < 1:
            raise ConfigError(f"exporter.backoff_multiplier: must be >= 1, got {self.backoff_multiplier}")
        _check_positive("exporter.backoff_max_seconds", self.backoff_max_seconds, allow_zero=True)
        if self.max_attempts < 1:
            raise ConfigError(f"exporter.max_attempts: must be >= 1, got {self.max_attempts}")
        _check_positive("exporter.max_age_seconds", self.max_age_seconds)
        for name in ("connect_timeout_seconds", "acse_timeout_seconds", "dimse_timeout_seconds",
                     "network_timeout_seconds"):
            _check_positive(f"exporter.{name}", getattr(self, name))


@dataclass(frozen=True)
class SeriesSettings:
    min_slices: int = 10
    """Fewer slices cannot hold a vertebral body at 5 mm (same default as service.series.checks)."""
    max_slice_thickness_mm: float = 5.0
    """Thicker series are rejected (Xiong 2025 / Pan 2020 used <= 5 mm reconstructions)."""
    scheduler_poll_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.min_slices < 1:
            raise ConfigError(f"series.min_slices: must be >= 1, got {self.min_slices}")
        _check_positive("series.max_slice_thickness_mm", self.max_slice_thickness_mm)
        _check_positive("series.scheduler_poll_seconds", self.scheduler_poll_seconds)


SEGMENTATION_BACKENDS = ("bmd-node", "totalsegmentator")
SEGMENTATION_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class SegmentationSettings:
    backend: str = "bmd-node"
    bundle_dir: Path = Path("models/vertebra_seg")
    fine_bundle_dir: Path = Path("models/vertebra_body_fine")
    """Stage 2: vertebral bodies and discs at 1.25 mm in a tube around the spine."""
    fine_stage: bool = True
    """False: bodies from the coarse 3 mm model only (the fine bundle is not loaded)."""
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.backend not in SEGMENTATION_BACKENDS:
            raise ConfigError(f"segmentation.backend: must be one of {SEGMENTATION_BACKENDS}, got {self.backend!r}")
        if self.device not in SEGMENTATION_DEVICES:
            raise ConfigError(f"segmentation.device: must be one of {SEGMENTATION_DEVICES}, got {self.device!r}")


@dataclass(frozen=True)
class BmdSettings:
    roi_method: RoiMethod = RoiMethod.EROSION_3MM
    erosion_mm: float = 3.0
    """Xiong 2025 / Peng 2023 / Wang 2024: the vertebral body eroded by 3 mm in x, y and z."""
    summary_levels: tuple[VertebraLevel, ...] = (VertebraLevel.L1, VertebraLevel.L2)
    threshold_set: str = "ACR2018-ISCD-v1"
    """Name + version of the category thresholds, recorded in every result."""
    osteoporosis_below_mg_cm3: float = 80.0  # ACR 2018 / ISCD; Chinese 2018 QCT guideline
    normal_above_mg_cm3: float = 120.0  # ACR 2018 / ISCD; Chinese 2018 QCT guideline
    calibration_store_dir: Path = Path("var/calibration")
    detect_synchronous_phantom: bool = True
    correct_contrast: bool = True
    """True: subtract the documented contrast rise of trabecular HU; false: only flag the result."""
    fracture_height_loss: float = 0.20
    """Genant: height loss >= 20 % against neighbours excludes a level."""
    use_site_curve: bool = False
    curve_site_k_hu_per_level: float = 0.0
    """Site-trained thoracolumbar slope k (HU per level, T5 = 1 ... L2 = 10); used when use_site_curve is true."""

    def __post_init__(self) -> None:
        if not self.summary_levels:
            raise ConfigError("bmd.summary_levels: must name at least one level")
        if not self.threshold_set:
            raise ConfigError("bmd.threshold_set: must not be empty")
        if self.erosion_mm < 0:
            raise ConfigError(f"bmd.erosion_mm: must be >= 0, got {self.erosion_mm}")
        if not self.osteoporosis_below_mg_cm3 < self.normal_above_mg_cm3:
            raise ConfigError(f"bmd.osteoporosis_below_mg_cm3: must be below bmd.normal_above_mg_cm3 "
                              f"({self.normal_above_mg_cm3}), got {self.osteoporosis_below_mg_cm3}")
        if not 0 < self.fracture_height_loss < 1:
            raise ConfigError(f"bmd.fracture_height_loss: must be in (0, 1), got {self.fracture_height_loss}")


@dataclass(frozen=True)
class SiteModelsSettings:
    registry_dir: Path = Path("var/site_models")
    enabled: bool = True
    """When false the active site model is ignored even if one is activated in the registry."""


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "INFO"
    json: bool = False

    def __post_init__(self) -> None:
        if self.level.upper() not in LOG_LEVELS:
            raise ConfigError(f"logging.level: must be one of {LOG_LEVELS}, got {self.level!r}")


@dataclass(frozen=True)
class Config:
    node: NodeSettings = field(default_factory=NodeSettings)
    peers: tuple[PeerSettings, ...] = ()
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    exporter: ExporterSettings = field(default_factory=ExporterSettings)
    series: SeriesSettings = field(default_factory=SeriesSettings)
    segmentation: SegmentationSettings = field(default_factory=SegmentationSettings)
    bmd: BmdSettings = field(default_factory=BmdSettings)
    site_models: SiteModelsSettings = field(default_factory=SiteModelsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    source: str = "embedded defaults"
    """Where the values came from (file path and/or env), for the start-up log."""

    def __post_init__(self) -> None:
        names = [p.name for p in self.peers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"peers.name: duplicate peer name(s) {dupes}")

    def peer(self, name: str) -> PeerSettings:
        for p in self.peers:
            if p.name == name:
                return p
        raise KeyError(f"no peer named {name!r}; configured: {[p.name for p in self.peers]}")

    @property
    def result_destinations(self) -> tuple[PeerSettings, ...]:
        return tuple(p for p in self.peers if p.send_results)

    def with_node(self, **changes: Any) -> Config:
        """A copy with some [node] values changed (tests, demo)."""
        return dataclasses.replace(self, node=dataclasses.replace(self.node, **changes))

    def redacted(self) -> dict[str, Any]:
        """A plain dict of every value, database passwords replaced by ***, for the start-up log."""
        out = _to_plain(self)
        out["node"]["database_url"] = redact_url(self.node.database_url)
        return out


# The embedded defaults as TOML: the same values as the dataclass defaults (a test checks it),
# and the template of deploy/bmd-node.example.toml.
DEFAULTS_TOML = """
[node]
ae_title = "BMDNODE"
host = "0.0.0.0"
port = 11112
http_port = 8080
storage_dir = "var/storage"
database_url = "sqlite:///var/bmd-node.db"
series_stable_seconds = 10

[[peers]]
name = "pacs"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = 4242
send_results = true
"""

_SECTIONS: dict[str, type] = {
    "node": NodeSettings,
    "worker": WorkerSettings,
    "exporter": ExporterSettings,
    "series": SeriesSettings,
    "segmentation": SegmentationSettings,
    "bmd": BmdSettings,
    "site_models": SiteModelsSettings,
    "logging": LoggingSettings,
}


def redact_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the TOML file (``path`` or env BMD_NODE_CONFIG), then BMD_NODE_* env overrides."""
    environ = dict(os.environ if env is None else env)
    raw = tomllib.loads(DEFAULTS_TOML)
    sources = ["embedded defaults"]
    file_path = path if path is not None else environ.get(ENV_CONFIG_FILE) or None
    if file_path is not None:
        p = Path(file_path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"config file {p}: cannot read ({exc.strerror})") from None
        try:
            from_file = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p}: invalid TOML ({exc})") from None
        _merge_file(raw, from_file)
        sources.append(str(p))
    env_keys = _apply_env(raw, environ)
    if env_keys:
        sources.append("env " + ",".join(sorted(env_keys)))
    return build_config(raw, source="; ".join(sources))


def build_config(raw: Mapping[str, Any], *, source: str = "dict") -> Config:
    """Validate a plain mapping (parsed TOML) into a Config; unknown keys and bad values raise ConfigError."""
    kwargs: dict[str, Any] = {}
    for section, value in raw.items():
        if section == "peers":
            if not isinstance(value, list):
                raise ConfigError("peers: expected an array of tables ([[peers]])")
            peers = []
            for index, item in enumerate(value):
                if not isinstance(item, Mapping):
                    raise ConfigError(f"peers[{index}]: expected a table")
                peers.append(_build_section(PeerSettings, item, f"peers[{index}]"))
            kwargs["peers"] = tuple(peers)
        elif section in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{section}: expected a table ([{section}])")
            kwargs[section] = _build_section(_SECTIONS[section], value, section)
        else:
            raise ConfigError(f"{section}: unknown section; known: {sorted([*_SECTIONS, 'peers'])}")
    return Config(**kwargs, source=source)


def _merge_file(raw: dict[str, Any], from_file: Mapping[str, Any]) -> None:
    for section, value in from_file.items():
        if section == "peers":
            raw["peers"] = value  # a file that lists peers replaces the default peer list
        elif isinstance(value, Mapping) and isinstance(raw.get(section), dict):
            raw[section].update(value)
        else:
            raw[section] = value


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    used = []
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_FILE:
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if parts[0] == "peers":
            if len(parts) != 3:
                raise ConfigError(f"{name}: expected BMD_NODE_PEERS__<index or name>__<KEY>")
            peers = raw.setdefault("peers", [])
            selector, key = parts[1], parts[2]
            target = _select_peer(peers, selector, name)
            target[key] = _parse_env_value(PeerSettings, key, text, f"peers[{selector}].{key}")
        else:
            if len(parts) != 2 or not parts[0] or not parts[1]:
                raise ConfigError(f"{name}: expected BMD_NODE_<SECTION>__<KEY>")
            section, key = parts
            if section not in _SECTIONS:
                raise ConfigError(f"{section}: unknown section (from env {name}); known: "
                                  f"{sorted([*_SECTIONS, 'peers'])}")
            raw.setdefault(section, {})[key] = _parse_env_value(_SECTIONS[section], key, text, f"{section}.{key}")
        used.append(name)
    return used


def _select_peer(peers: list[dict[str, Any]], selector: str, env_name: str) -> dict[str, Any]:
    if selector.isdigit():
        index = int(selector)
        if index < len(peers):
            return peers[index]
        if index == len(peers):
            peers.append({})
            return peers[index]
        raise ConfigError(f"{env_name}: peer index {index} out of range (there are {len(peers)} peers)")
    for peer in peers:
        if str(peer.get("name", "")).lower() == selector:
            return peer
    raise ConfigError(f"{env_name}: no peer named {selector!r}")


def _parse_env_value(cls: type, key: str, text: str, dotted: str) -> Any:
    hints = get_type_hints(cls)
    if key not in hints:
        raise ConfigError(f"{dotted}: unknown key; known: {sorted(hints)}")
    hint = hints[key]
    if hint is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{dotted}: expected true or false, got {text!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{dotted}: expected an integer, got {text!r}") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{dotted}: expected a number, got {text!r}") from None
    if get_origin(hint) is tuple:
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def _build_section(cls: type, values: Mapping[str, Any], section: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown key; known: {sorted(known)}")
        kwargs[key] = _coerce(hints[key], value, f"{section}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as exc:  # a required key is missing
        missing = [f.name for f in fields(cls)
                   if f.name not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{section}.{missing[0]}: required key is missing") from None
        raise ConfigError(f"{section}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{section}: {exc}") from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path string, got {value!r}")
        return Path(value)
    if hint is RoiMethod:
        try:
            return RoiMethod(value)
        except ValueError:
            raise ConfigError(f"{key}: expected one of {[m.value for m in RoiMethod]}, got {value!r}") from None
    if get_origin(hint) is tuple:
        (item_hint, _ellipsis) = get_args(hint)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if item_hint is VertebraLevel:
            try:
                return tuple(VertebraLevel.from_name(str(v)) for v in value)
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
        return tuple(_coerce(item_hint, v, key) for v in value)
    raise ConfigError(f"{key}: unsupported setting type {hint!r}")  # a programming error, named anyway


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple | list):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, VertebraLevel):
        return obj.name
    if isinstance(obj, RoiMethod):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    return obj
