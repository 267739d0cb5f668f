"""``pydask-deploy inventory ...``: write an inventory from what users have.

Thin commands: parse, call one generator, write with ``generate.render.write_inventory``.
Registered on ``main`` at the end of ``pydask_deploy.cli``.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pydask_deploy.cli_cloud import CLOUD_COMMANDS
from pydask_deploy.cli_errors import reports_errors

if TYPE_CHECKING:
    from pydask_deploy.generate.spec import ClusterSpec

F = TypeVar("F", bound=Callable[..., Any])


@click.group("inventory")
def inventory() -> None:
    """Write an inventory from host ranges, a Slurm partition or cloud tags.

    The inventory is validated before it is written (a generated inventory is never
    invalid), printed on stdout, or written to -o FILE (never over an existing file
    without --force). Then: `pydask-deploy check FILE`, `pydask-deploy apply FILE`.
    """


def _connection_options(jump_help: str) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        for option in reversed(
            [
                click.option(
                    "--user",
                    metavar="USER",
                    help="SSH user on the hosts (ansible_user); it needs passwordless sudo "
                    "unless it is root. Default: what SSH picks (~/.ssh/config, else your "
                    "user name).",
                ),
                click.option(
                    "--key",
                    metavar="FILE",
                    help="Private key to log in with (ansible_ssh_private_key_file); it "
                    "must exist. Default: what SSH picks (agent, ~/.ssh/id_*).",
                ),
                click.option("--jump", metavar="[USER@]HOST[:PORT]", help=jump_help),
                click.option(
                    "-o",
                    "--output",
                    type=click.Path(dir_okay=False, path_type=Path),
                    metavar="FILE",
                    help="Write the inventory to FILE (its directory is created) instead of "
                    "printing it on stdout.",
                ),
                click.option("--force", is_flag=True, help="Overwrite FILE when it exists."),
            ]
        ):
            func = option(func)
        return func

    return decorate


def _source(words: Sequence[str], options: Sequence[tuple[str, str | Path | None]]) -> str:
    """The command line that makes this inventory again, for its header."""
    argv = ["pydask-deploy", "inventory", *words]
    for flag, value in options:
        if value is not None:
            argv += [flag, str(value)]
    return shlex.join(argv)


def _check_output(output: Path | None, force: bool) -> None:
    """Refuse an existing -o FILE before any host or service is asked anything."""
    from pydask_deploy.generate.render import check_output

    if output is not None:
        check_output(output, force)


def _write(spec: ClusterSpec, output: Path | None, force: bool) -> None:
    from pydask_deploy.generate.render import write_inventory

    text = write_inventory(spec, output, force=force)
    for warning in spec.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    if output is None:
        click.echo(text, nl=False)
        return
    workers = len(spec.workers)
    shown = shlex.quote(str(output))
    click.echo(
        f"wrote {output}: 1 scheduler, {workers} worker{'' if workers == 1 else 's'}; "
        f"next: pydask-deploy check {shown}",
        err=True,
    )


@inventory.command("static")
@click.argument("specs", nargs=-1, required=True, metavar="SPEC...")
@click.option(
    "--scheduler",
    required=True,
    metavar="HOST",
    help="The host that runs the scheduler. It runs a worker too when a SPEC names it.",
)
@_connection_options(
    "Reach the hosts through this bastion or login node (written as a ProxyCommand in "
    "ansible_ssh_common_args)."
)
@reports_errors
def static_command(
    specs: tuple[str, ...],
    scheduler: str,
    user: str | None,
    key: str | None,
    jump: str | None,
    output: Path | None,
    force: bool,
) -> None:
    """Write an inventory whose workers are the hosts SPEC names.

    A SPEC is a host name or a Slurm-style range, comma lists allowed: node[01-16,20],
    gpu[1-4].lab, rack[1-2]-n[01-04]. Quote it in the shell. The inventory lists every host
    by name, in order; a host named twice is an error.

    \b
    Example:
      pydask-deploy inventory static 'node[01-16]' --scheduler node01 \\
          --user deploy -o inventory/prod.yml
    """
    from pydask_deploy.generate.static import static_spec

    source = _source(
        ["static", *specs],
        [
            ("--scheduler", scheduler),
            ("--user", user),
            ("--key", key),
            ("--jump", jump),
            ("-o", output),
        ],
    )
    _check_output(output, force)
    _write(static_spec(specs, scheduler, user, key, jump, source), output, force)


@inventory.command("slurm")
@click.option(
    "-p",
    "--partition",
    required=True,
    metavar="PARTITION",
    help="The Slurm partition whose nodes in service become the workers.",
)
@click.option(
    "--scheduler",
    metavar="NODE",
    help="The node of the partition that runs the scheduler (it runs a worker too). "
    "Default: the first node in service.",
)
@click.option(
    "--login",
    metavar="[USER@]HOST[:PORT]",
    help="Run sinfo on this login node over SSH instead of here; the nodes are then reached "
    "through it, unless --jump says otherwise.",
)
@_connection_options(
    "Reach the nodes through this bastion (a ProxyCommand in ansible_ssh_common_args). "
    "Default: the --login host, if any; `none` reaches them directly."
)
@reports_errors
def slurm_command(
    partition: str,
    scheduler: str | None,
    login: str | None,
    user: str | None,
    key: str | None,
    jump: str | None,
    output: Path | None,
    force: bool,
) -> None:
    """Write an inventory whose workers are a Slurm partition's nodes.

    Runs `sinfo` (here, or on --login over SSH). Nodes that are down, drained or otherwise
    out of service are left out and named in the header. A node's GPUs (GRES gpu) become
    its workers' resource GPU; threads and memory are Dask's defaults (the whole node).

    \b
    Example:
      pydask-deploy inventory slurm --partition gpu --login me@login.hpc.example.org \\
          -o inventory/gpu.yml
    """
    from pydask_deploy.generate.slurm import slurm_spec

    source = _source(
        ["slurm"],
        [
            ("--partition", partition),
            ("--scheduler", scheduler),
            ("--login", login),
            ("--user", user),
            ("--key", key),
            ("--jump", jump),
            ("-o", output),
        ],
    )
    _check_output(output, force)
    _write(slurm_spec(partition, scheduler, login, user, key, jump, source), output, force)


for _command in CLOUD_COMMANDS:
    inventory.add_command(_command)
