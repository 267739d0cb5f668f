"""Where the Ansible content shipped with pydask-deploy lives.

In a wheel, ``roles/`` and ``playbooks/`` are installed as ``pydask_deploy/_ansible/``; in a
source checkout (editable install) they sit at the top of the tree.
"""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def ansible_dir() -> Path:
    """Return the directory holding ``roles/`` and ``playbooks/``."""
    installed = _PACKAGE / "_ansible"
    if (installed / "playbooks").is_dir():
        return installed
    return _PACKAGE.parent


def playbook_path(name: str) -> Path:
    """Return the path of a shipped playbook, e.g. ``site.yml``."""
    return ansible_dir() / "playbooks" / name


def roles_path() -> Path:
    """Return the directory holding the shipped roles."""
    return ansible_dir() / "roles"
