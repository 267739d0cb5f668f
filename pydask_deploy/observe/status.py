"""The cluster at a glance: one SSH round to every host and one scheduler query, together.

Reading only. Each host runs one shell command (``probe_command``) that prints everything
status needs: each dask unit's state, start time, restarts and runtime, the host's addresses
and its listening TCP ports. ``parse_probe`` turns that text into values (a pure function, so
it is tested without SSH). At the same time a ``distributed`` client asks the scheduler who is
registered, with what memory and tasks, and which versions everyone runs. ``collect_status``
joins both into a ``ClusterStatus`` that says whether the cluster is healthy and, if not, what
is wrong and what to do next.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib
import re
import shlex
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydask_deploy.deploy.pki import PkiError
from pydask_deploy.inventory import Host, Inventory
from pydask_deploy.observe import connection, remote
from pydask_deploy.observe.verify import SCHEDULER_UNIT, WORKER_UNIT

CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
SCHEDULER_TIMEOUT = 5.0

# Packages whose versions must match between scheduler and workers (distributed's own list
# of required packages); python is compared by major.minor: a patch level does not matter.
SKEW_PACKAGES = ("python", "dask", "distributed", "msgpack", "cloudpickle", "toolz", "tornado")
# What a client on this machine must share with the cluster.
CLIENT_PACKAGES = ("dask", "distributed")

# Tasks a worker is running, and every task the scheduler has handed it and is not done.
_RUNNING_STATES = ("executing", "long-running")
_PROCESSING_STATES = ("executing", "long-running", "ready", "constrained", "waiting")


# --------------------------------------------------------------------------- the SSH probe

_UNIT_PROPERTIES = (
    "LoadState",
    "ActiveState",
    "SubState",
    "ActiveEnterTimestamp",
    "NRestarts",
    "MainPID",
    "ControlGroup",
    "FragmentPath",
    "ExecStart",
)

# POSIX sh; runs as the SSH user. Each section starts with an "@@" line. Old systemd (before
# v248) lacks --timestamp=unix: it then prints the human form, which the parser also reads.
_PROBE_UNIT = r"""
u={unit}
echo "@@unit $u"
props="{props}"
out=$(systemctl show "$u" --timestamp=unix $props 2>/dev/null) ||
  out=$(systemctl show "$u" $props 2>/dev/null)
printf '%s\n' "$out"
frag=$(printf '%s\n' "$out" | sed -n 's/^FragmentPath=//p')
[ -n "$frag" ] && [ -r "$frag" ] && sed -n 's/^# runtime: */Runtime=/p' "$frag" | head -n 1
exe=$(printf '%s\n' "$out" | sed -n 's/^ExecStart={{ path=\([^ ;]*\).*/\1/p' | head -n 1)
case "$exe" in */bin/*)
  for d in "${{exe%/bin/*}}"/lib/python*/site-packages/distributed-*.dist-info; do
    [ -d "$d" ] && echo "DistInfo=${{d##*/}}"
  done;;
esac
cg=$(printf '%s\n' "$out" | sed -n 's/^ControlGroup=//p')
[ -n "$cg" ] && echo "Pids=$(grep -lE ":$cg(/.*)?\$" /proc/[0-9]*/cgroup 2>/dev/null |
  cut -d/ -f3 | tr '\n' ' ')"
"""

_PROBE_HOST = r"""
echo "@@addresses"
hostname -I 2>/dev/null || ip -o addr show 2>/dev/null | awk '{print $4}' | cut -d/ -f1
echo "@@listening"
ss -ltnpH 2>/dev/null || ss -ltnp 2>/dev/null
echo "@@end"
"""


def probe_command(units: Sequence[str]) -> str:
    """The one shell command that prints what status needs from a host with these units."""
    script = "".join(
        _PROBE_UNIT.format(unit=shlex.quote(u), props=" ".join(f"-p {p}" for p in _UNIT_PROPERTIES))
        for u in units
    )
    return "sh -c " + shlex.quote(script + _PROBE_HOST)


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket: local address, port, and the process behind it when known."""

    address: str
    port: int
    process: str | None = None
    pid: int | None = None


