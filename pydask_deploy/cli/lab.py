"""``pydask-deploy lab ...``: real local test hosts to try the tool on (``pydask_deploy.lab``)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from pydask_deploy import lab as lab_module
from pydask_deploy.cli.common import reports_errors
from pydask_deploy.cli.render import say


@click.group("lab")
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
    "--release",
    "release_specs",
    multiple=True,
    metavar="[HOST=]NAME",
    help=f"Debian release of every host (NAME) or of one (HOST=NAME, e.g. h3=trixie); "
    f"repeatable. Default {lab_module.SUITE}; known: {', '.join(lab_module.RELEASES)}.",
)
@click.option(
    "--share",
    "share_specs",
    multiple=True,
    metavar="DIR[:MOUNTPOINT]",
    help="Bind-mount DIR of this machine into every host at MOUNTPOINT (default: the same "
    "path), as an NFS mount would be; repeatable.",
)
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
def lab_up_command(
    count: int,
    docker: bool,
    release_specs: tuple[str, ...],
    share_specs: tuple[str, ...],
    inventory_path: Path,
    as_json: bool,
) -> None:
    """Boot N lab hosts and write their inventory (the first host is the scheduler)."""
    config = lab_module.LabConfig.from_env()
    releases = lab_module.host_releases(count, release_specs) if count >= 1 else None
    shares = [lab_module.parse_share(spec) for spec in share_specs]
    result = lab_module.lab_up(count, docker, inventory_path, config, say, releases, shares)
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
    config = lab_module.LabConfig.from_env()
    leftovers = lab_module.read_lab(config) is not None or lab_module.has_leftovers(config)
    stopped = lab_module.lab_down(config, say)
    if stopped:
        click.echo(f"lab down: {stopped} host(s) stopped")
    elif leftovers:
        click.echo("no lab host was running; removed what a lab left behind")
    else:
        click.echo("no lab is up; nothing to do")


@lab.command("reboot")
@click.argument("hosts", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead.")
@reports_errors
def lab_reboot_command(hosts: tuple[str, ...], as_json: bool) -> None:
    """Reboot lab HOSTS (h2, 2 or an address) on their own disks, all at once, and wait.

    Each host's systemd shuts down in order, then the host boots again with the same files,
    address and host key. Naming every host is a power cycle of the whole lab. Exit 1 when
    a host did not come back.
    """
    reboots = lab_module.lab_reboot(lab_module.LabConfig.from_env(), hosts, say)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "hosts": [
                        {
                            "name": r.host.name,
                            "address": r.host.address,
                            "state": r.host.state,
                            "seconds": round(r.seconds, 2),
                            "down_seconds": round(r.down_seconds, 2),
                            "boot_seconds": round(r.boot_seconds, 2),
                        }
                        for r in reboots
                    ]
                }
            )
        )
    else:
        click.echo(f"{'HOST':<6} {'ADDRESS':<15} {'STATE':<12} REBOOT")
        for r in reboots:
            click.echo(
                f"{r.host.name:<6} {r.host.address:<15} {r.host.state:<12} {r.seconds:.1f} s "
                f"(down {r.down_seconds:.1f} s, boot {r.boot_seconds:.1f} s)"
            )
    if not all(r.back for r in reboots):
        sys.exit(1)


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
    click.echo(f"{'HOST':<6} {'ADDRESS':<15} {'RELEASE':<9} {'STATE':<12} BOOT")
    for h in hosts:
        boot = f"{h.boot_seconds:.1f} s" if h.boot_seconds is not None else "-"
        click.echo(f"{h.name:<6} {h.address:<15} {h.release:<9} {h.state:<12} {boot}")


def _lab_json(
    hosts: Sequence[lab_module.LabHost], inventory: Path | None, registry: str | None
) -> dict[str, Any]:
    return {
        "hosts": [
            {
                "name": h.name,
                "address": h.address,
                "release": h.release,
                "state": h.state,
                "boot_seconds": h.boot_seconds,
            }
            for h in hosts
        ],
        "inventory": str(inventory) if inventory else None,
        "registry": registry,
    }
