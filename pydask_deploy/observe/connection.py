"""How a client on this machine reaches an inventory's scheduler: address and TLS files.

One answer for every command that talks to the scheduler (``verify``, ``status``,
``upgrade``, ``client-config``) and for the users (``pydask-deploy client-config``). The
``Security`` a client is built with comes from these files, in ``observe/scheduler.py``.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydask_deploy.deploy import pki
from pydask_deploy.errors import PkiError, SchedulerUnreachable, UsageError
from pydask_deploy.inventory import Inventory
from pydask_deploy.observe import remote


@dataclass(frozen=True)
class ClientConfig:
    """What a client needs: the scheduler's address and, with TLS, the three files.

    The field names are those ``distributed.security.Security`` takes; the files are None
    when the inventory sets ``dask_tls: false``.
    """

    address: str
    tls_ca_file: Path | None = None
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None
    dashboard: str = ""

    @property
    def tls(self) -> bool:
        return self.tls_ca_file is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "tls_ca_file": _str(self.tls_ca_file),
            "tls_client_cert": _str(self.tls_client_cert),
            "tls_client_key": _str(self.tls_client_key),
            "require_encryption": self.tls,
            "dashboard": self.dashboard,
        }


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def tls_enabled(inventory: Inventory) -> bool:
    """Whether the cluster runs with mutual TLS (``dask_tls``, the same on every host)."""
    values = {h.name: inventory.dask_vars(h).get("dask_tls", True) for h in inventory.hosts}
    first = values[inventory.scheduler.name]
    differ = sorted(name for name, value in values.items() if value != first)
    if differ:
        raise UsageError(
            f"{inventory.path}: `dask_tls` must be the same on every host; it is "
            f"{first!r} on {inventory.scheduler.name} but not on {', '.join(differ)}"
        )
    if not isinstance(first, bool):
        raise UsageError(f"{inventory.path}: `dask_tls` must be true or false, got {first!r}")
    return first


def _scheduler_host(inventory: Inventory) -> str:
    """The address clients and workers use: ``dask_scheduler_address``, else ansible_host."""
    configured = inventory.dask_vars(inventory.scheduler).get("dask_scheduler_address")
    if isinstance(configured, str) and configured and "{" not in configured:
        return configured
    return inventory.scheduler.address


def cluster_address(inventory: Inventory) -> str:
    """The scheduler's address for a client on this machine: ``tls://`` or ``tcp://``."""
    port = inventory.dask_vars(inventory.scheduler).get("dask_scheduler_port", 8786)
    scheme = "tls" if tls_enabled(inventory) else "tcp"
    return f"{scheme}://{_scheduler_host(inventory)}:{port}"


@contextlib.contextmanager
def scheduler_route(inventory: Inventory) -> Iterator[str]:
    """The address this machine dials to reach the scheduler, open for the ``with`` block.

    Hosts reached through a jump host (login node, bastion) usually keep their Dask ports
    closed to the outside, so then the scheduler port is forwarded over SSH to the scheduler
    host and the address is a loopback one; otherwise it is ``cluster_address``. Raises
    ``SchedulerUnreachable`` when the forward cannot be opened.
    """
    address = cluster_address(inventory)
    target = remote.ssh_target(inventory.scheduler)
    if target.jump is None:
        yield address
        return
    scheme, _, rest = address.partition("://")
    host, _, port = rest.rpartition(":")
    forward = remote.PortForward(target, host.strip("[]"), int(port))
    try:
        local = forward.__enter__()
    except (OSError, TimeoutError, remote.SSHError) as exc:
        raise SchedulerUnreachable(
            f"cannot forward {address} through {target.jump.address}: "
            f"{remote.describe_error(exc, target.connect_timeout)}"
        ) from None
    try:
        yield f"{scheme}://127.0.0.1:{local}"
    finally:
        forward.__exit__()


def jump_host(inventory: Inventory) -> str | None:
    """The jump host in front of the scheduler host (``user@host:port``), or None."""
    jump = remote.ssh_target(inventory.scheduler).jump
    if jump is None:
        return None
    user = f"{jump.user}@" if jump.user else ""
    return f"{user}{jump.address}" + (f":{jump.port}" if jump.port != 22 else "")


def ssh_forward_command(inventory: Inventory, local_port: int, url: str) -> str:
    """The ``ssh -N -L`` command a user runs to reach ``url`` (on the scheduler host's side)
    from ``localhost:local_port``, through the jump host when there is one."""
    target = remote.ssh_target(inventory.scheduler)
    where = url.split("://", 1)[-1].rstrip("/")
    words = ["ssh", "-N"]
    hops: list[str] = []
    jump = target.jump
    while jump is not None:
        user = f"{jump.user}@" if jump.user else ""
        hops.insert(0, f"{user}{jump.address}" + (f":{jump.port}" if jump.port != 22 else ""))
        jump = jump.jump
    if hops:
        words += ["-J", ",".join(hops)]
    if target.key_file:
        words += ["-i", target.key_file]
    if target.port != 22:
        words += ["-p", str(target.port)]
    words += ["-L", f"{local_port}:{where}"]
    words.append(f"{target.user}@{target.address}" if target.user else target.address)
    return shlex.join(words)


def dashboard_url(inventory: Inventory) -> str:
    """The dashboard's URL: on ``dask_dashboard_address``, else the scheduler's own address."""
    variables = inventory.dask_vars(inventory.scheduler)
    host = variables.get("dask_dashboard_address")
    if not (isinstance(host, str) and host and "{" not in host):
        listen = variables.get("dask_scheduler_host")
        ok = isinstance(listen, str) and listen and "{" not in listen
        host = listen if ok else _scheduler_host(inventory)
    port = variables.get("dask_dashboard_port", 8787)
    shown = f"[{host}]" if ":" in str(host) else host
    return f"http://{shown}:{port}"


def client_config(inventory: Inventory) -> ClientConfig:
    """The address and the client's TLS files; raises ``PkiError`` if apply has not made them."""
    address = cluster_address(inventory)
    dashboard = dashboard_url(inventory)
    if not address.startswith("tls://"):
        return ClientConfig(address, dashboard=dashboard)
    directory = pki.pki_dir(inventory)
    files = (directory / "ca.crt", directory / "client.crt", directory / "client.key")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise PkiError(
            f"no client certificate for {inventory.path} yet ({', '.join(missing)} missing); "
            f"`pydask-deploy apply {inventory.path}` makes them"
        )
    return ClientConfig(address, *files, dashboard=dashboard)
