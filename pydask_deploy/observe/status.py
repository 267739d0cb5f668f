"""The cluster at a glance: what ``status`` reads, and whether the cluster is healthy.

Reading only, through the read side (``observe/cluster.py``): in its one round each host also
runs ``probe_script``, which prints each dask unit's state, start time, restarts and runtime
and the host's listening TCP ports; ``parse_probe`` turns that text into values (a pure
function, tested without SSH). ``assess`` joins the hosts and the scheduler's view into a
``ClusterStatus`` that says whether the cluster is healthy and, if not, what is wrong and what
to do next. Drawing it is the command line's business (``cli/render.py``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import shlex
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydask_deploy.contract import SCHEDULER_UNIT, UNIT_RUNTIME_COMMENT, WORKER_UNIT
from pydask_deploy.inventory import Host, Inventory
from pydask_deploy.observe import cluster, remote
from pydask_deploy.observe.scheduler import (
    SchedulerLink,
    SchedulerView,
    WorkerView,
    quiet_versions,
)

__all__ = ["SchedulerView", "WorkerView"]  # the scheduler's values, as status shows them

# Packages whose versions must match between scheduler and workers (distributed's own list
# of required packages); python is compared by major.minor: a patch level does not matter.
SKEW_PACKAGES = ("python", "dask", "distributed", "msgpack", "cloudpickle", "toolz", "tornado")
# What a client on this machine must share with the cluster.
CLIENT_PACKAGES = ("dask", "distributed")

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
[ -n "$frag" ] && [ -r "$frag" ] && sed -n 's/^{runtime_comment}*/Runtime=/p' "$frag" | head -n 1
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
echo "@@listening"
ss -ltnpH 2>/dev/null || ss -ltnp 2>/dev/null
"""


def probe_script(units: Sequence[str]) -> str:
    """What status adds to a host's command in the read round, for a host with these units."""
    props = " ".join(f"-p {p}" for p in _UNIT_PROPERTIES)
    script = "".join(
        _PROBE_UNIT.format(
            unit=shlex.quote(u), props=props, runtime_comment=UNIT_RUNTIME_COMMENT.rstrip()
        )
        for u in units
    )
    return script + _PROBE_HOST


def probe_command(units: Sequence[str]) -> str:
    """The whole command a host with these units runs in the status round."""
    return cluster.round_command(probe_script(units))


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
    listeners: list[Listener] = []
    for section, lines in cluster.sections(text).items():
        kind, _, name = section.partition(" ")
        if kind == "unit" and name.strip():
            values: dict[str, str] = {}
            for line in lines:
                key, sep, value = line.partition("=")
                if sep and key and key not in values:
                    values[key] = value
            units[name.strip()] = _unit_from(name.strip(), values)
        elif section == "listening":
            listeners += [found for line in lines if (found := _listener(line)) is not None]
    return HostProbe(units, cluster.addresses_in(text), tuple(listeners))


# --------------------------------------------------------------------------- versions


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
                "source": self.scheduler.source,
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


def host_roles(inventory: Inventory, host: Host) -> tuple[tuple[str, str], ...]:
    """(role, unit) pairs a host runs: the scheduler first."""
    roles = []
    if host.name == inventory.scheduler.name:
        roles.append(("scheduler", SCHEDULER_UNIT))
    if any(w.name == host.name for w in inventory.workers):
        roles.append(("worker", WORKER_UNIT))
    return tuple(roles)


def _host_status(
    inventory: Inventory,
    host: Host,
    probe: HostProbe | remote.Unreachable | None,
    workers: tuple[WorkerView, ...],
) -> tuple[HostStatus, list[Problem]]:
    """One host's row and its problems: unreachable, a unit not installed or not active."""
    shown = str(inventory.path)
    roles = host_roles(inventory, host)
    names = tuple(r for r, _ in roles)
    is_worker = "worker" in names
    expected = cluster.expected_workers(inventory, host) if is_worker else None
    if not isinstance(probe, HostProbe):
        reason = probe.reason if probe is not None else "not probed"
        unreachable = Problem(
            host.name,
            f"unreachable ({reason})",
            f"check that {host.name} ({host.address}) is up and accepts SSH "
            f"as Ansible reaches it (`ansible {host.name} -i {shown} -m ping`)",
        )
        status = HostStatus(
            host.name, host.address, names, error=reason, expected=expected, workers=workers
        )
        return status, [unreachable]
    hint = _LOGS_HINT.format(inv=shown, host=host.name)
    rows, problems = [], []
    for role, unit in roles:
        state = probe.units.get(unit, UnitState(unit))
        rows.append(UnitRow(unit, role, state, probe.ports_of(state)))
        if not state.installed:
            apply = f"run `pydask-deploy apply {shown} --limit {host.name}`"
            problems.append(Problem(host.name, f"{unit} is not installed", apply))
        elif not state.active:
            again = f"then `pydask-deploy apply {shown} --limit {host.name}` starts it"
            problems.append(Problem(host.name, f"{unit} is {state.state}", f"{hint}, {again}"))
    status = HostStatus(
        host.name,
        host.address,
        names,
        units=tuple(rows),
        addresses=probe.addresses,
        expected=expected,
        workers=workers,
    )
    return status, problems


