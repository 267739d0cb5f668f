"""The lab's network: a Linux bridge holding the controller's address on the lab subnet.

Hosts join the bridge with a veth each (nspawn ``--network-bridge``); nothing routes beyond
it, so the hosts reach the controller and each other only.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess

from pydask_deploy.errors import LabUsageError
from pydask_deploy.lab.config import LabConfig
from pydask_deploy.lab.system import run


def interfaces_on(subnet: ipaddress.IPv4Network) -> list[str]:
    """Names of interfaces with an address or a route inside ``subnet``."""
    users: list[str] = []
    addrs = json.loads(run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]")
    for link in addrs:
        for info in link.get("addr_info", []):
            net = ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False)
            if net.overlaps(subnet):
                users.append(link["ifname"])
    routes = json.loads(run(["ip", "-j", "-4", "route", "show"]).stdout or "[]")
    for route in routes:
        dst = route.get("dst", "")
        if dst in ("", "default"):
            continue
        if ipaddress.IPv4Network(dst, strict=False).overlaps(subnet) and route.get("dev"):
            users.append(route["dev"])
    return sorted(set(users))


def check_subnet_free(config: LabConfig) -> None:
    """Raise ``LabUsageError`` if something other than our bridge uses the lab subnet."""
    others = [name for name in interfaces_on(config.subnet) if name != config.bridge]
    if others:
        raise LabUsageError(
            f"the lab subnet {config.subnet} is already used by {', '.join(others)}; "
            "choose another with PYDASK_LAB_SUBNET (e.g. 10.232.0.0/24)"
        )


def bridge_exists(config: LabConfig) -> bool:
    """Whether the lab's bridge is there (left by a crash, or up)."""
    return (
        subprocess.run(["ip", "link", "show", config.bridge], capture_output=True).returncode == 0
    )


def bridge_up(config: LabConfig) -> None:
    """Create the bridge if needed, give it the controller's address and bring it up."""
    if not bridge_exists(config):
        run(["ip", "link", "add", config.bridge, "type", "bridge"])
    addr = f"{config.gateway}/{config.subnet.prefixlen}"
    have = run(["ip", "-4", "-o", "addr", "show", "dev", config.bridge]).stdout
    if addr not in have:
        run(["ip", "addr", "add", addr, "dev", config.bridge])
    run(["ip", "link", "set", config.bridge, "up"])


def bridge_down(config: LabConfig) -> None:
    """Delete the lab's bridge, if it is there."""
    if bridge_exists(config):
        subprocess.run(["ip", "link", "del", config.bridge], capture_output=True)
