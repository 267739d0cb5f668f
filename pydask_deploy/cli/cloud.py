"""``pydask-deploy inventory aws|gcp|azure|openstack``: inventories from VMs found by tags.

Each command lists the provider's VMs (``generate/<provider>.py``), decides the cluster from
their tags (``generate/cloud.py``) and writes it (``generate/render.py``). The tag
conventions are in ``generate/cloud.py`` and the README's "Inventories from cloud tags".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import click

from pydask_deploy.cli.common import (
    GeneratorOptions,
    command_line,
    generator_options,
    reports_errors,
    write_and_summarize,
)
from pydask_deploy.inventory.generate import cloud
from pydask_deploy.inventory.generate.spec import connection_vars

_TAG_OPTIONS = (
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
)

_generator_options = generator_options(
    user_help="SSH user on the VMs (ansible_user), such as ubuntu or ec2-user; it needs "
    "passwordless sudo unless it is root. Default: what SSH picks.",
    jump_help="Reach the VMs through this bastion (a ProxyCommand in ansible_ssh_common_args).",
)


def _common(func: Callable[..., None]) -> Callable[..., None]:
    """--tag, --role-tag and --address, then the options every generator takes; a command
    lists only its provider's options and hands these on to ``_finish`` as ``**shared``."""
    func = _generator_options(func)
    for option in reversed(_TAG_OPTIONS):
        func = option(func)
    return func


def _finish(
    provider: str,
    list_instances: Callable[..., cloud.Listing],
    query: Mapping[str, str | None],
    *,
    tag_values: tuple[str, ...],
    role_tag: str,
    address: str,
    options: GeneratorOptions,
) -> None:
    """Parse the tags, list the VMs, decide the cluster, write it and say what is next.

    ``query`` holds the provider's own options: ``list_instances``' keyword arguments,
    which the header's command line shows by the same names.
    """
    tags = cloud.parse_tags(tag_values)
    # a bad --user, --key or --jump, or a file -o would refuse: before any API call
    connection_vars(options.user, options.key, options.jump)
    options.check_output()
    found = list_instances(tags, **query)
    common = {
        "tag": tag_values,
        "role_tag": role_tag if role_tag != cloud.ROLE_TAG else None,
        "address": address if address != "private" else None,
    }
    source = command_line(
        [provider], {**common, **options.connection, **query, "output": options.output}
    )
    spec = cloud.cloud_spec(
        found,
        tags,
        source=source,
        role_tag=role_tag,
        address=address,
        user=options.user,
        key_file=options.key,
        jump=options.jump,
    )
    write_and_summarize(spec, options, found_in=found.where)


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
    region: str | None,
    profile: str | None,
    endpoint_url: str | None,
    **shared: Any,
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
    from pydask_deploy.inventory.generate import aws

    query = {"region": region, "profile": profile, "endpoint_url": endpoint_url}
    _finish("aws", aws.list_instances, query, **shared)


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
    project: str | None,
    zone: str | None,
    endpoint_url: str | None,
    **shared: Any,
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
    from pydask_deploy.inventory.generate import gcp

    query = {"project": project, "zone": zone, "endpoint_url": endpoint_url}
    _finish("gcp", gcp.list_instances, query, **shared)


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
    subscription: str | None,
    resource_group: str | None,
    endpoint_url: str | None,
    **shared: Any,
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
    from pydask_deploy.inventory.generate import azure

    query = {
        "subscription": subscription,
        "resource_group": resource_group,
        "endpoint_url": endpoint_url,
    }
    _finish("azure", azure.list_instances, query, **shared)


@click.command("openstack")
@_common
@click.option(
    "--cloud",
    "cloud_name",
    metavar="NAME",
    help="The cloud's entry in clouds.yaml (default: OS_CLOUD, or the OS_* variables).",
)
@reports_errors
def openstack_command(cloud_name: str | None, **shared: Any) -> None:
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
    from pydask_deploy.inventory.generate import openstack

    query = {"cloud": cloud_name}
    _finish("openstack", openstack.list_instances, query, **shared)


# The lead attaches these to the `inventory` group.
CLOUD_COMMANDS = (aws_command, gcp_command, azure_command, openstack_command)
