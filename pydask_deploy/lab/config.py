"""What a lab is: where it keeps its files, which network it uses, the hosts it started.

Plain values shared by the lab's modules; nothing here touches the machine.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydask_deploy.errors import LabUsageError

Say = Callable[[str], None]  # where progress lines go
SUITE = "bookworm"  # the default release of a lab host
# The Debian releases a lab host can run (`lab up --release`); each has its own cached rootfs.
RELEASES = ("bookworm", "trixie")
# Releases whose systemd no longer boots on the hybrid cgroup hierarchy this machine has
# (systemd 256 dropped cgroup v1): nspawn gives them a pure cgroup v2 tree of their own.
UNIFIED_CGROUP_RELEASES = frozenset({"trixie"})
DEFAULT_SUBNET = ipaddress.IPv4Network("10.231.0.0/24")
MAX_HOSTS = 200
REGISTRY_PORT = 5000
SSH_OPTIONS = (
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
)


@dataclass(frozen=True)
class LabConfig:
    """Where the lab keeps its files and which network it uses.

    The defaults can be moved with environment variables so that two labs (a user's and a
    test run's) can live side by side: ``PYDASK_LAB_DIR``, ``PYDASK_LAB_CACHE``,
    ``PYDASK_LAB_BRIDGE`` and ``PYDASK_LAB_SUBNET``.
    """

    state_dir: Path = Path("/var/lib/pydask-deploy/lab")
    cache_dir: Path = Path("/var/cache/pydask-deploy/lab")
    bridge: str = "pdlab0"
    subnet: ipaddress.IPv4Network = DEFAULT_SUBNET

    @classmethod
    def from_env(cls) -> LabConfig:
        env = os.environ
        default = cls()
        try:
            subnet = ipaddress.IPv4Network(env.get("PYDASK_LAB_SUBNET", str(default.subnet)))
        except ValueError as exc:
            raise LabUsageError(f"PYDASK_LAB_SUBNET: {exc}") from None
        if subnet.prefixlen > 24:
            raise LabUsageError(f"PYDASK_LAB_SUBNET must be a /24 or larger, got {subnet}")
        return cls(
            state_dir=Path(env.get("PYDASK_LAB_DIR", default.state_dir)),
            cache_dir=Path(env.get("PYDASK_LAB_CACHE", default.cache_dir)),
            bridge=env.get("PYDASK_LAB_BRIDGE", default.bridge),
            subnet=subnet,
        )

    @property
    def gateway(self) -> str:
        """The controller's address on the bridge."""
        return str(self.subnet.network_address + 1)

    def address_of(self, index: int) -> str:
        return str(self.subnet.network_address + 10 + index)

    @property
    def key_path(self) -> Path:
        return self.cache_dir / "id_lab"

    @property
    def rootfs(self) -> Path:
        """The default release's root filesystem."""
        return self.rootfs_of(SUITE)

    def rootfs_of(self, release: str) -> Path:
        """The cached root filesystem of one Debian release."""
        return self.cache_dir / f"rootfs-{release}"

    @property
    def docker_layer(self) -> Path:
        return self.cache_dir / "layer-docker"

    @property
    def wheelhouse(self) -> Path:
        """Controller-side wheel directory that the venv runtime ships to the hosts."""
        return self.cache_dir / "wheelhouse"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "hosts"

    @property
    def record_path(self) -> Path:
        return self.state_dir / "lab.json"


@dataclass(frozen=True)
class LabHost:
    """One lab host as the lab started it."""

    name: str
    address: str
    index: int
    pid: int = 0
    state: str = "unknown"
    boot_seconds: float | None = None
    release: str = SUITE  # the Debian release it runs (records before releases: the default)


@dataclass(frozen=True)
class Lab:
    """A lab as recorded on disk: its hosts, and whether they can run Docker."""

    config: LabConfig
    hosts: tuple[LabHost, ...]
    docker: bool = False
    registry: str | None = None
    services: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Reboot:
    """One host's reboot: its state once back (``host.state``), and how long each part took.

    ``seconds`` runs from the reboot command to the host booted; ``down_seconds`` from the
    poweroff signal until its nspawn was gone; ``boot_seconds`` from its new start to booted.
    """

    host: LabHost
    down_seconds: float
    boot_seconds: float
    seconds: float

    @property
    def back(self) -> bool:
        return self.host.state in ("running", "degraded")


def host_releases(count: int, specs: Sequence[str]) -> tuple[str, ...]:
    """Each host's release from ``--release`` values: ``NAME`` for every host, ``HOST=NAME``
    (``h3`` or ``3``) for one; a ``LabUsageError`` names the value that makes no sense."""
    default: str | None = None
    chosen: dict[int, str] = {}
    for spec in specs:
        host, sep, release = spec.rpartition("=")
        if release not in RELEASES:
            raise LabUsageError(
                f"--release {spec}: unknown release {release!r}; "
                f"the lab knows {', '.join(RELEASES)}"
            )
        if not sep:
            if default is not None and default != release:
                raise LabUsageError(
                    f"--release {spec}: every host was already given --release {default}"
                )
            default = release
            continue
        number = host[1:] if host.startswith("h") else host
        index = int(number) if number.isdigit() else 0
        if not 1 <= index <= count:
            raise LabUsageError(
                f"--release {spec}: no host {host!r} in a lab of {count} (h1 to h{count})"
            )
        if chosen.get(index, release) != release:
            raise LabUsageError(f"--release {spec}: h{index} was already given {chosen[index]}")
        chosen[index] = release
    return tuple(chosen.get(i, default or SUITE) for i in range(1, count + 1))


def describe_releases(releases: Sequence[str]) -> str:
    """How a lab's releases read after "a lab of 3 hosts": "" when all run the default,
    " on trixie" when all run another, " (h3 on trixie)" when they are mixed."""
    if all(r == SUITE for r in releases):
        return ""
    if len(set(releases)) == 1:
        return f" on {releases[0]}"
    others = ", ".join(f"h{i} on {r}" for i, r in enumerate(releases, 1) if r != SUITE)
    return f" ({others})"


def release_flags(releases: Sequence[str]) -> str:
    """The ``--release`` options that make a lab of these releases (for its inventory's note)."""
    if all(r == SUITE for r in releases):
        return ""
    if len(set(releases)) == 1:
        return f" --release {releases[0]}"
    return "".join(f" --release h{i}={r}" for i, r in enumerate(releases, 1) if r != SUITE)
