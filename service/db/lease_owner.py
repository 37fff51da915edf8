"""Who holds a lease: the identity recorded with every job and export lease, and whether that holder is gone.

A lease owner is ``ROLE@HOST/BOOT/PID/START``: the host name, the first 8 characters of the kernel's boot id, the
process id and the process start time (clock ticks since boot, /proc/PID/stat field 22).  The PID alone is not
enough: in a container the node is always PID 1, and PIDs are reused.  A restarted node (or a worker restarted by
``serve``) reclaims at once the leases of holders on this host that are gone, instead of waiting for them to expire:
  * same host, another boot id: the machine rebooted, the holder is gone;
  * same host and boot: gone when no process PID runs, or it started at another time (a new process, PID reused);
  * another host (several nodes on one PostgreSQL database): unknown here, so the lease runs out as before.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cache
from pathlib import Path

MAX_OWNER_CHARS = 128
"""The lease_owner columns are String(128)."""
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class LeaseOwner:
    role: str
    host: str
    boot: str
    pid: int
    start_ticks: int

    def __post_init__(self) -> None:
        for name in ("role", "host", "boot"):
            if "/" in getattr(self, name) or "@" in getattr(self, name):
                raise ValueError(f"{name} must not contain '/' or '@', got {getattr(self, name)!r}")
        if self.pid < 0 or self.start_ticks < 0:
            raise ValueError(f"pid and start_ticks must be >= 0, got {self.pid}, {self.start_ticks}")

    def __str__(self) -> str:
        return f"{self.role}@{self.host}/{self.boot}/{self.pid}/{self.start_ticks}"[:MAX_OWNER_CHARS]


def _boot_id() -> str:
    try:
        return BOOT_ID_FILE.read_text().strip().replace("-", "")[:8] or "unknown"
    except OSError:
        return "unknown"


def process_start_ticks(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot; None when no such process (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 2 (comm) may contain spaces and parentheses: the fields after it start after the last ')'
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])  # field 22 overall


@cache
def _host() -> str:
    return socket.gethostname().replace("/", "_").replace("@", "_")[:40] or "localhost"


def current_owner(role: str) -> LeaseOwner:
    """The identity of this process (and ``role``, e.g. ``worker-0`` or ``exporter``) as a lease holder."""
    pid = os.getpid()
    return LeaseOwner(role=role.replace("/", "_").replace("@", "_")[:40], host=_host(), boot=_boot_id(), pid=pid,
                      start_ticks=process_start_ticks(pid) or 0)


def parse_owner(text: str) -> LeaseOwner | None:
    """The identity in a lease_owner value; None for values of another form (older node versions)."""
    role, _, rest = text.partition("@")
    parts = rest.split("/")
    if not role or len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    try:
        return LeaseOwner(role=role, host=parts[0], boot=parts[1], pid=int(parts[2]), start_ticks=int(parts[3]))
    except ValueError:
        return None


def holder_is_gone(owner_text: str | None) -> bool:
    """True only when the holder is known to be gone (see the module doc); False when alive or unknown."""
    if not owner_text:
        return False
    owner = parse_owner(owner_text)
    if owner is None or owner.host != _host():
        return False
    if owner.boot != _boot_id():
        return owner.boot != "unknown"
    if owner.start_ticks == 0:  # no /proc when it was recorded: cannot tell a reused PID
        return process_start_ticks(owner.pid) is None and Path("/proc").is_dir()
    return process_start_ticks(owner.pid) != owner.start_ticks
