"""How the commands draw what the library returns: progress lines, tables, verdicts.

Library functions return values; everything a person reads on a terminal is made here.
Progress goes to stderr (stdout may carry ``--json``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

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
    """Live progress on stderr: each task as it starts, and each host that changed or failed."""

    def __init__(self, show_diff: bool = False) -> None:
        self.show_diff = show_diff
        self.tasks = 0

    def __call__(self, step: Progress) -> None:
        if step.kind == "play":
            click.secho(f"\n{step.task}", bold=True, err=True)
        elif step.kind == "task":
            self.tasks += 1
            click.echo(f"  [{self.tasks:>2}] {step.task}", err=True)
        elif step.kind == "changed":
            click.secho(f"         {step.host}: changed", fg="yellow", err=True)
        elif step.kind in ("failed", "unreachable"):
            click.secho(f"         {step.host}: {step.kind}: {step.message}", fg="red", err=True)
        if self.show_diff and step.diff:
            click.echo(step.diff, err=True)


def print_run(result: RunResult) -> None:
    """The per-host table at the end of a run, then each failed host's errors."""
    click.echo(f"\n{'HOST':<20} {'OK':>4} {'CHANGED':>8} {'FAILED':>7} {'UNREACHABLE':>12}")
    for h in result.hosts:
        colour = None if h.succeeded else "red"
        click.secho(
            f"{h.name:<20} {h.ok:>4} {h.changed:>8} {h.failed:>7} {h.unreachable:>12}",
            fg=colour,
        )
    for h in result.failed_hosts:
        for error in h.errors or ("failed",):
            click.secho(f"{h.name}: {error}", fg="red")


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
