"""The dask units' journal from many hosts at once, merged in time order.

Each host runs one ``journalctl`` over SSH (asyncssh, all hosts together). Without
``--follow`` the outputs are merged by their timestamps; with it, lines are shown as they
arrive. journalctl writes JSON (``-o json``: the entry's time in microseconds, its unit and
its message), so that each line is shown with its host, time and unit once: the host's name
and dask's own timestamp, which journalctl's text formats repeat, are left out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pydask_deploy.contract import SCHEDULER_UNIT, WORKER_UNIT_PATTERNS
from pydask_deploy.errors import UsageError
from pydask_deploy.inventory import Host, Inventory
from pydask_deploy.observe import remote

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
DEFAULT_LINES = 200

# dask's own log format starts with its time: "2026-11-22 14:15:28,730 - distributed..."
_DASK_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+ - ")
_FIELDS = "__REALTIME_TIMESTAMP,_SYSTEMD_UNIT,MESSAGE"
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d+)?)(Z|[+-]\d\d:?\d\d)?(?=\s)")


@dataclass(frozen=True)
class LogLine:
    """One journal line and the host it came from; ``when`` is None for lines journalctl
    prints without a timestamp (a continuation line, ``-- Boot ... --``)."""

    host: str
    text: str
    when: dt.datetime | None = None


@dataclass(frozen=True)
class LogsResult:
    """The merged lines, and each host that failed with its reason (one line)."""

    lines: tuple[LogLine, ...]
    failures: Mapping[str, str]
    notes: tuple[tuple[str, str], ...] = ()


def journal_command(
    since: str | None = None, lines: int | None = None, follow: bool = False
) -> str:
    """The journalctl command line run on each host."""
    argv = ["journalctl", "-u", SCHEDULER_UNIT]
    for pattern in WORKER_UNIT_PATTERNS:  # dask-worker, or one dask-worker@<i> per GPU
        argv += ["-u", pattern]
    argv += ["-o", "json", f"--output-fields={_FIELDS}", "--no-pager"]
    if since:
        argv += ["--since", since]
    if lines is not None:
        argv += ["-n", str(lines)]
    if follow:
        argv.append("-f")
    return shlex.join(argv)


def parse_timestamp(line: str) -> dt.datetime | None:
    """The aware timestamp at the start of a short-iso(-precise) journal line, else None."""
    found = _STAMP.match(line)
    if not found:
        return None
    stamp, zone = found.group(1).replace(",", "."), found.group(2) or ""
    if zone == "Z":
        zone = "+00:00"
    elif zone and ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    try:
        when = dt.datetime.fromisoformat(stamp + zone)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def journal_line(host: str, raw: str) -> LogLine | None:
    """One line of journalctl's output as shown: ``TIME UNIT: MESSAGE`` from a JSON entry
    (dask's own timestamp taken off the message), a text line as it is; None for nothing
    to show (``-- No entries --``, ``-- Boot ...``, a blank line)."""
    if not raw.strip() or raw.startswith("-- "):
        return None
    if raw.startswith("{"):
        try:
            entry = json.loads(raw)
            stamp = int(entry["__REALTIME_TIMESTAMP"])
        except (ValueError, KeyError, TypeError):
            return LogLine(host, raw, None)
        when = dt.datetime.fromtimestamp(stamp / 1e6, dt.UTC).astimezone()
        unit = str(entry.get("_SYSTEMD_UNIT") or "").removesuffix(".service")
        message = entry.get("MESSAGE")
        if isinstance(message, list):  # journald gives non-UTF-8 messages as bytes
            message = bytes(message).decode(errors="replace")
        text = _DASK_STAMP.sub("", str(message or ""))
        return LogLine(host, f"{when.isoformat(timespec='milliseconds')} {unit}: {text}", when)
    return LogLine(host, raw, parse_timestamp(raw))


def host_lines(host: str, output: str) -> list[LogLine]:
    """A host's journal output as lines; a line without a timestamp takes the one before it."""
    found: list[LogLine] = []
    last: dt.datetime | None = None
    for raw in output.splitlines():
        line = journal_line(host, raw)
        if line is None:
            continue
        last = line.when or last
        found.append(LogLine(host, line.text, last))
    return found


def merge_journals(outputs: Mapping[str, str], last: int | None = None) -> list[LogLine]:
    """Merge each host's journal output in time order (stable: a host keeps its own order),
    and keep the last ``last`` lines of the result when given."""
    keyed = []
    for order, (host, output) in enumerate(outputs.items()):
        for seq, line in enumerate(host_lines(host, output)):
            when = line.when or dt.datetime.min.replace(tzinfo=dt.UTC)
            keyed.append(((when, order, seq), line))
    keyed.sort(key=lambda pair: pair[0])
    merged = [line for _, line in keyed]
    return merged[-last:] if last is not None and last >= 0 else merged


def select_hosts(inventory: Inventory, names: Sequence[str]) -> tuple[Host, ...]:
    """The inventory hosts called ``names`` (all when empty); UsageError naming the unknown."""
    if not names:
        return inventory.hosts
    by_name = {h.name: h for h in inventory.hosts}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        listed = ", ".join(by_name)
        what = "host" if len(unknown) == 1 else "hosts"
        raise UsageError(
            f"{inventory.path}: no {what} {', '.join(repr(n) for n in unknown)} in the "
            f"cluster; its hosts are {listed}"
        )
    return tuple(by_name[n] for n in dict.fromkeys(names))


def _failure(result: remote.HostResult) -> str | None:
    if isinstance(result, remote.Unreachable):
        return f"unreachable ({result.reason})"
    if result.exit_status not in (0, None):
        tail = result.stderr.strip().splitlines() or [f"exit status {result.exit_status}"]
        return f"journalctl failed: {tail[-1]}"
    return None


def _notes(results: Mapping[str, remote.HostResult]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (name, line)
        for name, result in results.items()
        if isinstance(result, remote.CommandResult) and result.exit_status == 0
        for line in result.stderr.strip().splitlines()
        if line.strip()
    )


def _check_since(since: str | None, failures: Mapping[str, str], asked: int) -> None:
    """A ``--since`` every host rejected is bad input (exit 2), not a host failure."""
    if since and failures and len(failures) == asked:
        reasons = set(failures.values())
        if len(reasons) == 1 and "timestamp" in next(iter(reasons)).lower():
            raise UsageError(
                f"--since {since!r}: journalctl cannot read it ({next(iter(reasons))}); "
                "use e.g. '2026-01-31 12:00', '-1h', 'today' or 'yesterday'"
            )


def read_logs(
    inventory: Inventory,
    hosts: Sequence[Host],
    since: str | None = None,
    lines: int | None = None,
) -> LogsResult:
    """The journal of the dask units on ``hosts``, merged in time order.

    With neither ``since`` nor ``lines`` it reads the last ``DEFAULT_LINES`` lines.
    """
    if since is None and lines is None:
        lines = DEFAULT_LINES
    targets = {h.name: remote.ssh_target(h, CONNECT_TIMEOUT) for h in hosts}
    command = journal_command(since, lines)
    results = asyncio.run(remote.run_on_hosts(targets, command, READ_TIMEOUT))
    failures = {n: f for n, r in results.items() if (f := _failure(r)) is not None}
    _check_since(since, failures, len(hosts))
    outputs = {
        n: r.stdout
        for n, r in results.items()
        if isinstance(r, remote.CommandResult) and n not in failures
    }
    return LogsResult(tuple(merge_journals(outputs, lines)), failures, _notes(results))


def follow_logs(
    inventory: Inventory,
    hosts: Sequence[Host],
    emit: Callable[[LogLine], None],
    report: Callable[[str, str], None],
    since: str | None = None,
    lines: int | None = None,
) -> dict[str, str]:
    """Stream the journal of ``hosts`` as lines arrive (until Ctrl-C or every host ends).

    ``emit`` gets each line; ``report(host, reason)`` each host as soon as it fails (so a
    caller interrupted by Ctrl-C still knows). Returns the failures.
    """
    targets = {h.name: remote.ssh_target(h, CONNECT_TIMEOUT) for h in hosts}
    command = journal_command(since, lines, follow=True)
    failures: dict[str, str] = {}

    def on_line(host: str, raw: str) -> None:
        line = journal_line(host, raw)
        if line is not None:
            emit(line)

    async def one(name: str) -> None:
        result = (await remote.stream_on_hosts({name: targets[name]}, command, on_line))[name]
        failure = _failure(result)
        if failure is not None:
            failures[name] = failure
            report(name, failure)

    async def main() -> None:
        await asyncio.gather(*(one(n) for n in targets))

    asyncio.run(main())
    return failures
