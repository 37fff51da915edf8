"""One typed, frozen configuration object for the node.

Sources, later ones winning:
1. embedded defaults (``DEFAULTS_TOML`` below: a node that works with no file at all),
2. a TOML file: ``--config PATH`` or env ``BMD_NODE_CONFIG``,
3. env ``BMD_NODE_<SECTION>__<KEY>`` for every key, e.g. ``BMD_NODE_NODE__PORT=11113``;
   peers by index or name: ``BMD_NODE_PEERS__0__HOST=10.0.0.5`` / ``BMD_NODE_PEERS__PACS__PORT=104``
   (an index equal to the number of peers appends a new peer).

Unknown sections, unknown keys and bad values raise ``ConfigError`` whose message names the key
(``node.port: expected an integer, got 'abc'``). The object is loaded once and passed explicitly.

Each stage owns its section's dataclass (``service.series.settings``, ``service.segmentation.settings``,
``service.calibration.settings``, ``service.site_models.settings``, ``service.logging``); the sections of the
layers above the stages (node, peers, worker, exporter) live here. ``service.config_loader`` turns TOML and env
values into them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.calibration.settings import BmdSettings
from service.config_loader import ENV_CONFIG_FILE, ConfigError, apply_env, build_section, merge_file, to_plain
from service.logging import LoggingSettings
from service.receive.settings import NetworkLimits, QuarantineSettings, StorageSettings
from service.receive.spool import SPOOL_MODE_POOL, SPOOL_MODES
from service.receive.tls import TlsSettings
from service.results.settings import ResultsSettings
from service.segmentation.settings import SegmentationSettings
from service.series.settings import SeriesSettings
from service.site_models.settings import SiteModelsSettings

_AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash, no control chars


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
class NodeSettings(NetworkLimits):
    """[node]; the DICOM port's limits (max_pdu_bytes, timeouts, connection caps, check_called_ae) are the fields of
    service.receive.settings.NetworkLimits."""

    ae_title: str = "BMDNODE"
    host: str = "0.0.0.0"
    port: int = 11112
    http_host: str = "127.0.0.1"
    """Address of the web dashboard, /health and /metrics; loopback unless a site chooses otherwise."""
    http_port: int = 8080
    storage_dir: Path = Path("var/storage")
    database_url: str = "sqlite:///var/bmd-node.db"
    series_stable_seconds: float = 10.0
    receive_processes: int = 0
    """Processes that receive C-STORE on the one port (one listening socket, connections spread evenly over
    them); 0 = min(4, CPU count)."""
    spool_mode: str = SPOOL_MODE_POOL
    """How a received instance is made durable before its C-STORE response (service/receive/spool.py): "direct"
    (temporary file, fsync, rename, directory fsync) or "pool" (one fdatasync into an already-durable empty file,
    the rename and directory fsync batched after the response)."""
    max_queue_lag_seconds: float = 3600.0
    """/health says "degraded" when the oldest queued job or the oldest unsent export is older than this (1 h: a
    screening result later than that is no longer read with the CT it belongs to)."""
    tls: TlsSettings = field(default_factory=TlsSettings, metadata={"toml": False})
    """The ``[node.tls]`` table (DICOM TLS, service/receive/tls.py), built by ``build_config``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ae_title("node.ae_title", self.ae_title)
        if not 0 <= self.receive_processes <= 64:
            raise ConfigError(f"node.receive_processes: must be 0 (automatic) to 64, got {self.receive_processes}")
        if self.spool_mode not in SPOOL_MODES:
            raise ConfigError(f"node.spool_mode: must be one of {', '.join(SPOOL_MODES)}, got {self.spool_mode!r}")
        if not self.host:
            raise ConfigError("node.host: must not be empty")
        _check_port("node.port", self.port, allow_zero=True)  # 0 = any free port (tests, demo)
        if not self.http_host:
            raise ConfigError("node.http_host: must not be empty")
        _check_port("node.http_port", self.http_port, allow_zero=True)
        _check_positive("node.series_stable_seconds", self.series_stable_seconds, allow_zero=True)
        _check_positive("node.max_queue_lag_seconds", self.max_queue_lag_seconds)
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
    tls: bool = False
    """Results go to this peer over DICOM TLS (its certificate verified against [node.tls] ca_certificates)."""
    certificate_sha256: str = ""
    """SHA-256 (hex) of the TLS client certificate this peer presents; with [node.tls]
    require_client_certificate a certificate tied to no peer is refused."""
    max_associations: int = 0
    """Open associations of this peer at once (over all receiver processes); 0 = [node] max_associations_per_peer."""

    def __post_init__(self) -> None:
        if self.max_associations < 0:
            raise ConfigError(f"peers[{self.name}].max_associations: must be >= 0, got {self.max_associations}")
        if self.certificate_sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", self.certificate_sha256.replace(":", "")):
            raise ConfigError(f"peers[{self.name}].certificate_sha256: expected 64 hex digits")
        object.__setattr__(self, "certificate_sha256", self.certificate_sha256.replace(":", "").lower())
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
    memory_limit_mb: int = 4096
    """Peak memory one job may use; a series whose estimated need is larger is rejected with its reason."""

    def __post_init__(self) -> None:
        if self.memory_limit_mb < 256:
            raise ConfigError(f"worker.memory_limit_mb: must be >= 256, got {self.memory_limit_mb}")
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
class DashboardSettings:
    """The web dashboard on ``node.http_port`` (service/web)."""

    show_patient_names: bool = False
    """Patient names in list pages; result pages (behind login) may always show them."""
    session_secret_file: Path = Path("var/dashboard-session.key")
    """Key that signs the session cookies; created (mode 0600) at the first start when missing."""
    session_max_age_seconds: int = 28800
    """A login lasts this long (8 h: one shift)."""
    secure_cookie: bool = False
    """Mark the session cookie Secure (sent over HTTPS only): set it when users reach the dashboard through a TLS
    reverse proxy."""

    def __post_init__(self) -> None:
        if not str(self.session_secret_file):
            raise ConfigError("dashboard.session_secret_file: must not be empty")
        if self.session_max_age_seconds < 60:
            raise ConfigError(f"dashboard.session_max_age_seconds: must be >= 60, got {self.session_max_age_seconds}")


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
    results: ResultsSettings = field(default_factory=ResultsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    quarantine: QuarantineSettings = field(default_factory=QuarantineSettings)
    source: str = "embedded defaults"
    """Where the values came from (file path and/or env), for the start-up log."""

    def __post_init__(self) -> None:
        names = [p.name for p in self.peers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"peers.name: duplicate peer name(s) {dupes}")
        tls_peers = [p.name for p in self.peers if p.tls]
        if tls_peers and self.node.tls.ca_certificates is None:
            raise ConfigError(f"peers.tls: peer(s) {tls_peers} use TLS, which needs [node.tls] ca_certificates")

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
        """A plain dict of every configured key, database passwords replaced by ***, for the start-up log."""
        out = to_plain(self)
        out["node"]["database_url"] = redact_url(self.node.database_url)
        return out


# The embedded defaults as TOML: the same values as the dataclass defaults (a test checks it),
# and the template of deploy/bmd-node.example.toml.
DEFAULTS_TOML = """
[node]
ae_title = "BMDNODE"
host = "0.0.0.0"
port = 11112
http_host = "127.0.0.1"
http_port = 8080
storage_dir = "var/storage"
database_url = "sqlite:///var/bmd-node.db"
series_stable_seconds = 10
receive_processes = 0
spool_mode = "pool"
max_queue_lag_seconds = 3600.0
max_pdu_bytes = 1048576
max_request_pdu_bytes = 65536
association_request_timeout_seconds = 10.0
idle_timeout_seconds = 60.0
dimse_timeout_seconds = 60.0
max_connections_per_address = 8
max_connections = 32
max_associations_per_peer = 8
check_called_ae = true

[storage]
min_free_mb = 64

[quarantine]
max_bytes = 1073741824
max_age_days = 30.0
cleanup_interval_seconds = 3600.0

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
    "results": ResultsSettings,
    "logging": LoggingSettings,
    "dashboard": DashboardSettings,
    "storage": StorageSettings,
    "quarantine": QuarantineSettings,
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
        merge_file(raw, from_file)
        sources.append(str(p))
    env_keys = apply_env(raw, environ, _SECTIONS, PeerSettings)
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
                peers.append(build_section(PeerSettings, item, f"peers[{index}]"))
            kwargs["peers"] = tuple(peers)
        elif section in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{section}: expected a table ([{section}])")
            values = dict(value)
            tls = values.pop("tls", None) if section == "node" else None
            kwargs[section] = build_section(_SECTIONS[section], values, section)
            if tls is not None:
                if not isinstance(tls, Mapping):
                    raise ConfigError("node.tls: expected a table ([node.tls])")
                kwargs[section] = dataclasses.replace(kwargs[section], tls=build_section(TlsSettings, tls, "node.tls"))
        else:
            raise ConfigError(f"{section}: unknown section; known: {sorted([*_SECTIONS, 'peers'])}")
    return Config(**kwargs, source=source)
