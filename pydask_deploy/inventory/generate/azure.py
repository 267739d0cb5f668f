"""List Azure VMs by their tags (the optional ``azure`` extra).

Through azure-identity and the Azure Resource Manager REST API, not the azure-mgmt-compute
and azure-mgmt-network SDKs: azure-identity is what the SDKs and Ansible's ``azure_rm``
inventory plugin use for credentials (``DefaultAzureCredential``: ``az login``, the
AZURE_CLIENT_* variables, a managed identity), and an inventory needs four paginated list
calls (VMs, their power states, network interfaces, public IPs); the two SDKs would add
generated clients for every API version to make the same requests.

A VM's private address is its primary NIC's primary IP configuration; its public address
the public IP resource attached there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from pydask_deploy.errors import DeployError, UsageError
from pydask_deploy.inventory.generate.cloud import RUNNING, Instance, Listing

INSTALL_HINT = "pip install 'pydask-deploy[azure]'"
ARM = "https://management.azure.com"
SCOPE = "https://management.azure.com/.default"
COMPUTE_API = "2024-07-01"
NETWORK_API = "2024-05-01"
SUBSCRIPTIONS_API = "2022-12-01"


class Credential(Protocol):
    """What azure-identity's credentials offer: ``get_token(scope).token``."""

    def get_token(self, *scopes: str) -> Any: ...


def _key(resource_id: object) -> str:
    """Azure resource ids compare without case (the API returns them in mixed case)."""
    return str(resource_id or "").lower()


def _primary(items: list[Any]) -> Any:
    """The item marked ``primary`` (in ``properties`` or not), else the first, else {}."""
    for item in items:
        if item.get("primary") or item.get("properties", {}).get("primary"):
            return item
    return items[0] if items else {}


def _group(resource_id: str) -> str:
    parts = resource_id.split("/")
    lowered = [p.lower() for p in parts]
    if "resourcegroups" in lowered:
        return parts[lowered.index("resourcegroups") + 1]
    return ""


def power_states(pages: list[Mapping[str, Any]]) -> dict[str, str]:
    """Map VM id (lower case) to its power state (``running``, ``deallocated`` ...) from the
    pages of a ``statusOnly=true`` VM list."""
    states: dict[str, str] = {}
    for page in pages:
        for vm in page.get("value", []):
            statuses = vm.get("properties", {}).get("instanceView", {}).get("statuses", [])
            for status in statuses:
                code = str(status.get("code", ""))
                if code.startswith("PowerState/"):
                    states[_key(vm.get("id"))] = code.split("/", 1)[1].lower()
    return states


def instance_from_azure(
    vm: Mapping[str, Any],
    states: Mapping[str, str],
    nics: Mapping[str, Mapping[str, Any]],
    public_ips: Mapping[str, Mapping[str, Any]],
) -> Instance:
    """Map one VM resource (REST JSON) to an Instance, with the power states, network
    interfaces and public IP resources, each keyed by lower-case resource id."""
    props = vm.get("properties", {})
    refs = props.get("networkProfile", {}).get("networkInterfaces", [])
    nic = nics.get(_key(_primary(refs).get("id")), {})
    config = _primary(nic.get("properties", {}).get("ipConfigurations", []))
    config_props = config.get("properties", {})
    public = public_ips.get(_key(config_props.get("publicIPAddress", {}).get("id")), {})
    state = states.get(_key(vm.get("id")), "unknown")
    zones = vm.get("zones") or []
    location = vm.get("location")
    return Instance(
        id=f"{_group(str(vm.get('id', '')))}/{vm['name']}".lstrip("/"),
        name=vm.get("name"),
        private_ip=config_props.get("privateIPAddress") or None,
        public_ip=public.get("properties", {}).get("ipAddress") or None,
        state=RUNNING if state == "running" else state,
        tags={str(k): str(v) for k, v in (vm.get("tags") or {}).items()},
        zone=f"{location}-{zones[0]}" if location and zones else location,
        machine_type=props.get("hardwareProfile", {}).get("vmSize"),
    )


