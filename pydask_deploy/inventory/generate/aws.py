"""List AWS EC2 instances by their tags, through boto3 (the optional ``aws`` extra).

boto3 is AWS's own SDK and the one every AWS tool, Ansible's ``aws_ec2`` inventory plugin
included, builds on: it reads credentials, profiles and regions the way the ``aws`` CLI does.
One paginated ``DescribeInstances`` with ``tag:KEY`` and ``instance-state-name=running``
filters does the search on AWS's side.

Errors: missing or refused credentials, an unknown profile or no region are the user's to
fix (UsageError, exit 2); an endpoint that cannot be reached or a failing API is a failure
(DeployError, exit 1), as an unreachable host is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydask_deploy.errors import DeployError, UsageError
from pydask_deploy.inventory.generate.cloud import RUNNING, Instance, Listing

INSTALL_HINT = "pip install 'pydask-deploy[aws]'"

# Error codes that mean "these credentials cannot do this": the user's to fix.
_AUTH_CODES = frozenset(
    {
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "RequestExpired",
        "OptInRequired",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidToken",
    }
)


def instance_from_ec2(data: Mapping[str, Any]) -> Instance:
    """Map one ``Reservations[].Instances[]`` item of DescribeInstances to an Instance."""
    tags = {str(t["Key"]): str(t.get("Value", "")) for t in data.get("Tags", [])}
    state = str(data.get("State", {}).get("Name", "unknown")).lower()
    return Instance(
        id=str(data["InstanceId"]),
        name=tags.get("Name") or None,
        private_ip=data.get("PrivateIpAddress") or None,
        public_ip=data.get("PublicIpAddress") or None,
        state=RUNNING if state == "running" else state,
        tags=tags,
        zone=data.get("Placement", {}).get("AvailabilityZone"),
        machine_type=data.get("InstanceType"),
    )


def instances_from_response(pages: list[Mapping[str, Any]]) -> list[Instance]:
    """Map the pages of a DescribeInstances response to Instances."""
    return [
        instance_from_ec2(item)
        for page in pages
        for reservation in page.get("Reservations", [])
        for item in reservation.get("Instances", [])
    ]


def tag_filters(tags: Mapping[str, str]) -> list[dict[str, object]]:
    """The DescribeInstances ``Filters`` for instances carrying every tag, running."""
    filters: list[dict[str, object]] = [
        {"Name": f"tag:{key}", "Values": [value]} for key, value in tags.items()
    ]
    filters.append({"Name": "instance-state-name", "Values": ["running"]})
    return filters


def list_instances(
    tags: Mapping[str, str],
    *,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
) -> Listing:
    """Find the running EC2 instances that carry every tag of ``tags``.

    ``region`` and ``profile`` default as for the ``aws`` CLI (``AWS_DEFAULT_REGION``, the
    profile's region, ``AWS_PROFILE``); ``endpoint_url`` points at another EC2 endpoint
    (a VPC endpoint, an emulator such as moto or LocalStack).
    """
    try:
        import boto3
        import botocore.config
        import botocore.exceptions as errors
    except ImportError:
        raise UsageError(f"`inventory aws` needs boto3: {INSTALL_HINT}") from None

    try:
        session = boto3.Session(profile_name=profile, region_name=region)
    except errors.ProfileNotFound as exc:
        raise UsageError(f"--profile {profile}: {exc}") from None
    where = f"AWS EC2 {session.region_name or '(no region)'}"
    config = botocore.config.Config(
        connect_timeout=10, read_timeout=30, retries={"mode": "standard"}
    )
    try:
        ec2 = session.client("ec2", endpoint_url=endpoint_url, config=config)
        paginator = ec2.get_paginator("describe_instances")
        pages = list(paginator.paginate(Filters=tag_filters(tags)))
    except errors.NoRegionError:
        raise UsageError(
            "no AWS region: pass --region, set AWS_DEFAULT_REGION or give the profile one"
        ) from None
    except (errors.NoCredentialsError, errors.PartialCredentialsError) as exc:
        raise UsageError(
            f"{where}: {exc} (configure them with `aws configure`, AWS_PROFILE or "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
        ) from None
    except errors.ClientError as exc:
        error = exc.response.get("Error", {})
        message = f"{where}: {error.get('Code', 'error')}: {error.get('Message', exc)}"
        if error.get("Code") in _AUTH_CODES:
            raise UsageError(message) from None
        raise DeployError(message) from None
    except (errors.EndpointConnectionError, errors.ConnectionError) as exc:
        raise DeployError(f"{where}: cannot reach the EC2 API: {exc}") from None
    except errors.BotoCoreError as exc:
        raise DeployError(f"{where}: {exc}") from None
    return Listing(tuple(instances_from_response(pages)), where)
