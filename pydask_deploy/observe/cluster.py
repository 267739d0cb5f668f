"""The read side: one round that learns each host's addresses and the workers it registered.

``read_cluster`` runs one SSH round to every host (each host may add a script of its own,
such as status's probe) at the same time as it asks the scheduler who is registered, then
gives each registered worker to the host it came from. A worker registers with the address
it reaches the scheduler from, which is not always the inventory's address (a host name, a
NAT, a second interface), so a host's addresses are its inventory address, what that
resolves to here and what the host itself reports (``hostname -I``). ``status``, ``verify``
and ``upgrade`` read the cluster through here and nowhere else.

Where the scheduler's view comes from is decided in ``_scheduler_view`` alone: for
``status``, from the scheduler host itself in the same round (its dashboard's HTTP server
answers ``/json/identity.json`` and ``/health`` on the host, and each host says which
package versions the runtime of its units has), so that no TLS client is opened and
``distributed`` is never imported; a client is the fallback when that read fails. ``verify``
asks through a client on purpose: it proves a client with the certificate gets in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import platform
import shlex
import socket
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal

from pydask_deploy.contract import SCHEDULER_UNIT, worker_units
from pydask_deploy.errors import SchedulerUnreachable
from pydask_deploy.inventory import Host, Inventory
from pydask_deploy.observe import connection, remote
from pydask_deploy.observe.scheduler import (
    SchedulerLink,
    SchedulerView,
    WorkerView,
    quiet_versions,
    workers_from_identity,
)

# Where the scheduler's view comes from (``read``): its host's dashboard in the same round
# (a client only when that fails), a client, or nowhere (the hosts alone).
Source = Literal["dashboard", "client", "none"]

# The packages whose versions must match between client, scheduler and workers
# (distributed's own list of required packages).
VERSION_PACKAGES = ("dask", "distributed", "msgpack", "cloudpickle", "toolz", "tornado")

CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
END = "@@end"

# POSIX sh: the host's own addresses, one section of the round's output.
ADDRESSES_SCRIPT = r"""
echo "@@addresses"
hostname -I 2>/dev/null || ip -o addr show 2>/dev/null | awk '{print $4}' | cut -d/ -f1
"""


# POSIX sh, per dask unit of the host: the versions of the packages in the runtime the unit
# starts (the dist-info directories of a venv or conda env; inside the container for docker).
_PACKAGES_SCRIPT = r"""
exe=$(systemctl show {unit} -p ExecStart 2>/dev/null |
  sed -n 's/^ExecStart={{ path=\([^ ;]*\).*/\1/p' | head -n 1)
echo "@@packages {unit}"
case "$exe" in
  */docker) docker exec {unit} python -c {in_container} 2>/dev/null;;
  */bin/*) for p in {packages}; do
      for d in "${{exe%/bin/*}}"/lib/python*/site-packages/"$p"-*.dist-info; do
        [ -d "$d" ] && echo "$d"
      done
    done;;
esac
"""
_IN_CONTAINER = (
    "import sys, importlib.metadata as m; "
    "print('python', '%d.%d.%d' % sys.version_info[:3]); "
    "[print(p, m.version(p)) for p in {packages!r}]"
)

# POSIX sh, on the scheduler host: its dashboard's answers, one line each.
_DASHBOARD_SCRIPT = r"""
echo "@@dashboard"
py=$(command -v python3 || command -v python) && "$py" -c {read} {url}
"""
_READ_DASHBOARD = (
    "import sys, urllib.request as u\n"
    "for path in ('/json/identity.json', '/health'):\n"
    "    try:\n"
    "        body = u.urlopen(sys.argv[1] + path, timeout=3).read().decode()\n"
    "        print(path, ' '.join(body.split()))\n"
    "    except Exception as exc:\n"
    "        print(path, 'ERROR', type(exc).__name__, ' '.join(str(exc).split()))\n"
)


def packages_script(units: Sequence[str]) -> str:
    """The part of a host's round that prints the package versions of its units' runtime."""
    return "".join(
        _PACKAGES_SCRIPT.format(
            unit=shlex.quote(u),
            packages=" ".join(VERSION_PACKAGES),
            in_container=shlex.quote(_IN_CONTAINER.format(packages=VERSION_PACKAGES)),
        )
        for u in units
    )


def dashboard_script(url: str) -> str:
    """The part of the scheduler host's round that reads its dashboard at ``url``."""
    return _DASHBOARD_SCRIPT.format(read=shlex.quote(_READ_DASHBOARD), url=shlex.quote(url))


