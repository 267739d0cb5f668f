"""The ``pydask-deploy`` command line: parse, call one library function, render.

Known errors (``DeployError``) become one clean line on stderr and their exit code
(2 for bad usage or input, 1 for failures); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from pydask_deploy import __version__
from pydask_deploy import lab as lab_module
from pydask_deploy.cli.common import reports_errors
from pydask_deploy.cli.inventory import inventory
from pydask_deploy.deploy import run as run_module
from pydask_deploy.inventory import load as inventory_module
from pydask_deploy.observe import verify as verify_module


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pydask-deploy")
def main() -> None:
    """Deploy a long-lived Dask cluster on machines you already have, over SSH.

    Declare the cluster in an Ansible inventory, then `apply` converges every host.
    Try it locally first: `pydask-deploy lab up --hosts 3` boots test hosts and writes
    inventory/lab.yml.
    """


# --------------------------------------------------------------------------- lab


def _say(line: str) -> None:
    click.echo(f"==> {line}", err=True)


@main.group()
def lab() -> None:
    """Real local test hosts (systemd + sshd in systemd-nspawn) to try pydask-deploy on.

    Needs root on Linux. The hosts sit on a private bridge and reach nothing but this
    machine, like an air-gapped cluster. Move the lab with PYDASK_LAB_DIR, PYDASK_LAB_CACHE,
    PYDASK_LAB_BRIDGE and PYDASK_LAB_SUBNET.
    """


@lab.command("up")
@click.option("--hosts", "count", default=3, show_default=True, help="How many hosts to boot.")
@click.option("--docker", is_flag=True, help="Hosts can run Docker; serve a local registry.")
@click.option(
    "-o",
    "--inventory",
    "inventory_path",
    default="inventory/lab.yml",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the lab's Ansible inventory.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead.")
@reports_errors
def lab_up_command(count: int, docker: bool, inventory_path: Path, as_json: bool) -> None:
    """Boot N lab hosts and write their inventory (the first host is the scheduler)."""
    config = lab_module.LabConfig.from_env()
    result = lab_module.lab_up(count, docker, inventory_path, config, _say)
    if as_json:
        click.echo(json.dumps(_lab_json(result.hosts, inventory_path, result.registry)))
        return
    _print_hosts(result.hosts)
    if result.registry:
        click.echo(f"Docker registry for the hosts: {result.registry}")
    click.echo(
        f"\nInventory written to {inventory_path}. Next: pydask-deploy apply {inventory_path}"
    )


@lab.command("down")
@reports_errors
def lab_down_command() -> None:
    """Stop every lab host and remove its mounts, cgroups and bridge (keeps the cached rootfs)."""
    stopped = lab_module.lab_down(lab_module.LabConfig.from_env(), _say)
    click.echo(f"lab down: {stopped} host(s) stopped" if stopped else "no lab is up; nothing to do")


@lab.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead.")
@reports_errors
def lab_status_command(as_json: bool) -> None:
    """List the lab's hosts and whether each is running."""
    hosts = lab_module.lab_status(lab_module.LabConfig.from_env())
    if as_json:
        click.echo(json.dumps(_lab_json(hosts, None, None)))
    elif not hosts:
        click.echo("no lab is up; start one with `pydask-deploy lab up`")
    else:
        _print_hosts(hosts)
    if any(h.state not in ("running", "degraded") for h in hosts):
        sys.exit(1)


@lab.command("ssh", context_settings={"ignore_unknown_options": True})
@click.argument("host")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@reports_errors
def lab_ssh_command(host: str, command: tuple[str, ...]) -> None:
    """Open a root shell on lab HOST (h2, 2 or its address), or run COMMAND there."""
    argv = lab_module.ssh_command(lab_module.LabConfig.from_env(), host, command)
    os.execvp(argv[0], argv)


def _print_hosts(hosts: Sequence[lab_module.LabHost]) -> None:
    click.echo(f"{'HOST':<6} {'ADDRESS':<15} {'STATE':<12} BOOT")
    for h in hosts:
        boot = f"{h.boot_seconds:.1f} s" if h.boot_seconds is not None else "-"
        click.echo(f"{h.name:<6} {h.address:<15} {h.state:<12} {boot}")


def _lab_json(
    hosts: Sequence[lab_module.LabHost], inventory: Path | None, registry: str | None
) -> dict[str, Any]:
    return {
        "hosts": [
            {"name": h.name, "address": h.address, "state": h.state, "boot_seconds": h.boot_seconds}
            for h in hosts
        ],
        "inventory": str(inventory) if inventory else None,
        "registry": registry,
    }


