"""The read side: one round that learns each host's addresses and the workers it registered.

``read_cluster`` runs one SSH round to every host (each host may add a script of its own,
such as status's probe) at the same time as it asks the scheduler who is registered, then
gives each registered worker to the host it came from. A worker registers with the address
it reaches the scheduler from, which is not always the inventory's address (a host name, a
NAT, a second interface), so a host's addresses are its inventory address, what that
resolves to here and what the host itself reports (``hostname -I``). ``status``, ``verify``
and ``upgrade`` read the cluster through here and nowhere else.

Where the scheduler's view comes from is decided in ``_scheduler_view`` alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from pydask_deploy.errors import SchedulerUnreachable
from pydask_deploy.inventory import Host, Inventory
from pydask_deploy.observe import connection, remote
from pydask_deploy.observe.scheduler import SchedulerLink, SchedulerView, WorkerView, quiet_versions

CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
END = "@@end"

# POSIX sh: the host's own addresses, one section of the round's output.
ADDRESSES_SCRIPT = r"""
echo "@@addresses"
hostname -I 2>/dev/null || ip -o addr show 2>/dev/null | awk '{print $4}' | cut -d/ -f1
"""


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
    import shlex

    return "sh -c " + shlex.quote(f"{script}{ADDRESSES_SCRIPT}echo {END}\n")


def assign_workers(
    workers: Sequence[WorkerView], addresses: Mapping[str, Collection[str]]
) -> tuple[dict[str, tuple[WorkerView, ...]], tuple[WorkerView, ...]]:
    """Each host's workers (those registered from one of its addresses), and the workers of
    no host in ``addresses`` (registered from elsewhere)."""
    mine = {name: tuple(w for w in workers if w.host in own) for name, own in addresses.items()}
    claimed = {w.address for found in mine.values() for w in found}
    return mine, tuple(w for w in workers if w.address not in claimed)


def expected_workers(inventory: Inventory, host: Host) -> int | None:
    """How many workers a worker host should have registered (``dask_worker_nworkers``);
    None when the value is a template only Ansible can compute."""
    value = inventory.dask_vars(host).get("dask_worker_nworkers")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


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


async def _scheduler_view(link: SchedulerLink | None) -> SchedulerView:
    """The scheduler's view for this round (the one place that decides where it comes from)."""
    if link is None:
        return SchedulerView("", error="not asked")
    return await link.view()


async def read(
    inventory: Inventory,
    link: SchedulerLink | None,
    scripts: Mapping[str, str] | None = None,
    hosts: Sequence[Host] | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> ClusterReading:
    """One round: every host (or ``hosts``) over SSH and the scheduler through ``link``, at
    once. ``scripts`` gives a host's own script, run before its addresses are printed."""
    started = time.monotonic()
    chosen = tuple(hosts if hosts is not None else inventory.hosts)
    scripts = scripts or {}
    targets = {h.name: remote.ssh_target(h, CONNECT_TIMEOUT) for h in chosen}
    commands = {h.name: round_command(scripts.get(h.name, "")) for h in chosen}
    answers, view, resolved = await asyncio.gather(
        remote.run_on_hosts(targets, commands, timeout),
        _scheduler_view(link),
        asyncio.gather(*(_resolved(h.address) for h in chosen)),
    )
    addresses: dict[str, frozenset[str]] = {}
    reported: dict[str, tuple[str, ...]] = {}
    for host, found in zip(chosen, resolved, strict=True):
        answer = answers[host.name]
        own = addresses_in(answer.stdout) if isinstance(answer, remote.CommandResult) else ()
        reported[host.name] = own
        addresses[host.name] = frozenset({host.address, *found, *own})
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
    ask_scheduler: bool = True,
) -> ClusterReading:
    """``read`` from synchronous code: opens the way to the scheduler and a client for the
    round, and closes both. ``ask_scheduler=False`` reads the hosts alone."""

    async def once(dial: str | None) -> ClusterReading:
        link = SchedulerLink(inventory, dial=dial) if dial is not None else None
        try:
            return await read(inventory, link, scripts, hosts)
        finally:
            if link is not None:
                await link.close()

    if not ask_scheduler:
        return asyncio.run(once(None))
    with quiet_versions(), scheduler_dial(inventory) as dial:
        return asyncio.run(once(dial))
