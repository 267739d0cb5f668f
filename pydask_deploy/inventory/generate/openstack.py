"""List OpenStack servers by their metadata, through openstacksdk (the optional ``openstack``
extra).

openstacksdk is OpenStack's own SDK and the only reader of ``clouds.yaml`` (and the OS_*
variables) that every OpenStack tool shares, Ansible's ``openstack.cloud`` inventory plugin
included; writing that against bare keystoneauth would re-implement it. Nova lists servers
by status but not by metadata, so the tags are matched here (``cloud_spec``).

On OpenStack a tag is a server metadata item (``openstack server set --property
dask-role=scheduler``). The private address is the first fixed IPv4 address; the public one
``accessIPv4``, else the first floating IPv4 address.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from pydask_deploy.errors import DeployError, UsageError
from pydask_deploy.inventory.generate.cloud import RUNNING, Instance, Listing

INSTALL_HINT = "pip install 'pydask-deploy[openstack]'"


def _ipv4(addresses: Mapping[str, Any], kind: str) -> str | None:
    for network in sorted(addresses):
        for entry in addresses[network] or []:
            if entry.get("version", 4) == 4 and entry.get("OS-EXT-IPS:type", "fixed") == kind:
                return str(entry["addr"])
    return None


def instance_from_server(data: Mapping[str, Any]) -> Instance:
    """Map one server of ``GET /servers/detail`` (REST JSON, as Nova names its keys) to an
    Instance."""
    addresses = data.get("addresses") or {}
    flavor = data.get("flavor") or {}
    status = str(data.get("status", "unknown")).lower()
    return Instance(
        id=str(data["id"]),
        name=data.get("name"),
        private_ip=_ipv4(addresses, "fixed"),
        public_ip=data.get("accessIPv4") or _ipv4(addresses, "floating"),
        state=RUNNING if status == "active" else status,
        tags={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
        zone=data.get("OS-EXT-AZ:availability_zone") or None,
        machine_type=flavor.get("original_name") or flavor.get("id"),
    )


def instances_from_servers(servers: Iterable[Mapping[str, Any]]) -> list[Instance]:
    """Map the servers of one or more ``/servers/detail`` pages to Instances."""
    return [instance_from_server(s) for s in servers]


def list_instances(
    tags: Mapping[str, str], *, cloud: str | None = None, connection: Any = None
) -> Listing:
    """Find the active servers of ``cloud`` (a ``clouds.yaml`` entry; else OS_CLOUD or the
    OS_* variables); ``cloud_spec`` keeps those whose metadata carries every tag.

    ``connection`` replaces ``openstack.connect(cloud=cloud)``.
    """
    try:
        import keystoneauth1.exceptions as ks_errors
        import openstack
        import openstack.exceptions as os_errors
        import openstack.warnings as os_warnings
    except ImportError:
        raise UsageError(f"`inventory openstack` needs openstacksdk: {INSTALL_HINT}") from None

    where = f"OpenStack cloud {cloud}" if cloud else "OpenStack"
    try:
        with warnings.catch_warnings():
            # openstacksdk warns about its own internals (RemovedInSDK50Warning ...)
            warnings.simplefilter("ignore", os_warnings.OpenStackDeprecationWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            conn = connection or openstack.connect(cloud=cloud)
            where = f"OpenStack cloud {conn.config.name}" + (
                f" region {conn.config.region_name}" if conn.config.region_name else ""
            )
            servers = [
                s.to_dict(original_names=True)
                for s in conn.compute.servers(details=True, status="ACTIVE")
            ]
    except os_errors.ConfigException as exc:
        raise UsageError(f"{where}: {exc} (see clouds.yaml, or pass --cloud)") from None
    except (
        ks_errors.Unauthorized,
        ks_errors.MissingAuthPlugin,
        ks_errors.AuthorizationFailure,
    ) as exc:
        raise UsageError(f"{where}: the credentials were refused or missing: {exc}") from None
    except ks_errors.ConnectFailure as exc:
        raise DeployError(f"{where}: cannot reach the API: {exc}") from None
    except os_errors.HttpException as exc:
        code = exc.status_code or 0
        error = UsageError if code in (400, 401, 403, 404) else DeployError
        raise error(f"{where}: {exc}") from None
    except (os_errors.SDKException, ks_errors.ClientException) as exc:
        raise DeployError(f"{where}: {exc}") from None
    return Listing(tuple(instances_from_servers(servers)), where)
