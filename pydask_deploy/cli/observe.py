"""The commands that read the cluster: ``verify``, ``status``, ``logs``."""

from __future__ import annotations

import json
import sys

import click

from pydask_deploy.cli.common import reports_errors
from pydask_deploy.cli.render import status_frame, warn
from pydask_deploy.inventory import load_inventory


@click.command("verify")
@click.argument("inventory_file", metavar="INVENTORY")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@reports_errors
def verify_command(inventory_file: str, as_json: bool) -> None:
    """Prove the cluster of INVENTORY works (read-only checks; exit 0 all passed, 1 not).

    On every host: its dask units are running and enabled. On the scheduler: ports for the
    scheduler and the dashboard are listening and /health answers. From here: each worker
    host has its expected number of workers registered with the scheduler.
    """
    inventory = load_inventory(inventory_file)
    from pydask_deploy.observe.verify import verify_cluster

    report = verify_cluster(inventory)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for c in report.checks:
            mark = click.style("PASS", fg="green") if c.passed else click.style("FAIL", fg="red")
            click.echo(f"{mark}  {c.host:<16} {c.name:<42} {c.detail}")
        if report.versions:
            shown = ", ".join(f"{name} {v}" for name, v in report.versions.items())
            click.echo(f"the cluster runs {shown}")
        failed = sum(not c.passed for c in report.checks)
        summary = f"{len(report.checks) - failed} passed, {failed} failed"
        click.secho(summary, fg="green" if not failed else "red", bold=True)
    for warning in report.warnings:
        warn(warning)
    if not report.passed:
        sys.exit(1)


@click.command("status")
@click.argument("inventory_file", metavar="INVENTORY")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option(
    "--watch",
    "watching",
    is_flag=True,
    help="Redraw until Ctrl-C; exit with the last round's code. "
    "With --json, one JSON document a line per round.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between rounds with --watch.",
)
@reports_errors
def status_command(inventory_file: str, as_json: bool, watching: bool, interval: float) -> None:
    """Show the cluster of INVENTORY at a glance (exit 0 healthy, 1 not).

    One SSH round to every host (unit state, since when, restarts, runtime, ports) and one
    query to the scheduler (workers registered per host, memory, tasks, version skew), both
    at once. Healthy: the scheduler runs and answers, each worker host has its
    `dask_worker_nworkers` workers registered, and scheduler and workers run the same versions.
    """
    import contextlib
    import time

    from pydask_deploy.observe import status as status_module

    inventory = load_inventory(inventory_file)
    tty = sys.stdout.isatty()
    codes: list[int] = []
    watch = interval if watching else None

    def show(status: status_module.ClusterStatus) -> None:
        codes.append(0 if status.healthy else 1)
        if as_json:
            click.echo(json.dumps(status.to_json(), indent=None if watch else 2))
            return
        frame = status_frame(status, color=tty)
        if watch is not None:
            stamp = time.strftime("%H:%M:%S")
            frame = f"every {watch:g} s: pydask-deploy status {inventory_file}  {stamp}\n\n{frame}"
            if tty:  # home the cursor and clear the screen, then draw in one write
                frame = "\x1b[H\x1b[2J" + frame
        click.echo(frame)
        sys.stdout.flush()

    if watch is None:
        show(status_module.collect_status(inventory))
    else:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends a watch; not an error
            status_module.watch_status(inventory, watch, show)
    sys.exit(codes[-1] if codes else 1)


_HOST_COLOURS = ("cyan", "magenta", "yellow", "blue", "green", "bright_cyan", "bright_magenta")


@click.command("logs")
@click.argument("inventory_file", metavar="INVENTORY")
@click.argument("hosts", nargs=-1, metavar="[HOST ...]")
@click.option("-f", "--follow", is_flag=True, help="Keep showing new lines as they arrive.")
@click.option(
    "--since",
    metavar="WHEN",
    help="Only lines since WHEN, as journalctl reads it ('2026-01-31 12:00', '-1h', 'today').",
)
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(min=0),
    default=None,
    help="Show the last LINES lines (default: 200 without --since; with --follow, 10 a host).",
)
@reports_errors
def logs_command(
    inventory_file: str, hosts: tuple[str, ...], follow: bool, since: str | None, lines: int | None
) -> None:
    """Show the journal of the dask units from all hosts of INVENTORY, or the named HOSTs.

    Lines from every host are merged in time order, each prefixed with its host name.
    Exit 1 when a host could not be read (named on stderr); 2 for an unknown host name.
    """
    import contextlib

    from pydask_deploy.observe import logs as logs_module

    inventory = load_inventory(inventory_file)
    chosen = logs_module.select_hosts(inventory, hosts)
    width = max(len(h.name) for h in chosen)
    colour = {h.name: _HOST_COLOURS[i % len(_HOST_COLOURS)] for i, h in enumerate(chosen)}

    def emit(line: logs_module.LogLine) -> None:
        click.echo(f"{click.style(line.host.ljust(width), fg=colour[line.host])} | {line.text}")

    failed: list[str] = []

    def report(host: str, reason: str) -> None:
        failed.append(host)
        click.secho(f"{host}: {reason}", fg="red", err=True)

    if follow:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends a follow; not an error
            logs_module.follow_logs(inventory, chosen, emit, report, since=since, lines=lines)
    else:
        result = logs_module.read_logs(inventory, chosen, since=since, lines=lines)
        for host, note in result.notes:
            click.echo(f"{host}: {note}", err=True)
        for host, reason in result.failures.items():
            report(host, reason)
        for line in result.lines:
            emit(line)
    if failed:
        sys.exit(1)
