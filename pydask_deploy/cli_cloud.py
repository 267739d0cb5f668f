"""``pydask-deploy inventory aws|gcp|azure|openstack``: inventories from VMs found by tags.

Each command lists the provider's VMs (``generate/<provider>.py``), decides the cluster from
their tags (``generate/cloud.py``) and writes it (``generate/render.py``). The tag
conventions are in ``generate/cloud.py`` and the README's "Inventories from cloud tags".
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from pydask_deploy.cli_errors import reports_errors
from pydask_deploy.generate import cloud
from pydask_deploy.generate.render import write_inventory
from pydask_deploy.generate.spec import connection_vars

F = TypeVar("F", bound=Callable[..., Any])


_COMMON_OPTIONS = (
    click.option(
        "--tag",
        "tag_values",
        multiple=True,
        required=True,
        metavar="KEY=VALUE",
        help="Only VMs carrying this tag (repeatable: every tag must match).",
    ),
    click.option(
        "--role-tag",
        default=cloud.ROLE_TAG,
        show_default=True,
        metavar="KEY",
        help="The tag whose value is scheduler, worker or scheduler-worker "
        "(no such tag: a worker).",
    ),
    click.option(
        "--address",
        type=click.Choice(cloud.ADDRESSES),
        default="private",
        show_default=True,
        help="Reach the VMs at their private or their public IP address.",
    ),
    click.option(
        "--user",
        metavar="USER",
        help="SSH user on the VMs (ansible_user), such as ubuntu or ec2-user; it needs "
        "passwordless sudo unless it is root. Default: what SSH picks.",
    ),
    click.option(
        "--key",
        "key_file",
        metavar="FILE",
        help="Private key to log in with (ansible_ssh_private_key_file); it must exist. "
        "Default: what SSH picks (agent, ~/.ssh/id_*).",
    ),
    click.option(
        "--jump",
        metavar="[USER@]HOST[:PORT]",
        help="Reach the VMs through this bastion (a ProxyCommand in ansible_ssh_common_args).",
    ),
    click.option(
        "-o",
        "--output",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE",
        help="Write the inventory to FILE (its directory is created) instead of printing it "
        "on stdout.",
    ),
    click.option("--force", is_flag=True, help="Overwrite FILE when it exists."),
)


def _common(func: F) -> F:
    for option in reversed(_COMMON_OPTIONS):
        func = option(func)
    return func


def _source(provider: str, args: Mapping[str, object]) -> str:
    """The command line that makes the inventory again (for its header)."""
    words = ["pydask-deploy", "inventory", provider]
    for name, value in args.items():
        if value is None or value is False:
            continue
        flag = "-o" if name == "output" else "--" + name.replace("_", "-")
        for item in value if isinstance(value, tuple) else (value,):
            words += [flag] if item is True else [flag, str(item)]
    return shlex.join(words)


def _finish(
    provider: str,
    listing: Callable[[Mapping[str, str]], cloud.Listing],
    tag_values: tuple[str, ...],
    role_tag: str,
    address: str,
    user: str | None,
    key_file: str | None,
    jump: str | None,
    output: Path | None,
    force: bool,
    shown: Mapping[str, object],
) -> None:
    """Parse the tags, list the VMs, decide the cluster, write it and say what is next."""
    tags = cloud.parse_tags(tag_values)
    connection_vars(user, key_file, jump)  # a bad --user, --key or --jump: before any API call
    found = listing(tags)
    common = {
        "tag": tag_values,
        "role_tag": role_tag if role_tag != cloud.ROLE_TAG else None,
        "address": address if address != "private" else None,
        "user": user,
        "key": key_file,
        "jump": jump,
    }
    spec = cloud.cloud_spec(
        found,
        tags,
        source=_source(provider, {**common, **shown, "output": output}),
        role_tag=role_tag,
        address=address,
        user=user,
        key_file=key_file,
        jump=jump,
    )
    text = write_inventory(spec, output, force)
    for warning in spec.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    if output is None:
        click.echo(text, nl=False)
        return
    workers = len(spec.workers)
    click.echo(
        f"wrote {output}: scheduler {spec.scheduler.name} ({spec.scheduler.address}), "
        f"{workers} worker{'' if workers == 1 else 's'} from {found.where}; "
        f"next: pydask-deploy check {shlex.quote(str(output))}",
        err=True,
    )


@click.command("aws")
@_common
@click.option(
    "--region", metavar="REGION", help="AWS region (default: AWS_DEFAULT_REGION or the profile's)."
)
@click.option(
    "--profile", metavar="NAME", help="AWS profile from ~/.aws/config (default: AWS_PROFILE)."
)
@click.option(
    "--endpoint-url",
    metavar="URL",
    help="EC2 endpoint to ask instead of AWS's own: a VPC endpoint, or an emulator "
    "such as moto or LocalStack.",
)
@reports_errors
def aws_command(
    tag_values: tuple[str, ...],
    role_tag: str,
    address: str,
    user: str | None,
    key_file: str | None,
    jump: str | None,
    output: Path | None,
    force: bool,
    region: str | None,
    profile: str | None,
    endpoint_url: str | None,
) -> None:
    """An inventory of the running EC2 instances carrying every --tag.

    The instance tagged dask-role=scheduler is the scheduler; the others are workers. Tags
    dask-gpus, dask-nthreads, dask-nworkers and dask-memory-limit set an instance's worker
    options. Needs boto3 (pip install 'pydask-deploy[aws]') and AWS credentials as the aws
    CLI reads them. Exit 2 when no instance matches, no or two schedulers are tagged, or a
    tag value is bad (nothing is written); 1 when the API cannot be reached.

    \b
    Example:
      pydask-deploy inventory aws --tag dask-cluster=prod --region eu-west-1 \\
          --user ubuntu -o inventory/prod.yml
    """
    from pydask_deploy.generate import aws

    _finish(
        "aws",
        lambda tags: aws.list_instances(
            tags, region=region, profile=profile, endpoint_url=endpoint_url
        ),
        tag_values,
        role_tag,
        address,
        user,
        key_file,
        jump,
        output,
        force,
        {"region": region, "profile": profile, "endpoint_url": endpoint_url},
    )


@click.command("gcp")
@_common
@click.option(
    "--project",
    metavar="PROJECT",
    help="GCP project (default: the one of your Application Default Credentials).",
)
@click.option(
    "--zone", metavar="ZONE", help="Only this zone, such as europe-west1-b (default: all zones)."
)
@click.option(
    "--endpoint-url",
    metavar="URL",
    help="Compute API base URL instead of https://compute.googleapis.com/compute/v1 "
    "(a Private Service Connect endpoint, a test server).",
)
@reports_errors
def gcp_command(
    tag_values: tuple[str, ...],
    role_tag: str,
    address: str,
    user: str | None,
    key_file: str | None,
    jump: str | None,
    output: Path | None,
    force: bool,
    project: str | None,
    zone: str | None,
    endpoint_url: str | None,
) -> None:
    """An inventory of the running Compute Engine instances carrying every --tag (a label).

    The instance labelled dask-role=scheduler is the scheduler; the others are workers
    (dask-role=scheduler-worker: both). Labels dask-gpus, dask-nthreads, dask-nworkers and
    dask-memory-limit set an instance's worker options. Needs google-auth (pip install
    'pydask-deploy[gcp]') and Application Default Credentials (gcloud auth
    application-default login). Exit 2 for bad input (nothing is written), 1 when the API
    cannot be reached.

    \b
    Example:
      pydask-deploy inventory gcp --tag dask-cluster=prod --project my-project \\
          -o inventory/prod.yml
    """
    from pydask_deploy.generate import gcp

    _finish(
        "gcp",
        lambda tags: gcp.list_instances(
            tags, project=project, zone=zone, endpoint_url=endpoint_url
        ),
        tag_values,
        role_tag,
        address,
        user,
        key_file,
        jump,
        output,
        force,
        {"project": project, "zone": zone, "endpoint_url": endpoint_url},
    )


@click.command("azure")
@_common
@click.option(
    "--subscription",
    metavar="ID",
    help="Azure subscription id (default: AZURE_SUBSCRIPTION_ID, else the only one you see).",
)
@click.option("--resource-group", metavar="NAME", help="Only VMs of this resource group.")
@click.option(
    "--endpoint-url",
    metavar="URL",
    help="Resource Manager URL instead of https://management.azure.com (a sovereign "
    "cloud, Azure Stack Hub, a test server).",
)
@reports_errors
def azure_command(
    tag_values: tuple[str, ...],
    role_tag: str,
    address: str,
    user: str | None,
    key_file: str | None,
    jump: str | None,
    output: Path | None,
    force: bool,
    subscription: str | None,
    resource_group: str | None,
    endpoint_url: str | None,
) -> None:
    """An inventory of the running Azure VMs carrying every --tag.

    The VM tagged dask-role=scheduler is the scheduler; the others are workers. Tags
    dask-gpus, dask-nthreads, dask-nworkers and dask-memory-limit set a VM's worker options.
    Needs azure-identity (pip install 'pydask-deploy[azure]') and credentials it finds
    (az login, AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, a managed identity).
    Exit 2 for bad input (nothing is written), 1 when the API cannot be reached.

    \b
    Example:
      pydask-deploy inventory azure --tag dask-cluster=prod --resource-group dask \\
          --user azureuser -o inventory/prod.yml
    """
    from pydask_deploy.generate import azure

    _finish(
        "azure",
        lambda tags: azure.list_instances(
            tags,
            subscription=subscription,
            resource_group=resource_group,
            endpoint_url=endpoint_url,
        ),
        tag_values,
        role_tag,
        address,
        user,
        key_file,
        jump,
        output,
        force,
        {
            "subscription": subscription,
            "resource_group": resource_group,
            "endpoint_url": endpoint_url,
        },
    )


@click.command("openstack")
@_common
@click.option(
    "--cloud",
    "cloud_name",
    metavar="NAME",
    help="The cloud's entry in clouds.yaml (default: OS_CLOUD, or the OS_* variables).",
)
@reports_errors
def openstack_command(
    tag_values: tuple[str, ...],
    role_tag: str,
    address: str,
    user: str | None,
    key_file: str | None,
    jump: str | None,
    output: Path | None,
    force: bool,
    cloud_name: str | None,
) -> None:
    """An inventory of the active OpenStack servers whose metadata carries every --tag.

    The server with metadata dask-role=scheduler is the scheduler; the others are workers.
    Metadata dask-gpus, dask-nthreads, dask-nworkers and dask-memory-limit set a server's
    worker options. Needs openstacksdk (pip install 'pydask-deploy[openstack]') and a
    clouds.yaml entry or OS_* variables. Exit 2 for bad input (nothing is written), 1 when
    the API cannot be reached.

    \b
    Example:
      pydask-deploy inventory openstack --cloud mycloud --tag dask-cluster=prod \\
          -o inventory/prod.yml
    """
    from pydask_deploy.generate import openstack

    _finish(
        "openstack",
        lambda tags: openstack.list_instances(tags, cloud=cloud_name),
        tag_values,
        role_tag,
        address,
        user,
        key_file,
        jump,
        output,
        force,
        {"cloud": cloud_name},
    )


# The lead attaches these to the `inventory` group.
CLOUD_COMMANDS = (aws_command, gcp_command, azure_command, openstack_command)