@dataclass(frozen=True)
class UnitState:
    """A systemd unit as the host reported it.

    ``since`` is ActiveEnterTimestamp as epoch seconds (None when never active or unread),
    ``since_text`` the raw value; ``runtime`` the ``# runtime:`` id written in the unit file;
    ``distributed`` the version installed in the runtime the unit starts (venv/conda only);
    ``pids`` the processes in the unit's cgroup.
    """

    name: str
    load_state: str = ""
    active_state: str = ""
    sub_state: str = ""
    since: float | None = None
    since_text: str = ""
    restarts: int | None = None
    main_pid: int | None = None
    runtime: str | None = None
    distributed: str | None = None
    exec_path: str | None = None
    pids: frozenset[int] = frozenset()

    @property
    def installed(self) -> bool:
        return self.load_state not in ("", "not-found")

    @property
    def active(self) -> bool:
        return self.active_state == "active"

    @property
    def state(self) -> str:
        """``active (running)``, ``failed (failed)``, ``not installed`` ..."""
        if not self.installed:
            return "not installed"
        return f"{self.active_state} ({self.sub_state})" if self.sub_state else self.active_state


@dataclass(frozen=True)
class HostProbe:
    """Everything one host said in the status round."""

    units: Mapping[str, UnitState]
    addresses: tuple[str, ...] = ()
    listeners: tuple[Listener, ...] = ()

    def ports_of(self, unit: UnitState) -> tuple[int, ...]:
        """The TCP ports the unit's processes listen on.

        Matched by the processes in the unit's cgroup. When that finds nothing (the SSH user
        may not see other users' sockets, or a docker runtime runs outside the unit's cgroup)
        it falls back to the ports of processes named dask or python.
        """
        if not unit.active:
            return ()
        ports = {s.port for s in self.listeners if s.pid is not None and s.pid in unit.pids}
        if not ports:
            ports = {
                s.port
                for s in self.listeners
                if s.process and (s.process.startswith(("dask", "python")))
            }
        return tuple(sorted(ports))


_SS_USER = re.compile(r'\("([^"]*)",pid=(\d+)')
_DIST_INFO = re.compile(r"^distributed-(.+)\.dist-info$")


def _parse_timestamp(text: str) -> float | None:
    """ActiveEnterTimestamp: ``@1795356924`` (--timestamp=unix) or ``Sun 2026-11-22 14:15:20
    UTC``. Another zone name than UTC/GMT is read as local time (systemd prints local)."""
    text = text.strip()
    if not text or text == "n/a":
        return None
    if text.startswith("@"):
        try:
            return float(text[1:])
        except ValueError:
            return None
    parts = text.split()
    if len(parts) >= 3:
        try:
            when = dt.datetime.strptime(f"{parts[1]} {parts[2]}", "%Y-%m-%d %H:%M:%S")
        except ValueError:
            return None
        zone = parts[3] if len(parts) > 3 else ""
        if zone in ("UTC", "GMT"):
            return when.replace(tzinfo=dt.UTC).timestamp()
        return when.timestamp()
    return None


