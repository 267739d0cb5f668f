"""The commands that change hosts: ``apply``, ``upgrade``, ``destroy``, ``bootstrap``."""

from __future__ import annotations

import json
import sys

import click

from pydask_deploy import contract
from pydask_deploy.cli.common import reports_errors
from pydask_deploy.cli.render import ProgressPrinter, interruption, print_run, say, warn
from pydask_deploy.errors import Interrupted
from pydask_deploy.inventory import load_inventory

VERBOSE = click.option(
    "-v", "--verbose", is_flag=True, help="Also show each host's result of every task."
)


@click.command("apply")
@click.argument("inventory_file", metavar="INVENTORY")
@click.option("--check", is_flag=True, help="Show what would change; change nothing.")
@click.option("--diff", is_flag=True, help="Show the changes made to files and templates.")
@click.option("--limit", metavar="PATTERN", help="Only these hosts (an Ansible host pattern).")
@click.option(
    "--full",
    is_flag=True,
    help="Run every task on every host, also on hosts the SSH check finds in sync.",
)
@click.option(
    "--new-ca",
    is_flag=True,
    help="Re-key the cluster on purpose: go on even when the hosts carry another CA than "
    "the inventory's certificate directory (every certificate is re-issued, the units "
    "restart, clients need the new client files).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@VERBOSE
@reports_errors
def apply_command(
    inventory_file: str,
    check: bool,
    diff: bool,
    limit: str | None,
    full: bool,
    new_ca: bool,
    as_json: bool,
    verbose: bool,
) -> None:
    """Converge every host of INVENTORY into the Dask cluster it declares.

    Validates the inventory first (nothing is touched when it is wrong, exit 2), then runs
    the role with Ansible. Safe to run again: a converged cluster reports 0 changed.
    Hosts whose last apply recorded today's inputs, and whose unit files, config, TLS
    files, runtime and units are as that apply left them (one SSH round checks), are left
    out; --full runs them too. Exit 1 when a host failed or was unreachable; the others
    still converge.
    """
    from pydask_deploy.deploy.apply import apply_cluster
    from pydask_deploy.deploy.run import interrupted, interruptible

    inventory = load_inventory(inventory_file)
    mode = " (check mode: nothing will change)" if check else ""
    say(f"apply {inventory_file}: {len(inventory.hosts)} host(s){mode}")
    with interruptible():
        applied = apply_cluster(
            inventory,
            check=check,
            diff=diff,
            limit=limit,
            full=full,
            on_progress=ProgressPrinter(show_diff=diff, verbose=verbose),
            say=say,
            warn=warn,
            new_ca=new_ca,
        )
        signal = interrupted()
    result = applied.run
    if as_json:
        click.echo(json.dumps(applied.to_json(), indent=2))
    if result.interrupted or signal:
        again = f"pydask-deploy apply {inventory_file}"
        for line in interruption(result, again, contract.LAST_SITE_TASK, signal):
            say(line)
        sys.exit(Interrupted.exit_code)
    if not as_json:
        print_run(result)
        if result.in_sync:
            click.echo(f"in sync, left out (0 tasks run): {', '.join(result.in_sync)}")
    verb = "would change" if check else "changed"
    note = ""
    if result.in_sync:
        note = f" ({len(result.in_sync)} in sync, checked over SSH; --full runs every task)"
    elif full:
        note = " (--full: every host ran every task)"
    if result.succeeded:
        say(
            f"{len(result.hosts)} host(s) ok, {result.changed} task(s) {verb} "
            f"in {result.seconds:.1f} s{note}"
        )
        if not check:
            say(f"next: pydask-deploy verify {inventory_file}")
        return
    failed = ", ".join(h.name for h in result.failed_hosts)
    say(
        f"failed on {failed}; the other hosts converged. Fix the cause and run "
        f"`pydask-deploy apply {inventory_file}` again to finish."
    )
    sys.exit(1)


@click.command("upgrade")
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
@VERBOSE
@reports_errors
def upgrade_command(
    inventory_file: str,
    batch: str,
    assignments: tuple[str, ...],
    restart_scheduler: bool,
    as_json: bool,
    verbose: bool,
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
    from pydask_deploy.deploy.run import interruptible
    from pydask_deploy.inventory.edit import parse_setting

    settings = dict(parse_setting(a) for a in assignments)
    with interruptible():
        result = upgrade_module.rolling_upgrade(
            inventory_file,
            settings=settings,
            options=upgrade_module.UpgradeOptions(batch=batch, restart_scheduler=restart_scheduler),
            say=say,
            on_progress=ProgressPrinter(verbose=verbose),
        )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        staging = result.staging
        if staging.seconds:
            state = "failed" if staging.error else "staged"
            click.echo(f"\n{'STAGE':<6} {state:<9} {staging.seconds:>8.1f}  every host")
        click.echo(f"\n{'BATCH':<6} {'OUTCOME':<9} {'SECONDS':>8}  HOSTS")
        for b in result.batches:
            colour = "red" if b.outcome == "failed" else None
            line = f"{b.index:<6} {b.outcome:<9} {b.seconds:>8.1f}  {', '.join(b.hosts)}"
            click.secho(line, fg=colour)
        if result.pending:
            click.echo(f"{'-':<6} {'pending':<9} {'':>8}  {', '.join(result.pending)}")
        click.echo(f"scheduler host: {result.scheduler}")
    if result.ok:
        say(
            f"upgrade done in {result.seconds:.1f} s; the change is recorded in "
            f"{inventory_file}, so `pydask-deploy apply {inventory_file}` changes nothing"
        )
        return
    say(f"upgrade stopped: {result.error}")
    if result.pending:
        say(f"not restarted, still serving on the old runtime: {', '.join(result.pending)}")
    if result.interrupted:
        say("every worker serves, on the old runtime or the new one")
        say(f"run `{result.resume}` again to complete the job")
        sys.exit(Interrupted.exit_code)
    say(f"fix the cause, then resume with `{result.resume}`")
    sys.exit(1)


@click.command("destroy")
@click.argument("inventory_file", metavar="INVENTORY")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--remove-user", is_flag=True, help="Also remove the dask user and group.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@VERBOSE
@reports_errors
def destroy_command(
    inventory_file: str, yes: bool, remove_user: bool, as_json: bool, verbose: bool
) -> None:
    """Stop the cluster of INVENTORY and remove what apply installed on its hosts.

    Stops and disables the units and removes them, the runtimes, dask_config_dir (TLS files
    included) and dask_data_dir (spilled data included); with --remove-user the dask user
    and group too. The certificates beside the inventory are kept. A later `apply` starts
    clean. Asks first unless --yes (exit 2 without a terminal to ask on). Exit 1 when a host
    failed or was unreachable.
    """
    from pydask_deploy.deploy import destroy as destroy_module
    from pydask_deploy.deploy.run import interrupted, interruptible
    from pydask_deploy.errors import UsageError

    inventory = load_inventory(inventory_file)
    names = ", ".join(h.name for h in inventory.hosts)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"destroy removes the Dask cluster on {names}; pass --yes to confirm")
        click.confirm(
            f"Remove the Dask cluster (units, runtimes, config, data) from {names}?",
            abort=True,
            err=True,
        )
    say(f"destroy {inventory_file}: {len(inventory.hosts)} host(s)")
    with interruptible():
        result = destroy_module.destroy_cluster(
            inventory, ProgressPrinter(verbose=verbose), remove_user=remove_user
        )
        signal = interrupted()
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    if result.interrupted or signal:
        again = f"pydask-deploy destroy {inventory_file} --yes"
        for line in interruption(result, again, None, signal):
            say(line)
        sys.exit(Interrupted.exit_code)
    if not as_json:
        print_run(result)
    if not result.succeeded:
        failed = ", ".join(h.name for h in result.failed_hosts)
        say(f"failed on {failed}; run `pydask-deploy destroy {inventory_file} --yes` again")
        sys.exit(1)
    say(
        f"{len(result.hosts)} host(s) clean, {result.changed} task(s) changed "
        f"in {result.seconds:.1f} s; `pydask-deploy apply {inventory_file}` starts afresh"
    )


@click.command("bootstrap")
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

    inventory = load_inventory(inventory_file)
    key = bootstrap_module.find_deploy_key(inventory, key_file)  # exit 2 before any prompt
    password = click.prompt("SSH password", hide_input=True, err=True) if ask_pass else None
    say(f"bootstrap {inventory_file}: {len(inventory.hosts)} host(s), key {key.private}")
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
        say(f"not ready: {', '.join(failed)}; fix what the table says, then run bootstrap again")
        sys.exit(1)
    say(f"{len(results)} host(s) ready; next: `pydask-deploy apply {inventory_file}`")
