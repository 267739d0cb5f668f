"""The lab's Ansible inventory, written by the generators' writer so it is validated like theirs.

The first host schedules and the others work (a one-host lab does both); ``all.vars`` say
how to reach the hosts (root, the lab's key, no host-key checks on throwaway hosts) and
where the wheels come from, since the hosts reach nothing but the controller.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pydask_deploy.inventory.generate import render
from pydask_deploy.inventory.generate.spec import ClusterSpec, HostEntry
from pydask_deploy.lab.config import SSH_OPTIONS, Lab, LabHost, release_flags

PREAMBLE = (
    "Written by `pydask-deploy lab up`: the local lab's hosts.",
    "Rewritten on every `lab up`; copy it before editing.",
)


def _entry(host: LabHost) -> HostEntry:
    return HostEntry(name=host.name, address=host.address)


def inventory_spec(lab: Lab) -> ClusterSpec:
    """The lab as a cluster to write: first host schedules, the rest work."""
    first, *rest = lab.hosts
    flags = release_flags([h.release for h in lab.hosts]) + (" --docker" if lab.docker else "")
    workers = rest or [first]  # a one-host lab runs the scheduler and a worker together
    common_vars: dict[str, object] = {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(lab.config.key_path),
        "ansible_ssh_common_args": " ".join(SSH_OPTIONS[:4]),
        "ansible_python_interpreter": "/usr/bin/python3",
        # The lab is air-gapped: the controller builds a wheelhouse and ships it.
        "dask_wheelhouse": str(lab.config.wheelhouse),
    }
    return ClusterSpec(
        scheduler=_entry(first),
        workers=tuple(_entry(h) for h in workers),
        common_vars=common_vars,
        source=f"pydask-deploy lab up --hosts {len(lab.hosts)}{flags}",
        notes=(
            "The lab's hosts reach nothing but this machine: `dask_wheelhouse` has the "
            "controller download the wheels and ship them.",
        ),
        preamble=PREAMBLE,
    )


def write_inventory(lab: Lab, path: Path) -> None:
    """Write the lab's inventory to ``path``, replacing the last one; validated first."""
    render.write_inventory(inventory_spec(lab), path, force=True)


def inventory_data(lab: Lab) -> dict[str, object]:
    """The lab's inventory as Ansible reads it: the YAML ``write_inventory`` writes."""
    data: dict[str, object] = yaml.safe_load(render.render(inventory_spec(lab)))
    return data