# --------------------------------------------------------------------------- check


@main.command("check")
@click.argument("inventory_file", metavar="INVENTORY")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead.")
@reports_errors
def check_command(inventory_file: str, as_json: bool) -> None:
    """Validate INVENTORY without touching any host (no SSH, no network).

    Reports every problem at once, each naming the file, the key and the value; exits 2
    when there is one.
    """
    import json as json_module

    from pydask_deploy.errors import InventoryError
    from pydask_deploy.inventory import Host, load_inventory

    def host_json(host: Host) -> dict[str, object]:
        return {"name": host.name, "address": host.address, "port": host.port, "user": host.user}

    try:
        inventory = load_inventory(inventory_file)
    except InventoryError as exc:
        if not as_json:
            raise
        failed = {"ok": False, "errors": str(exc).splitlines(), "scheduler": None, "workers": []}
        click.echo(json_module.dumps(failed, indent=2))
        sys.exit(exc.exit_code)
    runtimes = sorted({str(inventory.dask_vars(h).get("dask_runtime")) for h in inventory.hosts})
    if as_json:
        result = {
            "ok": True,
            "errors": [],
            "scheduler": host_json(inventory.scheduler),
            "workers": [host_json(w) for w in inventory.workers],
            "runtime": runtimes,
        }
        click.echo(json_module.dumps(result, indent=2))
        return
    scheduler = inventory.scheduler
    names = [w.name for w in inventory.workers]
    shown = ", ".join(names) if len(names) <= 4 else f"{names[0]} ... {names[-1]}"
    click.echo(f"{inventory_file}: ok")
    click.echo(f"  scheduler: {scheduler.name} ({scheduler.address}:{scheduler.port})")
    click.echo(f"  workers:   {len(names)}" + (f" ({shown})" if names else ""))
    click.echo(f"  runtime:   {', '.join(runtimes)}")


# --------------------------------------------------------------------------- apply


class _ProgressPrinter:
    """Live progress on stderr: each task as it starts, and each host that changed or failed."""

    def __init__(self, show_diff: bool) -> None:
        self.show_diff = show_diff
        self.tasks = 0

    def __call__(self, step: run_module.Progress) -> None:
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


def _print_run(result: run_module.RunResult) -> None:
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


