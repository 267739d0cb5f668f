"""The ``pydask-deploy`` command line: parse, call one library function, render.

Known errors (``DeployError``) become one clean line on stderr and their exit code
(2 for bad usage or input, 1 for failures); anything else is a bug and keeps its traceback.
Each command group lives in its own module (``lab``, ``deploy``, ``observe``, ``inventory``);
drawing is in ``render``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pydask_deploy import __version__
from pydask_deploy.cli.common import reports_errors
from pydask_deploy.cli.deploy import (
    apply_command,
    bootstrap_command,
    destroy_command,
    upgrade_command,
)
from pydask_deploy.cli.inventory import inventory
from pydask_deploy.cli.lab import lab
from pydask_deploy.cli.observe import logs_command, status_command, verify_command
from pydask_deploy.inventory import load_inventory


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pydask-deploy")
def main() -> None:
    """Deploy a long-lived Dask cluster on machines you already have, over SSH.

    Declare the cluster in an Ansible inventory, then `apply` converges every host.
    Try it locally first: `pydask-deploy lab up --hosts 3` boots test hosts and writes
    inventory/lab.yml.
    """


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

    inventory = load_inventory(inventory_file)
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


# In the order `pydask-deploy --help` lists them (click sorts them by name).
for _command in (
    lab,
    inventory,
    apply_command,
    verify_command,
    status_command,
    logs_command,
    upgrade_command,
    destroy_command,
    bootstrap_command,
):
    main.add_command(_command)
