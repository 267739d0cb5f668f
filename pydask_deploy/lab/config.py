"""What a lab is: where it keeps its files, which network it uses, the hosts it started.

Plain values shared by the lab's modules; nothing here touches the machine.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydask_deploy.errors import LabUsageError

Say = Callable[[str], None]  # where progress lines go
SUITE = "bookworm"
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
        return self.cache_dir / f"rootfs-{SUITE}"

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


@dataclass(frozen=True)
class Lab:
    """A lab as recorded on disk: its hosts, and whether they can run Docker."""

    config: LabConfig
    hosts: tuple[LabHost, ...]
    docker: bool = False
    registry: str | None = None
    services: dict[str, int] = field(default_factory=dict)
