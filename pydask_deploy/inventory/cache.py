"""A cache of resolved inventories, so that reading one costs milliseconds, not Ansible.

Resolving an inventory through Ansible (importing it, building its InventoryManager and
VariableManager) takes about half a second: most of what ``status`` or ``logs`` spend before
the first byte goes to a host. The result depends only on files and settings, so it is kept
under a key made of all of them: the inventory file's bytes, every file under the
``group_vars/`` and ``host_vars/`` directories beside it and beside the shipped playbooks,
the role's defaults, the code that validates, the versions of pydask-deploy and Ansible,
and every ``ANSIBLE_*`` environment variable. Any change to one of them is a different key:
nothing is ever stale.

Only inventories that validated are stored; one holding ansible-vault values is never
stored. The files live in ``$PYDASK_DEPLOY_CACHE`` (``off`` turns the cache off), else
``$XDG_CACHE_HOME/pydask-deploy/inventories``, else ``~/.cache/pydask-deploy/inventories``,
readable by their owner only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydask_deploy import __version__, contract
from pydask_deploy.resources import playbook_path, roles_path

FORMAT = 1  # bump when the stored document changes shape


def cache_dir() -> Path | None:
    """Where resolved inventories are kept, or None when the cache is off."""
    configured = os.environ.get("PYDASK_DEPLOY_CACHE", "")
    if configured.lower() == "off":
        return None
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pydask-deploy" / "inventories"


def _files_under(directory: Path) -> Iterable[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*") if p.is_file())


def _ansible_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ansible-core")
    except PackageNotFoundError:
        return "unknown"


def cache_key(path: Path) -> str | None:
    """The key of everything the resolved inventory at ``path`` depends on (module
    docstring), or None when a file cannot be read (then nothing is cached)."""
    digest = hashlib.sha256(f"{FORMAT} {__version__} {_ansible_version()}\n".encode())
    # the validating code itself, so that a changed check is never skipped (development)
    here = Path(__file__).parent
    for module in sorted(here.glob("*.py")):
        digest.update(module.read_bytes())
    for name, value in sorted(os.environ.items()):
        if name.startswith("ANSIBLE_"):
            digest.update(f"env {name}={value}\n".encode())
    inventory = path.resolve()
    sources = [inventory]
    for base in (inventory.parent, playbook_path("site.yml").parent):
        for sub in ("group_vars", "host_vars"):
            sources += _files_under(base / sub)
    sources.append(roles_path() / contract.ROLE_DEFAULTS)
    for source in sources:
        try:
            content = source.read_bytes()
        except OSError:
            return None
        if b"!vault" in content or b"$ANSIBLE_VAULT" in content:
            return None  # secrets stay where their owner put them
        digest.update(f"\nfile {source}\n".encode() + content)
    return digest.hexdigest()


def read(path: Path) -> dict[str, Any] | None:
    """The stored resolution of the inventory at ``path``, or None."""
    directory, key = cache_dir(), cache_key(path)
    if directory is None or key is None:
        return None
    try:
        document = json.loads((directory / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) and document.get("format") == FORMAT else None


def write(path: Path, document: dict[str, Any]) -> None:
    """Store a resolution (best effort: a cache that cannot be written is no error)."""
    directory, key = cache_dir(), cache_key(path)
    if directory is None or key is None:
        return
    stored = {**document, "format": FORMAT}
    try:
        text = json.dumps(stored)
    except (TypeError, ValueError):  # a value JSON cannot hold
        return
    if json.loads(text) != stored:  # e.g. integer keys or tuples: it would not read back as is
        return
    with contextlib.suppress(OSError):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle, scratch = tempfile.mkstemp(dir=directory, suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as out:
                out.write(text)
            os.replace(scratch, directory / f"{key}.json")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(scratch)
