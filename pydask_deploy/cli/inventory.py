"""``pydask-deploy inventory ...``: write an inventory from what users have.

Thin commands: parse, call one generator, write with ``cli_common.write_and_summarize``.
Registered on ``main`` at the end of ``pydask_deploy.cli``.
"""

from __future__ import annotations

import click

from pydask_deploy.cli.cloud import CLOUD_COMMANDS
from pydask_deploy.cli.common import (
    GeneratorOptions,
    command_line,
    generator_options,
    reports_errors,
    write_and_summarize,
)

_USER_HELP = (
    "SSH user on the hosts (ansible_user); it needs passwordless sudo unless it is root. "
    "Default: what SSH picks (~/.ssh/config, else your user name)."
)


@click.group("inventory")
def inventory() -> None:
    """Write an inventory from host ranges, a Slurm partition or cloud tags.

    The inventory is validated before it is written (a generated inventory is never
    invalid), printed on stdout, or written to -o FILE (never over an existing file
    without --force). Then: `pydask-deploy check FILE`, `pydask-deploy apply FILE`.
    """


@inventory.command("static")
@click.argument("specs", nargs=-1, required=True, metavar="SPEC...")
@click.option(
    "--scheduler",
    required=True,
    metavar="HOST",
    help="The host that runs the scheduler. It runs a worker too when a SPEC names it.",
)
@generator_options(
    user_help=_USER_HELP,
    jump_help="Reach the hosts through this bastion or login node (written as a ProxyCommand "
    "in ansible_ssh_common_args).",
)
@reports_errors
def static_command(specs: tuple[str, ...], scheduler: str, options: GeneratorOptions) -> None:
    """Write an inventory whose workers are the hosts SPEC names.

    A SPEC is a host name or a Slurm-style range, comma lists allowed: node[01-16,20],
    gpu[1-4].lab, rack[1-2]-n[01-04]. Quote it in the shell. The inventory lists every host
    by name, in order; a host named twice is an error.

    \b
    Example:
      pydask-deploy inventory static 'node[01-16]' --scheduler node01 \\
          --user deploy -o inventory/prod.yml
    """
    from pydask_deploy.inventory.generate.static import static_spec

    source = command_line(
        ["static", *specs], {"scheduler": scheduler, **options.connection, "output": options.output}
    )
    options.check_output()
    spec = static_spec(specs, scheduler, options.user, options.key, options.jump, source)
    write_and_summarize(spec, options)


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
@generator_options(
    user_help=_USER_HELP,
    jump_help="Reach the nodes through this bastion (a ProxyCommand in "
    "ansible_ssh_common_args). Default: the --login host, if any; `none` reaches them "
    "directly.",
)
@reports_errors
def slurm_command(
    partition: str,
    scheduler: str | None,
    login: str | None,
    options: GeneratorOptions,
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
    from pydask_deploy.inventory.generate.slurm import slurm_spec

    source = command_line(
        ["slurm"],
        {
            "partition": partition,
            "scheduler": scheduler,
            "login": login,
            **options.connection,
            "output": options.output,
        },
    )
    options.check_output()
    spec = slurm_spec(partition, scheduler, login, options.user, options.key, options.jump, source)
    write_and_summarize(spec, options)


for _command in CLOUD_COMMANDS:
    inventory.add_command(_command)
