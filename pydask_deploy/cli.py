"""The ``pydask-deploy`` command line: parse, call one library function, render.

Known errors (``DeployError``) become one clean line on stderr and their exit code
(2 for bad usage or input, 1 for failures); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from pydask_deploy import __version__
from pydask_deploy import inventory as inventory_module
from pydask_deploy import lab as lab_module
from pydask_deploy import plan as plan_module
from pydask_deploy import run as run_module
from pydask_deploy import verify as verify_module
from pydask_deploy.errors import DeployError

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(func: F) -> F:
    """Turn a ``DeployError`` raised by a command into one line on stderr and its exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DeployError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@reports_errors
def apply_command(
    inventory_file: str, check: bool, diff: bool, limit: str | None, as_json: bool
) -> None:
    """Converge every host of INVENTORY into the Dask cluster it declares.

    Validates the inventory first (nothing is touched when it is wrong, exit 2), then runs
    the roles with Ansible. Safe to run again: a converged cluster reports 0 changed.
    Exit 1 when a host failed or was unreachable; the others still converge.
    """
    inventory = inventory_module.load_inventory(inventory_file)
    plan = plan_module.plan_apply(inventory, check=check, diff=diff, limit=limit)
    mode = " (check mode: nothing will change)" if check else ""
    _say(f"apply {inventory_file}: {len(inventory.hosts)} host(s){mode}")
    result = run_module.run_playbook(plan, _ProgressPrinter(show_diff=diff))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        _print_run(result)
    verb = "would change" if check else "changed"
    if result.succeeded:
        _say(
            f"{len(result.hosts)} host(s) ok, {result.changed} task(s) {verb} "
            f"in {result.seconds:.1f} s"
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