def _int_or_none(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def _unit_from(name: str, values: Mapping[str, str]) -> UnitState:
    exec_path = None
    found = re.match(r"\{ path=([^ ;]+)", values.get("ExecStart", ""))
    if found:
        exec_path = found.group(1)
    dist = _DIST_INFO.match(values.get("DistInfo", ""))
    main_pid = _int_or_none(values.get("MainPID", ""))
    return UnitState(
        name=name,
        load_state=values.get("LoadState", ""),
        active_state=values.get("ActiveState", ""),
        sub_state=values.get("SubState", ""),
        since=_parse_timestamp(values.get("ActiveEnterTimestamp", "")),
        since_text=values.get("ActiveEnterTimestamp", ""),
        restarts=_int_or_none(values.get("NRestarts", "")),
        main_pid=main_pid or None,
        runtime=values.get("Runtime") or None,
        distributed=dist.group(1) if dist else None,
        exec_path=exec_path,
        pids=frozenset(int(p) for p in values.get("Pids", "").split() if p.isdigit()),
    )


def _listener(line: str) -> Listener | None:
    fields = line.split()
    if len(fields) < 4 or fields[0] != "LISTEN":
        return None
    address, _, port = fields[3].rpartition(":")
    if not port.isdigit():
        return None
    user = _SS_USER.search(line)
    return Listener(
        address=address.strip("[]"),
        port=int(port),
        process=user.group(1) if user else None,
        pid=int(user.group(2)) if user else None,
    )


def parse_probe(text: str) -> HostProbe:
    """Read what ``probe_command`` printed. Unknown lines are skipped; nothing raises."""
    units: dict[str, UnitState] = {}
    addresses: list[str] = []
    listeners: list[Listener] = []
    section = ""
    unit_name = ""
    values: dict[str, str] = {}

    def close_unit() -> None:
        if unit_name:
            units[unit_name] = _unit_from(unit_name, values)

    for line in text.splitlines():
        if line.startswith("@@"):
            close_unit()
            section, _, arg = line[2:].partition(" ")
            unit_name = arg.strip() if section == "unit" else ""
            values = {}
            continue
        if section == "unit":
            key, sep, value = line.partition("=")
            if sep and key and key not in values:
                values[key] = value
        elif section == "addresses":
            addresses += line.split()
        elif section == "listening":
            found = _listener(line)
            if found is not None:
                listeners.append(found)
    close_unit()
    return HostProbe(units, tuple(dict.fromkeys(addresses)), tuple(listeners))


# --------------------------------------------------------------------------- the scheduler


@dataclass(frozen=True)
class WorkerView:
    """One worker as the scheduler sees it."""

    address: str
    host: str
    name: str
    memory: int
    memory_limit: int
    running: int
    processing: int


@dataclass(frozen=True)
class SchedulerView:
    """The scheduler's answer, or why there was none (``error``)."""

    address: str
    error: str | None = None
    workers: tuple[WorkerView, ...] = ()
    versions: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def answered(self) -> bool:
        return self.error is None


def workers_from_identity(identity: Mapping[str, Any]) -> tuple[WorkerView, ...]:
    """Read the workers out of ``Scheduler.identity(n_workers=-1)``."""
    found = []
    for address, info in sorted((identity.get("workers") or {}).items()):
        metrics = info.get("metrics") or {}
        counts = metrics.get("task_counts") or {}
        found.append(
            WorkerView(
                address=str(address),
                host=str(info.get("host", "")),
                name=str(info.get("name", address)),
                memory=int(metrics.get("memory") or 0),
                memory_limit=int(info.get("memory_limit") or 0),
                running=sum(int(counts.get(s, 0)) for s in _RUNNING_STATES),
                processing=sum(int(counts.get(s, 0)) for s in _PROCESSING_STATES),
            )
        )
    return tuple(found)


class SchedulerLink:
    """A client to the scheduler, kept open across ``--watch`` rounds.

    One client for the whole watch keeps the scheduler's log free of a connect and a
    disconnect every round. After a failure the client is closed and the next round
    connects afresh.
    """

    def __init__(
        self, inventory: Inventory, timeout: float = SCHEDULER_TIMEOUT, dial: str | None = None
    ) -> None:
        self.inventory = inventory
        self.address = connection.cluster_address(inventory)
        self.dial = dial or self.address  # a loopback forward when behind a jump host
        self.timeout = timeout
        self._client: Any = None

    async def view(self) -> SchedulerView:
        """Ask the scheduler who is registered and which versions everyone runs."""
        # distributed takes half a second to import: do it in a thread so that the SSH
        # round, waiting on the network meanwhile, keeps moving on the event loop
        await asyncio.to_thread(importlib.import_module, "distributed")
        from distributed import Client

        try:
            if self._client is None:
                # the client certificate apply made, when the cluster runs with TLS
                security = connection.client_security(self.inventory)
                self._client = await Client(  # type: ignore[no-untyped-call]
                    self.dial, security=security, asynchronous=True, timeout=self.timeout
                )
            identity, versions = await asyncio.wait_for(
                asyncio.gather(
                    self._client.scheduler.identity(n_workers=-1), self._client.get_versions()
                ),
                self.timeout,
            )
        except (OSError, TimeoutError, PkiError) as exc:
            await self.close()
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return SchedulerView(self.address, error=text)
        workers = workers_from_identity(identity)
        return SchedulerView(self.address, workers=workers, versions=versions)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(OSError, TimeoutError):
                await client.close()


async def ask_scheduler(inventory: Inventory, timeout: float = SCHEDULER_TIMEOUT) -> SchedulerView:
    """Ask the scheduler once who is registered and which versions everyone runs."""
    link = SchedulerLink(inventory, timeout)
    try:
        return await link.view()
    finally:
        await link.close()


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def version_skew(
    versions: Mapping[str, Any], names: Mapping[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """Compare ``Client.get_versions()``: (skew between scheduler and workers, client skew).

    Each entry is one line, as ``distributed 2026.8.0 on the scheduler, 2026.7.0 on h2``.
    ``names`` maps a worker address to the host name to show. The client is compared only on
    dask and distributed: python patch levels and optional packages such as numpy missing
    here do not matter to a client.
    """
    names = names or {}
    scheduler = (versions.get("scheduler") or {}).get("packages") or {}
    workers = versions.get("workers") or {}
    client = (versions.get("client") or {}).get("packages") or {}

    def norm(package: str, value: object) -> str | None:
        if value is None:
            return None
        return _major_minor(str(value)) if package == "python" else str(value)

    skew: list[str] = []
    for package in SKEW_PACKAGES:
        want = norm(package, scheduler.get(package))
        differ: dict[str, list[str]] = {}
        for address, info in sorted(workers.items()):
            have = norm(package, ((info or {}).get("packages") or {}).get(package))
            if have != want:
                differ.setdefault(str(have), []).append(names.get(address, address))
        if differ:
            where = "; ".join(
                f"{have} on {', '.join(sorted(set(hosts)))}" for have, hosts in differ.items()
            )
            skew.append(f"{package} {want} on the scheduler, {where}")
    client_skew = []
    for package in CLIENT_PACKAGES:
        want = norm(package, scheduler.get(package))
        have = norm(package, client.get(package))
        if want is not None and have != want:
            client_skew.append(f"{package} {have} here, {want} on the scheduler")
    return skew, client_skew


# --------------------------------------------------------------------------- joining both


@dataclass(frozen=True)
class UnitRow:
    """One dask unit on one host: the table's row."""

    unit: str
    role: str
    state: UnitState
    ports: tuple[int, ...]


@dataclass(frozen=True)
class HostStatus:
    """One inventory host: how SSH found it, and its workers as the scheduler sees them.

    ``error`` is set when the host could not be reached (then ``units`` is empty).
    ``expected`` is the inventory's ``dask_worker_nworkers`` for worker hosts (None when the
    host runs no worker or the value is a template); ``workers`` are those registered from
    this host's addresses.
    """

    name: str
    address: str
    roles: tuple[str, ...]
    error: str | None = None
    units: tuple[UnitRow, ...] = ()
    addresses: tuple[str, ...] = ()
    expected: int | None = None
    workers: tuple[WorkerView, ...] = ()

    @property
    def reachable(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Problem:
    """Something that makes the cluster unhealthy, and what to do about it."""

    host: str | None
    message: str
    hint: str

    @property
    def text(self) -> str:
        return f"{self.host}: {self.message}" if self.host else self.message


@dataclass(frozen=True)
class ClusterStatus:
    """The whole picture: hosts, the scheduler's view, problems and notes."""

    inventory: str
    hosts: tuple[HostStatus, ...]
    scheduler: SchedulerView
    problems: tuple[Problem, ...]
    skew: tuple[str, ...]
    client_skew: tuple[str, ...]
    strangers: tuple[WorkerView, ...]
    seconds: float
    checked_at: float

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        registered = sum(len(h.workers) for h in self.hosts)
        if self.healthy:
            hosts = sum(1 for h in self.hosts if h.workers)
            return f"healthy: {registered} worker(s) on {hosts} host(s) registered"
        shown = "; ".join(p.text for p in self.problems[:3])
        more = f" (and {len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        return f"unhealthy: {shown}{more}; next: {self.problems[0].hint}"

    def to_json(self) -> dict[str, Any]:
        def unit_json(row: UnitRow) -> dict[str, Any]:
            u = row.state
            return {
                "unit": row.unit,
                "role": row.role,
                "installed": u.installed,
                "active_state": u.active_state,
                "sub_state": u.sub_state,
                "since": _iso(u.since),
                "restarts": u.restarts,
                "runtime": u.runtime,
                "distributed": u.distributed,
                "ports": list(row.ports),
            }

        def worker_json(w: WorkerView) -> dict[str, Any]:
            return {
                "address": w.address,
                "host": w.host,
                "name": w.name,
                "memory": w.memory,
                "memory_limit": w.memory_limit,
                "running": w.running,
                "processing": w.processing,
            }

        return {
            "ok": self.healthy,
            "verdict": self.verdict,
            "inventory": self.inventory,
            "checked_at": _iso(self.checked_at),
            "seconds": round(self.seconds, 3),
            "scheduler": {
                "address": self.scheduler.address,
                "answered": self.scheduler.answered,
                "error": self.scheduler.error,
                "workers": len(self.scheduler.workers),
            },
            "hosts": [
                {
                    "name": h.name,
                    "address": h.address,
                    "roles": list(h.roles),
                    "reachable": h.reachable,
                    "error": h.error,
                    "addresses": list(h.addresses),
                    "units": [unit_json(r) for r in h.units],
                    "workers": {
                        "expected": h.expected,
                        "registered": len(h.workers),
                        "memory": sum(w.memory for w in h.workers),
                        "memory_limit": sum(w.memory_limit for w in h.workers),
                        "running": sum(w.running for w in h.workers),
                        "processing": sum(w.processing for w in h.workers),
                        "list": [worker_json(w) for w in h.workers],
                    },
                }
                for h in self.hosts
            ],
            "unknown_workers": [worker_json(w) for w in self.strangers],
            "version_skew": list(self.skew),
            "client_skew": list(self.client_skew),
            "problems": [
                {"host": p.host, "message": p.message, "hint": p.hint} for p in self.problems
            ],
        }


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def _expected_workers(inventory: Inventory, host: Host) -> int | None:
    value = inventory.dask_vars(host).get("dask_worker_nworkers")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None  # a Jinja template: only Ansible knows


def host_roles(inventory: Inventory, host: Host) -> tuple[tuple[str, str], ...]:
    """(role, unit) pairs a host runs: the scheduler first."""
    roles = []
    if host.name == inventory.scheduler.name:
        roles.append(("scheduler", SCHEDULER_UNIT))
    if any(w.name == host.name for w in inventory.workers):
        roles.append(("worker", WORKER_UNIT))
    return tuple(roles)


def assess(
    inventory: Inventory,
    probes: Mapping[str, HostProbe | remote.Unreachable],
    view: SchedulerView,
    seconds: float = 0.0,
    checked_at: float | None = None,
) -> ClusterStatus:
    """Join the SSH round and the scheduler's view into a ``ClusterStatus`` (pure)."""
    shown = str(inventory.path)
    logs_hint = "see `pydask-deploy logs {inv} {host}`"
    problems: list[Problem] = []
    hosts: list[HostStatus] = []
    claimed: set[str] = set()
    worker_names: dict[str, str] = {}

    for host in inventory.hosts:
        roles = host_roles(inventory, host)
        probe = probes.get(host.name)
        is_worker = any(role == "worker" for role, _ in roles)
        expected = _expected_workers(inventory, host) if is_worker else None
        addresses = probe.addresses if isinstance(probe, HostProbe) else ()
        mine = {host.address, *addresses}
        workers = tuple(w for w in view.workers if w.host in mine)
        claimed.update(w.address for w in workers)
        worker_names.update((w.address, host.name) for w in workers)
        hint = logs_hint.format(inv=shown, host=host.name)
        if not isinstance(probe, HostProbe):
            reason = probe.reason if probe is not None else "not probed"
            hosts.append(
                HostStatus(
                    host.name,
                    host.address,
                    tuple(r for r, _ in roles),
                    error=reason,
                    expected=expected,
                    workers=workers,
                )
            )
            problems.append(
                Problem(
                    host.name,
                    f"unreachable ({reason})",
                    f"check that {host.name} ({host.address}) is up and accepts SSH "
                    f"as Ansible reaches it (`ansible {host.name} -i {shown} -m ping`)",
                )
            )
            continue
        rows = []
        for role, unit in roles:
            state = probe.units.get(unit, UnitState(unit))
            rows.append(UnitRow(unit, role, state, probe.ports_of(state)))
            if not state.installed:
                problems.append(
                    Problem(
                        host.name,
                        f"{unit} is not installed",
                        f"run `pydask-deploy apply {shown} --limit {host.name}`",
                    )
                )
            elif not state.active:
                again = f"then `pydask-deploy apply {shown} --limit {host.name}` starts it"
                problems.append(Problem(host.name, f"{unit} is {state.state}", f"{hint}, {again}"))
        hosts.append(
            HostStatus(
                host.name,
                host.address,
                tuple(r for r, _ in roles),
                units=tuple(rows),
                addresses=addresses,
                expected=expected,
                workers=workers,
            )
        )

    scheduler = inventory.scheduler
    if not view.answered:
        # a stopped or unreachable scheduler host already says why it does not answer
        if not any(p.host == scheduler.name for p in problems):
            problems.append(
                Problem(
                    scheduler.name,
                    f"the scheduler at {view.address} does not answer ({view.error})",
                    logs_hint.format(inv=shown, host=scheduler.name),
                )
            )
    else:
        for status in hosts:
            if status.expected is not None and len(status.workers) != status.expected:
                # an unreachable or stopped host already has its problem; say it once
                if any(p.host == status.name for p in problems):
                    continue
                problems.append(
                    Problem(
                        status.name,
                        f"{len(status.workers)} of {status.expected} workers registered",
                        logs_hint.format(inv=shown, host=status.name),
                    )
                )
    skew, client_skew = version_skew(view.versions, worker_names)
    if skew:
        problems.append(
            Problem(
                None,
                "version skew: " + "; ".join(skew),
                f"run `pydask-deploy apply {shown}` to put every host on one runtime",
            )
        )
    strangers = tuple(w for w in view.workers if w.address not in claimed)
    return ClusterStatus(
        inventory=shown,
        hosts=tuple(hosts),
        scheduler=view,
        problems=tuple(problems),
        skew=tuple(skew),
        client_skew=tuple(client_skew),
        strangers=strangers,
        seconds=seconds,
        checked_at=time.time() if checked_at is None else checked_at,
    )


async def _collect(inventory: Inventory, link: SchedulerLink) -> ClusterStatus:
    started = time.monotonic()
    targets = {h.name: remote.ssh_target(h, CONNECT_TIMEOUT) for h in inventory.hosts}
    commands = {
        h.name: probe_command([unit for _, unit in host_roles(inventory, h)])
        for h in inventory.hosts
    }
    results, view = await asyncio.gather(
        remote.run_on_hosts(targets, commands, COMMAND_TIMEOUT), link.view()
    )
    probes: dict[str, HostProbe | remote.Unreachable] = {}
    for name, result in results.items():
        if isinstance(result, remote.Unreachable):
            probes[name] = result
        elif "@@end" not in result.stdout:
            tail = result.stderr.strip().splitlines() or [f"exit status {result.exit_status}"]
            probes[name] = remote.Unreachable(f"status command failed: {tail[-1]}")
        else:
            probes[name] = parse_probe(result.stdout)
    return assess(inventory, probes, view, seconds=time.monotonic() - started)


@contextlib.contextmanager
def _quiet_versions() -> Iterator[None]:
    """Silence distributed's VersionMismatchWarning: status reports skew itself, precisely."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Mismatched versions found")
        yield


def collect_status(inventory: Inventory) -> ClusterStatus:
    """One status round: every host over SSH and the scheduler, all at once."""

    async def once(dial: str) -> ClusterStatus:
        link = SchedulerLink(inventory, dial=dial)
        try:
            return await _collect(inventory, link)
        finally:
            await link.close()

    with _quiet_versions(), _route(inventory) as dial:
        return asyncio.run(once(dial))


def watch_status(
    inventory: Inventory, interval: float, on_round: Callable[[ClusterStatus], None]
) -> None:
    """Run a status round every ``interval`` seconds and hand each to ``on_round``, until
    interrupted (Ctrl-C raises KeyboardInterrupt out of here). One scheduler client serves
    every round."""

    async def loop(dial: str) -> None:
        link = SchedulerLink(inventory, dial=dial)
        try:
            while True:
                on_round(await _collect(inventory, link))
                await asyncio.sleep(interval)
        finally:
            await link.close()

    with _quiet_versions(), _route(inventory) as dial:
        asyncio.run(loop(dial))


@contextlib.contextmanager
def _route(inventory: Inventory) -> Iterator[str]:
    """The scheduler's dial address; a forward that cannot open leaves the direct address,
    so the round still reports every host and the scheduler's error."""
    try:
        with connection.scheduler_route(inventory) as dial:
            yield dial
            return
    except connection.SchedulerUnreachable:
        pass
    yield connection.cluster_address(inventory)


# --------------------------------------------------------------------------- rendering


def _age(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "-"
    seconds = max(0, int(now - epoch))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            whole, rest = divmod(seconds, size)
            small = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            part = rest // small[1]
            return f"{whole}{unit}{part}{small[0]} ago" if part else f"{whole}{unit} ago"
    return f"{seconds}s ago"


def _bytes(count: int) -> str:
    from dask.utils import format_bytes

    return str(format_bytes(count)).replace(" ", "")


def _runtime(state: UnitState) -> str:
    if state.runtime and state.distributed:
        return f"{state.runtime} ({state.distributed})"
    return state.runtime or state.distributed or "-"


def table_rows(status: ClusterStatus) -> list[list[str]]:
    """The status table, header first: one row per unit (or per unreachable host)."""
    header = [
        "HOST",
        "ROLE",
        "UNIT STATE",
        "SINCE",
        "RESTARTS",
        "RUNTIME",
        "PORTS",
        "WORKERS",
        "MEMORY",
        "TASKS",
    ]
    rows = [header]
    now = status.checked_at
    total = sum(h.expected or 0 for h in status.hosts)
    for host in status.hosts:
        if not host.reachable:
            rows.append([host.name, ",".join(host.roles), f"unreachable ({host.error})"])
            continue
        for row in host.units:
            u = row.state
            if row.role == "worker":
                workers = f"{len(host.workers)}/{host.expected if host.expected else '?'}"
                memory = (
                    f"{_bytes(sum(w.memory for w in host.workers))}/"
                    f"{_bytes(sum(w.memory_limit for w in host.workers))}"
                    if host.workers
                    else "-"
                )
                tasks = (
                    f"{sum(w.running for w in host.workers)}/"
                    f"{sum(w.processing for w in host.workers)}"
                    if host.workers
                    else "-"
                )
            else:
                answered = status.scheduler.answered
                workers = f"{len(status.scheduler.workers)}/{total} total" if answered else "-"
                memory = tasks = "-"
            rows.append(
                [
                    host.name,
                    row.role,
                    u.state,
                    _age(u.since, now) if u.active else "-",
                    "-" if u.restarts is None else str(u.restarts),
                    _runtime(u),
                    ",".join(map(str, row.ports)) or "-",
                    workers,
                    memory,
                    tasks,
                ]
            )
    for w in status.strangers:
        rows.append(
            ["(" + w.host + ")", "worker", "not in inventory", "-", "-", "-", "-", "1", "-", "-"]
        )
    return rows


def render_table(rows: Iterable[Sequence[str]]) -> list[str]:
    """Align rows in columns; a short row's last cell runs on past the columns."""
    rows = [list(r) for r in rows]
    widths: dict[int, int] = {}
    for row in rows:
        # a short row's last cell runs on: it does not widen its column
        cells = row if len(row) >= len(rows[0]) else row[:-1]
        for i, cell in enumerate(cells):
            widths[i] = max(widths.get(i, 0), len(cell))
    lines = []
    for row in rows:
        cells = [
            cell.ljust(widths.get(i, 0)) if i < len(row) - 1 else cell for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines
