"""How the commands draw what the library returns: progress lines, tables, verdicts.

Library functions return values; everything a person reads on a terminal is made here.
Progress goes to stderr (stdout may carry ``--json``).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # the commands import what they run when they run it (a fast --help)
    from pydask_deploy.deploy.run import Progress, RunResult
    from pydask_deploy.observe.status import ClusterStatus, UnitState


def say(line: str) -> None:
    """One progress line on stderr."""
    click.echo(f"==> {line}", err=True)


def warn(line: str) -> None:
    """A warning the user should act on, on stderr."""
    click.secho(f"warning: {line}", fg="yellow", err=True)


# --------------------------------------------------------------------------- Ansible runs


class ProgressPrinter:
    """Live progress on stderr that stays readable at tens of hosts.

    One line per task with its counts (``[12] Install the venv.  ok 20  changed 4``), drawn
    and redrawn in place on a terminal as hosts report, printed once the task is done
    without one; a failed or unreachable host is named on a line of its own as it happens;
    with ``verbose`` every host's result too, and with ``show_diff`` each file's diff.
    """

    _ORDER = ("ok", "changed", "skipped", "failed", "unreachable")

    def __init__(
        self, show_diff: bool = False, verbose: bool = False, live: bool | None = None
    ) -> None:
        self.show_diff = show_diff
        self.verbose = verbose
        self.live = sys.stderr.isatty() if live is None else live
        self.tasks = 0
        self.task = ""
        self.counts: dict[str, int] = {}
        self._drawn = 0  # the width of the live line on the terminal, 0 when none

    def _line(self) -> str:
        counts = "  ".join(
            f"{kind} {self.counts.get(kind, 0)}"
            for kind in self._ORDER
            if self.counts.get(kind) or kind == "ok"
        )
        return f"  [{self.tasks:>2}] {self.task}  {counts}"

    def _clear(self) -> None:
        if self._drawn:
            click.echo("\r" + " " * self._drawn + "\r", nl=False, err=True)
            self._drawn = 0

    def _draw(self) -> None:
        if self.live and self.task:
            self._clear()
            line = self._line()[: shutil.get_terminal_size().columns - 1]
            click.echo(line, nl=False, err=True)
            self._drawn = len(line)

    def _finish_task(self) -> None:
        if self.task:
            self._clear()
            failed = self.counts.get("failed") or self.counts.get("unreachable")
            colour = "red" if failed else "yellow" if self.counts.get("changed") else None
            click.secho(self._line(), fg=colour, err=True)
        self.task, self.counts = "", {}

    def _print(self, text: str, **style: Any) -> None:
        """A line of its own, above the live line."""
        self._clear()
        click.secho(text, err=True, **style)
        self._draw()

    def __call__(self, step: Progress) -> None:
        if step.kind in ("play", "task", "done"):
            self._finish_task()
        if step.kind == "play":
            click.secho(f"\n{step.task}", bold=True, err=True)
        elif step.kind == "task":
            self.tasks += 1
            self.task = step.task
            self._draw()
        elif step.kind in self._ORDER:
            self.counts[step.kind] = self.counts.get(step.kind, 0) + 1
            if step.kind in ("failed", "unreachable"):
                self._print(f"         {step.host}: {step.kind}: {step.message}", fg="red")
            elif self.verbose and step.kind != "skipped":
                colour = "yellow" if step.kind == "changed" else None
                self._print(f"         {step.host}: {step.kind}", fg=colour)
            else:
                self._draw()
        if self.show_diff and step.diff:
            self._print(f"         {step.host}: {step.task}\n{step.diff.rstrip()}")


# Past this many hosts, the table at the end of a run groups hosts whose rows are the same.
SCREENFUL = 20


def print_run(result: RunResult) -> None:
    """The per-host table at the end of a run, then each failed host's errors. Past a
    screenful of hosts, consecutive hosts with the same counts share one row (``h1..h24``)."""
    click.echo(f"\n{'HOST':<20} {'OK':>4} {'CHANGED':>8} {'FAILED':>7} {'UNREACHABLE':>12}")
    rows: list[tuple[list[str], tuple[int, int, int, int]]] = []
    for h in result.hosts:
        counts = (h.ok, h.changed, h.failed, h.unreachable)
        if len(result.hosts) > SCREENFUL and rows and rows[-1][1] == counts:
            rows[-1][0].append(h.name)
        else:
            rows.append(([h.name], counts))
    for names, (ok, changed, failed, unreachable) in rows:
        shown = names[0] if len(names) == 1 else f"{names[0]}..{names[-1]} ({len(names)})"
        colour = "red" if failed or unreachable else None
        click.secho(f"{shown:<20} {ok:>4} {changed:>8} {failed:>7} {unreachable:>12}", fg=colour)
    for h in result.failed_hosts:
        for error in h.errors or ("failed",):
            click.secho(f"{h.name}: {error}", fg="red")


def interruption(
    result: RunResult, again: str, finished_task: str | None = None, signal: str | None = None
) -> list[str]:
    """What an interrupted run did, for the lines ``say`` prints: which hosts finished
    (left out as in sync, or past ``finished_task``), which were in progress and where,
    which were not reached, and the command that completes the job."""
    done = [*result.in_sync]
    busy: dict[str, list[str]] = {}
    idle = []
    for host in result.hosts:
        if host.name in result.in_sync:
            continue
        if finished_task and host.last_task == finished_task:
            done.append(host.name)
        elif host.last_task:
            busy.setdefault(host.last_task, []).append(host.name)
        else:
            idle.append(host.name)
    lines = [f"interrupted{f' ({signal})' if signal else ''}: Ansible was stopped"]
    if done:
        lines.append(f"finished: {', '.join(done)}")
    for task, names in busy.items():
        lines.append(f"in progress: {', '.join(names)} (at: {task})")
    if idle:
        lines.append(f"not reached: {', '.join(idle)}")
    lines.append(f"run `{again}` again to complete the job")
    return lines


# --------------------------------------------------------------------------- tables


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


# --------------------------------------------------------------------------- status


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
    """``1.15GiB``: dask's format_bytes without importing dask (status starts faster)."""
    for prefix, size in (("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("ki", 2**10)):
        if count >= size * 0.9:
            return f"{count / size:.2f}{prefix}B"
    return f"{count}B"


def _runtime(state: UnitState) -> str:
    if state.runtime and state.distributed:
        return f"{state.runtime} ({state.distributed})"
    return state.runtime or state.distributed or "-"


def table_rows(status: ClusterStatus) -> list[list[str]]:
    """The status table, header first: one row per unit (or per unreachable host)."""
    from pydask_deploy.observe.status import unit_workers

    header = [
        "HOST",
        "ROLE",
        "UNIT STATE",
        "SINCE",
        "RESTARTS",
        "RUNTIME",
        "PORTS",
        "WORKERS",
        "GPUS",
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
                # a GPU host has a unit per GPU, each with its one worker and GPU
                mine = unit_workers(row.unit, host.workers)
                expected = 1 if host.gpus else host.expected
                workers = f"{len(mine)}/{expected if expected else '?'}"
                gpus = f"{sum(w.gpus for w in mine):g}/1" if host.gpus else "-"
                memory = (
                    f"{_bytes(sum(w.memory for w in mine))}/"
                    f"{_bytes(sum(w.memory_limit for w in mine))}"
                    if mine
                    else "-"
                )
                tasks = (
                    f"{sum(w.running for w in mine)}/{sum(w.processing for w in mine)}"
                    if mine
                    else "-"
                )
            else:
                answered = status.scheduler.answered
                workers = f"{len(status.scheduler.workers)}/{total} total" if answered else "-"
                gpus = memory = tasks = "-"
            _, at, instance = row.unit.partition("@")  # a GPU host's dask-worker@<i>
            rows.append(
                [
                    host.name,
                    f"{row.role}@{instance}" if at else row.role,
                    u.state,
                    _age(u.since, now) if u.active else "-",
                    "-" if u.restarts is None else str(u.restarts),
                    _runtime(u),
                    ",".join(map(str, row.ports)) or "-",
                    workers,
                    gpus,
                    memory,
                    tasks,
                ]
            )
    for w in status.strangers:
        rows.append(
            [
                "(" + w.host + ")",
                "worker",
                "not in inventory",
                *["-"] * 4,
                "1",
                f"{w.gpus:g}" if w.gpus else "-",
                "-",
                "-",
            ]
        )
    return rows


def status_frame(status: ClusterStatus, color: bool) -> str:
    """The table, notes and the one-line verdict of one status round."""
    lines = render_table(table_rows(status))
    lines += [f"note: this client runs {skew}" for skew in status.client_skew]
    if status.strangers:
        lines.append(
            f"note: {len(status.strangers)} registered worker(s) from hosts not in "
            f"{status.inventory}"
        )
    verdict = status.verdict
    if color:
        verdict = click.style(verdict, fg="green" if status.healthy else "red", bold=True)
    return "\n".join([*lines, verdict])