@main.command("apply")
@click.argument("inventory_file", metavar="INVENTORY")
@click.option("--check", is_flag=True, help="Show what would change; change nothing.")
@click.option("--diff", is_flag=True, help="Show the changes made to files and templates.")
@click.option("--limit", metavar="PATTERN", help="Only these hosts (an Ansible host pattern).")
@click.option(
    "--full",
    is_flag=True,
    help="Run every task on every host, also on hosts the SSH check finds in sync.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@reports_errors
def apply_command(
    inventory_file: str, check: bool, diff: bool, limit: str | None, full: bool, as_json: bool
) -> None:
    """Converge every host of INVENTORY into the Dask cluster it declares.

    Validates the inventory first (nothing is touched when it is wrong, exit 2), then runs
    the roles with Ansible. Safe to run again: a converged cluster reports 0 changed.
    Hosts whose last apply recorded today's inputs, and whose unit files, config, TLS
    files, runtime and units are as that apply left them (one SSH round checks), are left
    out; --full runs them too. Exit 1 when a host failed or was unreachable; the others
    still converge.
    """
    from pydask_deploy.deploy import insync
    from pydask_deploy.deploy import pki as pki_module
    from pydask_deploy.observe import connection

    inventory = inventory_module.load_inventory(inventory_file)
    mode = " (check mode: nothing will change)" if check else ""
    _say(f"apply {inventory_file}: {len(inventory.hosts)} host(s){mode}")
    warnings: list[str] = []
    pki = None
    if connection.tls_enabled(inventory):
        pki = pki_module.ensure_pki(inventory, write=not check)
        _say(f"tls: {pki.summary(check)}")
        warnings += pki.warnings
    else:
        warnings.append(
            f"dask_tls is false: anyone who reaches {connection.cluster_address(inventory)} "
            "can run code as the dask user on every worker; remove `dask_tls: false` to "
            "turn mutual TLS back on"
        )
    for warning in warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    result, fast = insync.converge(
        inventory,
        check=check,
        diff=diff,
        limit=limit,
        full=full,
        pki=pki,
        on_progress=_ProgressPrinter(show_diff=diff),
        say=_say,
    )
    if as_json:
        document = result.to_json()
        document["warnings"] = warnings
        document["certificates_issued"] = [
            {"name": i.name, "reason": i.reason} for i in (pki.issued if pki else ())
        ]
        document["sync_check"] = {
            "checked": fast.checked,
            "seconds": round(fast.seconds, 2),
            "ran": dict(fast.run or {}),
        }
        click.echo(json.dumps(document, indent=2))
    else:
        _print_run(result)
        if result.in_sync:
            click.echo(f"in sync, left out (0 tasks run): {', '.join(result.in_sync)}")
    verb = "would change" if check else "changed"
    note = ""
    if result.in_sync:
        note = f" ({len(result.in_sync)} in sync, checked over SSH; --full runs every task)"
    elif full:
        note = " (--full: every host ran every task)"
    if result.succeeded:
        _say(
            f"{len(result.hosts)} host(s) ok, {result.changed} task(s) {verb} "
            f"in {result.seconds:.1f} s{note}"
        )
        if not check:
            _say(f"next: pydask-deploy verify {inventory_file}")
        return
    failed = ", ".join(h.name for h in result.failed_hosts)
    _say(
        f"failed on {failed}; the other hosts converged. Fix the cause and run "
        f"`pydask-deploy apply {inventory_file}` again to finish."
    )
    sys.exit(1)


# --------------------------------------------------------------------------- verify


@main.command("verify")
@click.argument("inventory_file", metavar="INVENTORY")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@reports_errors
def verify_command(inventory_file: str, as_json: bool) -> None:
    """Prove the cluster of INVENTORY works (read-only checks; exit 0 all passed, 1 not).

    On every host: its dask units are running and enabled. On the scheduler: ports for the
    scheduler and the dashboard are listening and /health answers. From here: each worker
    host has its expected number of workers registered with the scheduler.
    """
    inventory = inventory_module.load_inventory(inventory_file)
    report = verify_module.verify_cluster(inventory)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for c in report.checks:
            mark = click.style("PASS", fg="green") if c.passed else click.style("FAIL", fg="red")
            click.echo(f"{mark}  {c.host:<16} {c.name:<42} {c.detail}")
        failed = sum(not c.passed for c in report.checks)
        summary = f"{len(report.checks) - failed} passed, {failed} failed"
        click.secho(summary, fg="green" if not failed else "red", bold=True)
    if not report.passed:
        sys.exit(1)


# --------------------------------------------------------------------------- status


def _status_frame(status: Any, color: bool) -> str:
    """The table, notes and the one-line verdict of one status round."""
    from pydask_deploy.observe import status as status_module

    lines = status_module.render_table(status_module.table_rows(status))
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


@main.command("status")
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

    inventory = inventory_module.load_inventory(inventory_file)
    tty = sys.stdout.isatty()
    codes: list[int] = []
    watch = interval if watching else None

    def show(status: status_module.ClusterStatus) -> None:
        codes.append(0 if status.healthy else 1)
        if as_json:
            click.echo(json.dumps(status.to_json(), indent=None if watch else 2))
            return
        frame = _status_frame(status, color=tty)
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


# --------------------------------------------------------------------------- logs

_HOST_COLOURS = ("cyan", "magenta", "yellow", "blue", "green", "bright_cyan", "bright_magenta")


@main.command("logs")
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

    inventory = inventory_module.load_inventory(inventory_file)
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


# --------------------------------------------------------------------------- client-config


@main.command("client-config")
@click.argument("inventory_file", metavar="INVENTORY")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@reports_errors
def client_config_command(inventory_file: str, as_json: bool) -> None:
    """Show how to connect a Dask client to the cluster of INVENTORY.

    The scheduler's address and the client certificate, CA and key that `apply` made
    (paths on this machine). With --json: `address`, `tls_ca_file`, `tls_client_cert`,
    `tls_client_key` and `require_encryption`, as distributed.Security takes them, and the
    `dashboard` URL. Exit 1 when `apply` has not made the certificates yet.
    """
    from pydask_deploy.observe import connection

    inventory = inventory_module.load_inventory(inventory_file)
    config = connection.client_config(inventory)
    if as_json:
        click.echo(json.dumps(config.to_json(), indent=2))
        return
    port = config.dashboard.rsplit(":", 1)[-1]
    tunnel = connection.ssh_forward_command(inventory, int(port), config.dashboard)
    if remote_jump := connection.jump_host(inventory):
        dask_port = config.address.rsplit(":", 1)[-1]
        click.echo(f"# the hosts are reached through {remote_jump}: forward the scheduler first")
        forward = connection.ssh_forward_command(inventory, int(dask_port), config.address)
        click.echo(f"#   {forward}")
        click.echo(f"# then connect to {config.address.split('://')[0]}://localhost:{dask_port}")
    if not config.tls:
        click.echo(f"# {inventory_file} runs without TLS (dask_tls: false)")
        click.echo("from distributed import Client")
        click.echo(f"client = Client({config.address!r})")
    else:
        click.echo(f"# dask config, e.g. ~/.config/dask/{Path(inventory_file).stem}.yaml")
        click.echo("distributed:")
        click.echo("  comm:")
        click.echo("    require-encryption: true")
        click.echo("    tls:")
        click.echo(f"      ca-file: {config.tls_ca_file}")
        click.echo("      client:")
        click.echo(f"        cert: {config.tls_client_cert}")
        click.echo(f"        key: {config.tls_client_key}")
        click.echo("")
        click.echo("# or in Python, without the config file:")
        click.echo("from distributed import Client, Security")
        click.echo(
            f"client = Client({config.address!r}, security=Security("
            f"tls_ca_file={str(config.tls_ca_file)!r}, "
            f"tls_client_cert={str(config.tls_client_cert)!r}, "
            f"tls_client_key={str(config.tls_client_key)!r}, require_encryption=True))"
        )
    click.echo("")
    click.echo(f"# dashboard: {config.dashboard}/status; from another machine, forward it:")
    click.echo(f"#   {tunnel}   then open http://localhost:{port}/status")


# --------------------------------------------------------------------------- upgrade


@main.command("upgrade")
@click.argument("inventory_file", metavar="INVENTORY")
@click.option(
    "--batch",
    default="25%",
    show_default=True,
    metavar="N|N%",
    help="Worker hosts per batch: a count or a percentage of the workers (at least 1; a "
    "percentage never takes every worker at once).",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Record a dask_* variable in the inventory's all.vars first (VALUE is YAML, e.g. "
    "dask_python_packages='[scikit-learn, six]'). Repeatable.",
)
@click.option(
    "--restart-scheduler",
    is_flag=True,
    help="Allow a change of dask_version: stage everywhere, then restart the scheduler and "
    "every worker together (results held in memory are lost).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@reports_errors
def upgrade_command(
    inventory_file: str,
    batch: str,
    assignments: tuple[str, ...],
    restart_scheduler: bool,
    as_json: bool,
) -> None:
    """Roll a change of runtime or worker options through the workers of INVENTORY.

    Batch by batch: stage the new runtime while the old one serves, retire the batch's
    workers through the scheduler (their data moves to the other workers), let the units
    restart into the new runtime, wait until they are registered and compute. Stops at the
    first failing batch (exit 1; the remaining workers are untouched and serving); running
    the same command again resumes. Exit 2 for bad input or a dask_version change without
    --restart-scheduler; nothing was changed then, the inventory file included.
    """
    from pydask_deploy.deploy import upgrade as upgrade_module
    from pydask_deploy.inventory.edit import parse_setting

    settings = dict(parse_setting(a) for a in assignments)
    result = upgrade_module.rolling_upgrade(
        inventory_file,
        settings=settings,
        batch=batch,
        restart_scheduler=restart_scheduler,
        say=_say,
        on_progress=_ProgressPrinter(show_diff=False),
    )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(f"\n{'BATCH':<6} {'OUTCOME':<9} {'SECONDS':>8}  HOSTS")
        for b in result.batches:
            colour = "red" if b.outcome == "failed" else None
            line = f"{b.index:<6} {b.outcome:<9} {b.seconds:>8.1f}  {', '.join(b.hosts)}"
            click.secho(line, fg=colour)
        if result.pending:
            click.echo(f"{'-':<6} {'pending':<9} {'':>8}  {', '.join(result.pending)}")
        click.echo(f"scheduler host: {result.scheduler}")
    if result.ok:
        _say(
            f"upgrade done in {result.seconds:.1f} s; the change is recorded in "
            f"{inventory_file}, so `pydask-deploy apply {inventory_file}` changes nothing"
        )
        return
    _say(f"upgrade stopped: {result.error}")
    if result.pending:
        _say(f"not touched, still serving on the old runtime: {', '.join(result.pending)}")
    _say(f"fix the cause, then resume with `{result.resume}`")
    sys.exit(1)


# --------------------------------------------------------------------------- destroy


@main.command("destroy")
@click.argument("inventory_file", metavar="INVENTORY")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--remove-user", is_flag=True, help="Also remove the dask user and group.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@reports_errors
def destroy_command(inventory_file: str, yes: bool, remove_user: bool, as_json: bool) -> None:
    """Stop the cluster of INVENTORY and remove what apply installed on its hosts.

    Stops and disables the units and removes them, the runtimes, dask_config_dir (TLS files
    included) and dask_data_dir (spilled data included); with --remove-user the dask user
    and group too. The certificates beside the inventory are kept. A later `apply` starts
    clean. Asks first unless --yes (exit 2 without a terminal to ask on). Exit 1 when a host
    failed or was unreachable.
    """
    from pydask_deploy.deploy import destroy as destroy_module
    from pydask_deploy.errors import UsageError

    inventory = inventory_module.load_inventory(inventory_file)
    names = ", ".join(h.name for h in inventory.hosts)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"destroy removes the Dask cluster on {names}; pass --yes to confirm")
        click.confirm(
            f"Remove the Dask cluster (units, runtimes, config, data) from {names}?",
            abort=True,
            err=True,
        )
    _say(f"destroy {inventory_file}: {len(inventory.hosts)} host(s)")
    result = destroy_module.destroy_cluster(
        inventory, _ProgressPrinter(show_diff=False), remove_user=remove_user
    )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        _print_run(result)
    if not result.succeeded:
        failed = ", ".join(h.name for h in result.failed_hosts)
        _say(f"failed on {failed}; run `pydask-deploy destroy {inventory_file} --yes` again")
        sys.exit(1)
    _say(
        f"{len(result.hosts)} host(s) clean, {result.changed} task(s) changed "
        f"in {result.seconds:.1f} s; `pydask-deploy apply {inventory_file}` starts afresh"
    )


# --------------------------------------------------------------------------- bootstrap


@main.command("bootstrap")
@click.argument("inventory_file", metavar="INVENTORY")
@click.option(
    "--ask-pass",
    "-k",
    is_flag=True,
    help="Ask for the SSH password (one for every host, as `ansible -k`); without it, log "
    "in with keys to check the hosts only.",
)
@click.option(
    "--key",
    "key_file",
    metavar="FILE",
    help="The private key to install (its .pub is installed). Default: the inventory's "
    "ansible_ssh_private_key_file, else ~/.ssh/id_ed25519, id_ecdsa or id_rsa.",
)
@click.option("--limit", "limit", multiple=True, metavar="HOST", help="Only this host (repeat).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@reports_errors
def bootstrap_command(
    inventory_file: str, ask_pass: bool, key_file: str | None, limit: tuple[str, ...],
    as_json: bool,
) -> None:  # fmt: skip
    """First contact with the hosts of INVENTORY: install the deploy key, check sudo, python3.

    Logs in as each host's ansible_user with the password (through the jump host when the
    inventory has one), adds the public key to that user's ~/.ssh/authorized_keys unless it
    is there, checks passwordless sudo (not needed for root) and python3, then logs in with
    the key alone to prove it. Running it again changes nothing. Exit 1 when a host is not
    ready (the table says why), 2 for bad input.
    """
    from pydask_deploy.deploy import bootstrap as bootstrap_module

    inventory = inventory_module.load_inventory(inventory_file)
    key = bootstrap_module.find_deploy_key(inventory, key_file)  # exit 2 before any prompt
    password = click.prompt("SSH password", hide_input=True, err=True) if ask_pass else None
    _say(f"bootstrap {inventory_file}: {len(inventory.hosts)} host(s), key {key.private}")
    results = bootstrap_module.bootstrap_hosts(inventory, password, str(key.private), limit)
    if as_json:
        doc = {
            "inventory": inventory_file,
            "key": str(key.private),
            "ok": all(r.ok for r in results),
        }
        click.echo(json.dumps({**doc, "hosts": [r.to_json() for r in results]}, indent=2))
    else:
        rows = [["host", "user", "key", "sudo", "python3", "key login", "result"]]
        for r in results:
            login = "ok" if r.key_login else "-"
            rows.append(
                [r.host, r.user, r.key or "-", r.sudo or "-", r.python or "-", login,
                 "ready" if r.ok else f"NOT READY: {r.error}"]
            )  # fmt: skip
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            click.echo(
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
            )
    failed = [r.host for r in results if not r.ok]
    if failed:
        _say(f"not ready: {', '.join(failed)}; fix what the table says, then run bootstrap again")
        sys.exit(1)
    _say(f"{len(results)} host(s) ready; next: `pydask-deploy apply {inventory_file}`")


main.add_command(inventory)
