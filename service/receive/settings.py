"""The receive stage's settings: network limits of the DICOM port ([node] keys), the disk reserve ([storage]) and the
quarantine of rejected objects ([quarantine]). service.config composes them into the one Config."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class NetworkLimits:
    """What one association may cost the node; enforced in every receiver process (service/receive/limits.py)."""

    max_pdu_bytes: int = MIB
    """Largest P-DATA-TF PDU accepted (and the Maximum Length announced to peers); a bigger length field in a PDU
    header aborts the association before a byte of its body is read."""
    max_request_pdu_bytes: int = 64 * 1024
    """Largest A-ASSOCIATE-RQ (and every other non-data PDU) accepted."""
    association_request_timeout_seconds: float = 10.0
    """From accept() until the whole A-ASSOCIATE-RQ has been read; also pynetdicom's ARTIM (acse_timeout)."""
    idle_timeout_seconds: float = 60.0
    """An established association with no PDU for this long is aborted (pynetdicom network_timeout); also the
    longest a PDU that has started may stall between two reads."""
    dimse_timeout_seconds: float = 60.0
    max_connections_per_address: int = 8
    """Open connections from one IP address, counted over all receiver processes (service/receive/shared_limits.py)."""
    max_connections: int = 32
    """Open connections in all, over all receiver processes."""
    max_associations_per_peer: int = 8
    """Open associations of one [[peers]] entry (its calling AE title at its address), over all receiver processes;
    a peer's own ``max_associations`` overrides it. More are refused with A-ASSOCIATE-RJ (rejected-transient,
    local-limit-exceeded)."""
    check_called_ae: bool = True

    def __post_init__(self) -> None:
        if self.max_pdu_bytes < 4096:
            raise ValueError(f"node.max_pdu_bytes: must be >= 4096, got {self.max_pdu_bytes}")
        if not 1024 <= self.max_request_pdu_bytes <= MIB:
            raise ValueError(f"node.max_request_pdu_bytes: must be 1024..{MIB}, got {self.max_request_pdu_bytes}")
        for name in ("association_request_timeout_seconds", "idle_timeout_seconds", "dimse_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"node.{name}: must be > 0, got {getattr(self, name)}")
        if self.max_connections < 1:
            raise ValueError(f"node.max_connections: must be >= 1, got {self.max_connections}")
        if not 1 <= self.max_connections_per_address <= self.max_connections:
            raise ValueError(f"node.max_connections_per_address: must be 1..node.max_connections "
                             f"({self.max_connections}), got {self.max_connections_per_address}")
        if not 1 <= self.max_associations_per_peer <= self.max_connections:
            raise ValueError(f"node.max_associations_per_peer: must be 1..node.max_connections "
                             f"({self.max_connections}), got {self.max_associations_per_peer}")


@dataclass(frozen=True)
class StorageSettings:
    min_free_mb: int = 64
    """Free space kept on the spool's file system: below it C-STORE answers 0xA700 and /health says degraded."""

    def __post_init__(self) -> None:
        if self.min_free_mb < 0:
            raise ValueError(f"storage.min_free_mb: must be >= 0, got {self.min_free_mb}")

    @property
    def min_free_bytes(self) -> int:
        return self.min_free_mb * MIB


@dataclass(frozen=True)
class QuarantineSettings:
    """Objects that could not be decoded are kept in storage_dir/_rejected for a person to look at, within caps."""

    max_bytes: int = 1024 * MIB
    """The quarantine's total size; the oldest files go first when it is exceeded."""
    max_age_days: float = 30.0
    cleanup_interval_seconds: float = 3600.0
    """Besides at start-up, the caps are enforced this often."""

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError(f"quarantine.max_bytes: must be >= 0, got {self.max_bytes}")
        if self.max_age_days <= 0:
            raise ValueError(f"quarantine.max_age_days: must be > 0, got {self.max_age_days}")
        if self.cleanup_interval_seconds <= 0:
            raise ValueError(f"quarantine.cleanup_interval_seconds: must be > 0, got {self.cleanup_interval_seconds}")