def instances_from_pages(
    vms: list[Mapping[str, Any]],
    statuses: list[Mapping[str, Any]],
    nics: list[Mapping[str, Any]],
    public_ips: list[Mapping[str, Any]],
) -> list[Instance]:
    """Map the pages of the four list calls to Instances."""

    def by_id(pages: list[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        return {_key(item.get("id")): item for page in pages for item in page.get("value", [])}

    states = power_states(statuses)
    nic_map, ip_map = by_id(nics), by_id(public_ips)
    return [
        instance_from_azure(vm, states, nic_map, ip_map)
        for page in vms
        for vm in page.get("value", [])
    ]


class _Arm:
    """GETs against Resource Manager with a bearer token, following ``nextLink``."""

    def __init__(self, base: str, credential: Credential, where: str) -> None:
        import requests

        self.base = base
        self.where = where
        self.session = requests.Session()
        self.credential = credential

    def _token(self) -> str:
        try:
            return str(self.credential.get_token(SCOPE).token)
        except Exception as exc:  # azure-identity raises its own ClientAuthenticationError
            raise UsageError(
                f"{self.where}: no Azure credentials: {exc} (run `az login`, or set "
                "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET)"
            ) from None

    def pages(self, path: str, params: Mapping[str, str]) -> Iterator[Any]:
        import requests

        headers = {"Authorization": f"Bearer {self._token()}"}
        url: str | None = f"{self.base}{path}"
        query: Mapping[str, str] | None = params
        while url:
            # nextLink is a whole URL; never send the token anywhere but the API.
            if not url.startswith(self.base):
                raise DeployError(f"{self.where}: the API sent a next page at {url}")
            try:
                response = self.session.get(url, params=query, headers=headers, timeout=30)
            except requests.RequestException as exc:
                raise DeployError(
                    f"{self.where}: cannot reach Azure Resource Manager: {exc}"
                ) from None
            if response.status_code != 200:
                _raise_for(response, self.where)
            page = response.json()
            yield page
            url, query = page.get("nextLink"), None

    def close(self) -> None:
        self.session.close()


def _raise_for(response: Any, where: str) -> None:
    try:
        error = response.json()["error"]
        message = f"{error.get('code')}: {error.get('message')}"
    except (ValueError, KeyError, TypeError, AttributeError):
        message = response.text[:200] or response.reason
    text = f"{where}: HTTP {response.status_code}: {message}"
    if response.status_code in (400, 401, 403, 404):  # credentials, subscription, group
        raise UsageError(text)
    raise DeployError(text)


def _default_credential() -> Credential:
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise UsageError(f"`inventory azure` needs azure-identity: {INSTALL_HINT}") from None
    return DefaultAzureCredential()  # type: ignore[no-any-return]


def _only_subscription(arm: _Arm) -> str:
    pages = arm.pages("/subscriptions", {"api-version": SUBSCRIPTIONS_API})
    found = [
        s for page in pages for s in page.get("value", []) if s.get("state", "Enabled") == "Enabled"
    ]
    if len(found) == 1:
        return str(found[0]["subscriptionId"])
    listed = ", ".join(f"{s.get('subscriptionId')} ({s.get('displayName')})" for s in found)
    raise UsageError(
        "pass --subscription or set AZURE_SUBSCRIPTION_ID: "
        + (f"these credentials see {listed}" if found else "these credentials see none")
    )


def list_instances(
    tags: Mapping[str, str],
    *,
    subscription: str | None = None,
    resource_group: str | None = None,
    endpoint_url: str | None = None,
    credential: Credential | None = None,
) -> Listing:
    """Find the VMs of a subscription (or one resource group) with their addresses and
    power states; ``cloud_spec`` keeps the running ones carrying every tag of ``tags``
    (Resource Manager's list calls cannot filter by tag).

    ``subscription`` defaults to AZURE_SUBSCRIPTION_ID, else the only one the credentials
    see; ``endpoint_url`` replaces ``https://management.azure.com`` (a sovereign cloud,
    Azure Stack Hub, a test server); ``credential`` replaces ``DefaultAzureCredential``.
    """
    credential = credential or _default_credential()
    base = (endpoint_url or ARM).rstrip("/")
    subscription = subscription or os.environ.get("AZURE_SUBSCRIPTION_ID") or None
    arm = _Arm(base, credential, "Azure")
    try:
        if subscription is None:
            subscription = _only_subscription(arm)
        where = f"Azure subscription {subscription}" + (
            f", resource group {resource_group}" if resource_group else ""
        )
        arm.where = where
        root = f"/subscriptions/{subscription}"
        scope = f"{root}/resourceGroups/{resource_group}" if resource_group else root
        compute = {"api-version": COMPUTE_API}
        network = {"api-version": NETWORK_API}
        vms = list(arm.pages(f"{scope}/providers/Microsoft.Compute/virtualMachines", compute))
        # Power states come with statusOnly, which only the subscription-wide list offers.
        statuses = list(
            arm.pages(
                f"{root}/providers/Microsoft.Compute/virtualMachines",
                {**compute, "statusOnly": "true"},
            )
        )
        # A VM's NIC and public IP may sit in another resource group than the VM.
        nics = list(arm.pages(f"{root}/providers/Microsoft.Network/networkInterfaces", network))
        ips = list(arm.pages(f"{root}/providers/Microsoft.Network/publicIPAddresses", network))
    finally:
        arm.close()
    return Listing(tuple(instances_from_pages(vms, statuses, nics, ips)), where)
