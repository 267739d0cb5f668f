"""Where the Ansible content shipped with pydask-deploy lives.

In a wheel, ``roles/`` and ``playbooks/`` are installed as ``pydask_deploy/_ansible/``; in a
source checkout (editable install) they sit at the top of the tree.
"""

import os
import sys
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
    """Return the directory holding the shipped role (``ANSIBLE_ROLES_PATH``)."""
    return ansible_dir() / "roles"


def path_with_ansible() -> str:
    """``$PATH`` with this interpreter's bin directory first, where ansible-core's
    executables (``ansible-playbook``, ``ansible-inventory``) are installed; a virtualenv's
    bin directory is often not on ``$PATH``."""
    tools = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return path if path.split(os.pathsep)[0] == tools else f"{tools}{os.pathsep}{path}"