def sections(stdout: str) -> dict[str, list[str]]:
    """Split a round's output into its ``@@name`` sections (lines after each header)."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in stdout.splitlines():
        if line.startswith("@@"):
            current = found.setdefault(line[2:].strip(), [])
        elif current is not None:
            current.append(line.rstrip())
    return found


def addresses_in(stdout: str) -> tuple[str, ...]:
    """The addresses the host reported in its ``@@addresses`` section, in order, once each."""
    words = [w for line in sections(stdout).get("addresses", []) for w in line.split()]
    return tuple(dict.fromkeys(words))


def round_command(script: str = "") -> str:
    """The one command a host runs in the round: ``script``, its addresses, an end mark."""
    return "sh -c " + shlex.quote(f"{script}{ADDRESSES_SCRIPT}echo {END}\n")


def packages_in(stdout: str) -> dict[str, dict[str, str]]:
    """Each unit's runtime packages from its ``@@packages UNIT`` section: name -> version,
    ``python`` included (``X.Y`` from a venv's path, ``X.Y.Z`` from a container)."""
    found: dict[str, dict[str, str]] = {}
    for section, lines in sections(stdout).items():
        kind, _, unit = section.partition(" ")
        if kind != "packages" or not unit:
            continue
        packages: dict[str, str] = {}
        for line in lines:
            if line.endswith(".dist-info") and "/lib/python" in line:
                python = line.split("/lib/python", 1)[1].split("/", 1)[0]
                name, _, version = line.rsplit("/", 1)[1].removesuffix(".dist-info").partition("-")
                packages.setdefault("python", python)
                packages[name.lower().replace("_", "-")] = version
            elif len(words := line.split()) == 2:
                packages[words[0]] = words[1]
        found[unit.strip()] = packages
    return found


def dashboard_in(stdout: str) -> tuple[dict[str, Any] | None, str]:
    """The scheduler's identity from its host's ``@@dashboard`` section, or None and why."""
    answers = dict(
        line.partition(" ")[::2] for line in sections(stdout).get("dashboard", []) if line
    )
    identity = answers.get("/json/identity.json")
    if identity is None:
        return None, "the scheduler host did not read its dashboard"
    if identity.startswith("ERROR "):
        return None, f"dashboard: {identity.removeprefix('ERROR ')}"
    try:
        parsed = json.loads(identity)
    except ValueError:
        return None, "dashboard: /json/identity.json is not JSON"
    if not isinstance(parsed, dict) or answers.get("/health") != "ok":
        return None, f"dashboard: /health says {answers.get('/health', 'nothing')!r}"
    return parsed, ""


def client_packages() -> dict[str, str]:
    """The packages of this machine, as a client would report them (nothing imported)."""
    found = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def versions_from_hosts(
    scheduler: Mapping[str, str] | None,
    workers: Mapping[str, Mapping[str, str]],
) -> dict[str, Any]:
    """Versions in the shape of ``Client.get_versions``, from the runtimes' packages:
    ``scheduler`` the scheduler unit's, ``workers`` each worker address's. Empty when the
    scheduler's are unknown (nothing to compare with)."""
    if not scheduler:
        return {}
    return {
        "scheduler": {"packages": dict(scheduler)},
        "workers": {address: {"packages": dict(p)} for address, p in workers.items() if p},
        "client": {"packages": client_packages()},
    }


def assign_workers(
    workers: Sequence[WorkerView], addresses: Mapping[str, Collection[str]]
) -> tuple[dict[str, tuple[WorkerView, ...]], tuple[WorkerView, ...]]:
    """Each host's workers (those registered from one of its addresses), and the workers of
    no host in ``addresses`` (registered from elsewhere)."""
    mine = {name: tuple(w for w in workers if w.host in own) for name, own in addresses.items()}
    claimed = {w.address for found in mine.values() for w in found}
    return mine, tuple(w for w in workers if w.address not in claimed)


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def worker_gpus(inventory: Inventory, host: Host) -> int:
    """The GPUs a worker host declares (``dask_worker_gpus``; ``check`` refuses a template)."""
    return _count(inventory.dask_vars(host).get("dask_worker_gpus")) or 0


def expected_workers(inventory: Inventory, host: Host) -> int | None:
    """How many workers a worker host should have registered: one per GPU on a GPU host, else
    ``dask_worker_nworkers``; None when the value is a template only Ansible can compute."""
    gpus = worker_gpus(inventory, host)
    if gpus:
        return gpus
    return _count(inventory.dask_vars(host).get("dask_worker_nworkers"))


def host_units(inventory: Inventory, host: Host) -> tuple[str, ...]:
    """The dask units a host runs, the scheduler's first: ``dask-worker``, or one
    ``dask-worker@<i>`` per GPU (``contract.worker_units``)."""
    units = [SCHEDULER_UNIT] if host.name == inventory.scheduler.name else []
    if any(w.name == host.name for w in inventory.workers):
        units += worker_units(worker_gpus(inventory, host))
    return tuple(units)


@dataclass(frozen=True)
class HostReading:
    """One host as the round found it.

    ``answer`` is what its command printed, or why it could not be reached (then
    ``reported`` is empty); ``addresses`` every address its workers may register from;
    ``workers`` those the scheduler has from them.
    """

    name: str
    answer: remote.CommandResult | remote.Unreachable
    addresses: frozenset[str]
    reported: tuple[str, ...] = ()
    workers: tuple[WorkerView, ...] = ()

    @property
    def reached(self) -> bool:
        return isinstance(self.answer, remote.CommandResult)


@dataclass(frozen=True)
class ClusterReading:
    """Every host of one round, the scheduler's view and the workers of no known host."""

    hosts: Mapping[str, HostReading] = field(hash=False)
    scheduler: SchedulerView
    strangers: tuple[WorkerView, ...]
    seconds: float


async def _resolved(address: str) -> set[str]:
    """What ``address`` resolves to here (nothing when it does not resolve)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(address, None), CONNECT_TIMEOUT)
    except (OSError, TimeoutError, UnicodeError):
        return set()
    return {str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)}


async def _scheduler_view(
    inventory: Inventory,
    source: Source,
    link: SchedulerLink | None,
    answers: Mapping[str, remote.CommandResult | remote.Unreachable],
    addresses: Mapping[str, frozenset[str]],
) -> SchedulerView:
    """The scheduler's view for this round: the one place that decides where it comes from.

    ``dashboard``: from what the scheduler host read of its own dashboard in the round, with
    the versions each host's runtime has; a client (``link``) when that failed.
    """
    address = connection.cluster_address(inventory)
    if source == "none":
        return SchedulerView(address, error="not asked")
    if source == "dashboard":
        answer = answers.get(inventory.scheduler.name)
        if isinstance(answer, remote.CommandResult):
            identity, _ = dashboard_in(answer.stdout)
            if identity is not None:
                workers = workers_from_identity(identity)
                versions = _versions(inventory, answers, workers, addresses)
                return SchedulerView(address, None, workers, versions, source="dashboard")
    if link is None:
        return SchedulerView(address, error="not asked")
    return await link.view()


def _versions(
    inventory: Inventory,
    answers: Mapping[str, remote.CommandResult | remote.Unreachable],
    workers: Sequence[WorkerView],
    addresses: Mapping[str, frozenset[str]],
) -> dict[str, Any]:
    packages = {
        name: packages_in(a.stdout)
        for name, a in answers.items()
        if isinstance(a, remote.CommandResult)
    }
    scheduler = packages.get(inventory.scheduler.name, {}).get(SCHEDULER_UNIT)
    mine, _ = assign_workers(workers, addresses)
    by_worker = {
        w.address: packages.get(host, {}).get(
            worker_units(worker_gpus(inventory, inventory.host(host)))[0], {}
        )
        for host, found in mine.items()
        for w in found
    }
    return versions_from_hosts(scheduler, by_worker)


async def read(
    inventory: Inventory,
    link: SchedulerLink | None,
    scripts: Mapping[str, str] | None = None,
    hosts: Sequence[Host] | None = None,
    timeout: float = COMMAND_TIMEOUT,
    source: Source = "client",
) -> ClusterReading:
    """One round: every host (or ``hosts``) over SSH, and the scheduler's view from
    ``source`` (``_scheduler_view``). ``scripts`` gives a host's own script, run before its
    addresses are printed. A client (``link``) is asked at the same time as the hosts."""
    started = time.monotonic()
    chosen = tuple(hosts if hosts is not None else inventory.hosts)
    scripts = dict(scripts or {})
    if source == "dashboard":
        for host in chosen:
            extra = packages_script(host_units(inventory, host))
            if host.name == inventory.scheduler.name:
                extra += dashboard_script(connection.dashboard_url(inventory))
            scripts[host.name] = scripts.get(host.name, "") + extra
    targets = {h.name: remote.ssh_target(h, CONNECT_TIMEOUT) for h in chosen}
    commands = {h.name: round_command(scripts.get(h.name, "")) for h in chosen}
    early = None if source == "dashboard" or link is None else asyncio.ensure_future(link.view())
    answers, resolved = await asyncio.gather(
        remote.run_on_hosts(targets, commands, timeout),
        asyncio.gather(*(_resolved(h.address) for h in chosen)),
    )
    addresses: dict[str, frozenset[str]] = {}
    reported: dict[str, tuple[str, ...]] = {}
    for host, found in zip(chosen, resolved, strict=True):
        answer = answers[host.name]
        own = addresses_in(answer.stdout) if isinstance(answer, remote.CommandResult) else ()
        reported[host.name] = own
        addresses[host.name] = frozenset({host.address, *found, *own})
    if early is not None:
        view = await early
    else:
        view = await _scheduler_view(inventory, source, link, answers, addresses)
    workers, strangers = assign_workers(view.workers, addresses)
    readings = {
        h.name: HostReading(
            h.name, answers[h.name], addresses[h.name], reported[h.name], workers[h.name]
        )
        for h in chosen
    }
    return ClusterReading(readings, view, strangers, time.monotonic() - started)


@contextlib.contextmanager
def scheduler_dial(inventory: Inventory) -> Iterator[str]:
    """The scheduler's dial address for a round; a forward that cannot open leaves the direct
    address, so the round still reports every host and the scheduler's error."""
    try:
        with connection.scheduler_route(inventory) as dial:
            yield dial
            return
    except SchedulerUnreachable:
        pass
    yield connection.cluster_address(inventory)


def read_cluster(
    inventory: Inventory,
    scripts: Mapping[str, str] | None = None,
    hosts: Sequence[Host] | None = None,
    *,
    source: Source = "client",
) -> ClusterReading:
    """``read`` from synchronous code: opens the way to the scheduler and a client for the
    round when one may be needed, and closes both."""

    async def once(dial: str | None) -> ClusterReading:
        link = SchedulerLink(inventory, dial=dial) if dial is not None else None
        try:
            return await read(inventory, link, scripts, hosts, source=source)
        finally:
            if link is not None:
                await link.close()

    if source == "none":
        return asyncio.run(once(None))
    with quiet_versions(), scheduler_dial(inventory) as dial:
        return asyncio.run(once(dial))