_LOGS_HINT = "see `pydask-deploy logs {inv} {host}`"


def _scheduler_problems(
    inventory: Inventory,
    view: SchedulerView,
    hosts: Sequence[HostStatus],
    problems: Sequence[Problem],
) -> list[Problem]:
    """What the scheduler's view adds: it does not answer, or a host lacks workers (a host
    that already has a problem is not named twice)."""
    shown = str(inventory.path)
    scheduler = inventory.scheduler
    named = {p.host for p in problems}
    if not view.answered:
        if scheduler.name in named:  # a stopped or unreachable scheduler host says why
            return []
        return [
            Problem(
                scheduler.name,
                f"the scheduler at {view.address} does not answer ({view.error})",
                _LOGS_HINT.format(inv=shown, host=scheduler.name),
            )
        ]
    return [
        Problem(
            status.name,
            f"{len(status.workers)} of {status.expected} workers registered",
            _LOGS_HINT.format(inv=shown, host=status.name),
        )
        for status in hosts
        if status.expected is not None
        and len(status.workers) != status.expected
        and status.name not in named
    ]


def assess(
    inventory: Inventory,
    probes: Mapping[str, HostProbe | remote.Unreachable],
    view: SchedulerView,
    seconds: float = 0.0,
    checked_at: float | None = None,
    addresses: Mapping[str, Collection[str]] | None = None,
) -> ClusterStatus:
    """Join the SSH round and the scheduler's view into a ``ClusterStatus`` (pure).

    ``addresses`` are each host's addresses as the read round learnt them; without them, a
    host's inventory address and those its probe reported.
    """
    if addresses is None:
        addresses = {
            h.name: {h.address, *(p.addresses if isinstance(p, HostProbe) else ())}
            for h in inventory.hosts
            for p in [probes.get(h.name)]
        }
    registered, strangers = cluster.assign_workers(view.workers, addresses)
    hosts: list[HostStatus] = []
    problems: list[Problem] = []
    for host in inventory.hosts:
        status, found = _host_status(
            inventory, host, probes.get(host.name), registered.get(host.name, ())
        )
        hosts.append(status)
        problems += found
    problems += _scheduler_problems(inventory, view, hosts, problems)
    worker_names = {w.address: name for name, ws in registered.items() for w in ws}
    skew, client_skew = version_skew(view.versions, worker_names)
    if skew:
        problems.append(
            Problem(
                None,
                "version skew: " + "; ".join(skew),
                f"run `pydask-deploy apply {inventory.path}` to put every host on one runtime",
            )
        )
    return ClusterStatus(
        inventory=str(inventory.path),
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
    scripts = {
        h.name: probe_script([unit for _, unit in host_roles(inventory, h)])
        for h in inventory.hosts
    }
    reading = await cluster.read(inventory, link, scripts, source="dashboard")
    probes: dict[str, HostProbe | remote.Unreachable] = {}
    for name, host in reading.hosts.items():
        answer = host.answer
        if isinstance(answer, remote.Unreachable):
            probes[name] = answer
        elif cluster.END not in answer.stdout:
            tail = answer.stderr.strip().splitlines() or [f"exit status {answer.exit_status}"]
            probes[name] = remote.Unreachable(f"status command failed: {tail[-1]}")
        else:
            probes[name] = parse_probe(answer.stdout)
    addresses = {name: host.addresses for name, host in reading.hosts.items()}
    return assess(inventory, probes, reading.scheduler, reading.seconds, addresses=addresses)


def collect_status(inventory: Inventory) -> ClusterStatus:
    """One status round: every host over SSH and the scheduler, all at once."""

    async def once(dial: str) -> ClusterStatus:
        link = SchedulerLink(inventory, dial=dial)
        try:
            return await _collect(inventory, link)
        finally:
            await link.close()

    with quiet_versions(), cluster.scheduler_dial(inventory) as dial:
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

    with quiet_versions(), cluster.scheduler_dial(inventory) as dial:
        asyncio.run(loop(dial))
