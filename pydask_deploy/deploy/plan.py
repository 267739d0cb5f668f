"""Decide what a run will do: which playbook, on which hosts, with which Ansible settings.

A ``Plan`` is a plain value: the runner (run.py) carries it out and nothing else decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydask_deploy import contract
from pydask_deploy.deploy.conda import CondaRuntime
from pydask_deploy.deploy.pki import Pki
from pydask_deploy.inventory import Host, Inventory
from pydask_deploy.resources import playbook_path, roles_path

MAX_FORKS = 50


@dataclass(frozen=True)
class Plan:
    """One ansible-playbook run: what to run, where, and how fast."""

    inventory: Inventory
    playbook: Path
    limit: str | None = None
    check: bool = False
    diff: bool = False
    forks: int = 5
    extravars: Mapping[str, object] = field(default_factory=dict)
    settings: Mapping[str, str] = field(default_factory=dict)

    @property
    def host_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.inventory.hosts)


def forks_for(hosts: int) -> int:
    """One fork per host, at least 5, at most ``MAX_FORKS``."""
    return max(5, min(MAX_FORKS, hosts))


def fast_settings(forks: int) -> dict[str, str]:
    """Ansible settings for speed: pipelining, SSH connection reuse, one fork per host."""
    return {
        "ANSIBLE_PIPELINING": "True",
        # Reuse one SSH connection per host across tasks (and across runs for a minute).
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s",
        "ANSIBLE_FORKS": str(forks),
        "ANSIBLE_ROLES_PATH": str(roles_path()),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_SYSTEM_WARNINGS": "False",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "yaml",
    }


def plan_apply(
    inventory: Inventory,
    *,
    check: bool = False,
    diff: bool = False,
    limit: str | None = None,
    extravars: Mapping[str, object] | None = None,
    pki: Pki | None = None,
    conda: CondaRuntime | None = None,
) -> Plan:
    """The plan of ``pydask-deploy apply``: converge every host with ``playbooks/site.yml``.

    With ``pki`` (TLS on) the role copies the certificates from its directory; in check mode,
    certificates it would issue are not made yet, and the role is told so. With ``conda``
    the conda hosts unpack the environments staged on the controller.
    """
    forks = forks_for(len(inventory.hosts))
    extravars = dict(extravars or {})
    if pki is not None:
        extravars[contract.EXTRA_TLS_SRC_DIR] = str(pki.directory)
        if check and pki.issued:
            extravars[contract.EXTRA_TLS_PENDING] = True
    if conda is not None:
        extravars.update(conda.extravars())
    return Plan(
        inventory=inventory,
        playbook=playbook_path(contract.SITE_PLAYBOOK),
        limit=limit,
        check=check,
        diff=diff,
        forks=forks,
        extravars=extravars,
        settings=fast_settings(forks),
    )


def plan_restart(inventory: Inventory, hosts: Sequence[Host], units: Sequence[str]) -> Plan:
    """Restart the units of ``hosts`` (by role: ``scheduler``, ``worker``), as ``upgrade``
    needs it: ``playbooks/restart.yml``."""
    forks = forks_for(len(hosts))
    return Plan(
        inventory=inventory,
        playbook=playbook_path(contract.RESTART_PLAYBOOK),
        limit=",".join(h.name for h in hosts),
        forks=forks,
        extravars={contract.EXTRA_RESTART_UNITS: list(units)},
        settings=fast_settings(forks),
    )


def plan_destroy(
    inventory: Inventory, *, remove_user: bool = False, limit: str | None = None
) -> Plan:
    """The plan of ``pydask-deploy destroy``: ``playbooks/destroy.yml`` on every host."""
    forks = forks_for(len(inventory.hosts))
    return Plan(
        inventory=inventory,
        playbook=playbook_path(contract.DESTROY_PLAYBOOK),
        limit=limit,
        forks=forks,
        extravars={contract.EXTRA_REMOVE_USER: remove_user},
        settings=fast_settings(forks),
    )
