"""Every ``dask_*`` variable pydask-deploy knows, and what each value must be.

A check returns None when a value is fine, else what it must be (``must be ...``); the
loader (``load.py``) names the file, the key and the value around it. The role's defaults
(``role_defaults``) are the other half: every variable there has a check here
(``tests/test_inventory.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TypeAlias

import yaml

from pydask_deploy import contract
from pydask_deploy.resources import roles_path


class Vault:
    """An Ansible ``!vault`` value: encrypted, so never checked."""


# A check returns None when the value is fine, else what it must be ("must be ...").
Check: TypeAlias = Callable[[object], str | None]

_JINJA = re.compile(r"{{|{%")
_VERSION = re.compile(
    r"^v?\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[a-z0-9]+(\.[a-z0-9]+)*)?$", re.I
)
_POSIX_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_URL = re.compile(r"^(https?|file)://\S+$")
_DURATION = re.compile(r"^\d+(\.\d+)?\s*(ms|s|m|h|d|seconds?|minutes?|hours?)?$")
_SIZE = re.compile(r"^\s*(\d+(\.\d*)?|\.\d+)\s*([kmgtp]i?b?|b)?\s*$", re.I)
_RESOURCE_NAME = re.compile(r"^[^\s=,]+$")

# The image reference grammar of distribution/reference (reference/regexp.go).
_ALNUM = r"[a-z0-9]+"
_PATH_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_IMAGE = re.compile(rf"(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?", re.ASCII)


def templated(value: object) -> bool:
    """Tell whether Ansible will compute the value later (Jinja, or a vault secret)."""
    return isinstance(value, Vault) or (isinstance(value, str) and bool(_JINJA.search(value)))


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_at_least(low: int, what: str) -> Check:
    def check(value: object) -> str | None:
        return None if is_int(value) and value >= low else f"must be {what}"  # type: ignore[operator]

    return check


def _port(value: object) -> str | None:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    ok = is_int(value) and 1 <= value <= 65535  # type: ignore[operator]
    return None if ok else "must be a port number (an integer 1-65535)"


def _boolean(value: object) -> str | None:
    return None if isinstance(value, bool) else "must be a boolean (true or false)"


def _string(value: object) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _matching(pattern: re.Pattern[str], what: str, empty_ok: bool = False) -> Check:
    def check(value: object) -> str | None:
        if isinstance(value, str) and ((empty_ok and not value) or pattern.fullmatch(value)):
            return None
        return f"must be {what}"

    return check


def _absolute_path(empty_ok: bool) -> Check:
    what = "an absolute path" + (" or ''" if empty_ok else "")

    def check(value: object) -> str | None:
        if isinstance(value, str) and ((empty_ok and not value) or value.startswith("/")):
            return None
        return f"must be {what}"

    return check


def _choice(*choices: str) -> Check:
    listed = ", ".join(choices[:-1]) + f" or {choices[-1]}"

    def check(value: object) -> str | None:
        return None if value in choices else f"must be one of {listed}"

    return check


def _string_list(value: object) -> str | None:
    ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
    return None if ok else "must be a list of strings"


def _version(value: object) -> str | None:
    if isinstance(value, str) and _VERSION.fullmatch(value):
        return None
    if _is_number(value):
        return "must be a version string such as '2026.8.0' (quote it: YAML reads it as a number)"
    return "must be a version string such as '2026.8.0'"


def _image(value: object) -> str | None:
    if isinstance(value, str) and (not value or _valid_image(value)):
        return None
    return "must be an image reference such as 'ghcr.io/dask/dask:2026.8.0'"


def _valid_image(value: str) -> bool:
    found = _IMAGE.fullmatch(value)
    return found is not None and len(found["name"]) <= 255


def _memory_limit(value: object) -> str | None:
    if is_int(value) and value >= 0:  # type: ignore[operator]
        return None
    if isinstance(value, float) and 0 < value <= 1:
        return None
    if isinstance(value, str) and (value.strip().lower() == "auto" or _size(value)):
        return None
    return "must be 'auto', a byte count, a fraction 0 < x <= 1 or a size such as '4GiB'"


def _size(text: str) -> bool:
    """Tell whether ``text`` is a size Dask understands, such as '4GiB' or '500MB'."""
    try:
        from dask.utils import parse_bytes
    except ImportError:  # pragma: no cover - dask is a dependency, but only needed here
        return bool(_SIZE.fullmatch(text))
    try:
        return int(parse_bytes(text)) > 0
    except (ValueError, TypeError):
        return False


def _resources(value: object) -> str | None:
    ok = isinstance(value, dict) and all(
        isinstance(name, str)
        and _RESOURCE_NAME.fullmatch(name)
        and (templated(amount) or (_is_number(amount) and amount >= 0))
        for name, amount in value.items()
    )
    return None if ok else "must be a mapping of resource name to number, such as {GPU: 2}"


def _timeout(value: object) -> str | None:
    ok = (_is_number(value) and value > 0) or (  # type: ignore[operator]
        isinstance(value, str) and _DURATION.fullmatch(value.strip())
    )
    return None if ok else "must be a positive number of seconds or a duration such as '60s'"


_any_string = _string
_positive_int = _int_at_least(1, "a positive integer")

# A conda subdir: linux-64, linux-aarch64, osx-arm64, win-64 ...
_CONDA_PLATFORM = re.compile(r"^(linux|osx|win|freebsd|emscripten|wasi|zos)-[a-z0-9_]+$")

# The type of every known ``dask_*`` variable. A variable in roles/dask/defaults/main.yml must
# have an entry here (tests/test_inventory.py checks it); add new ones next to their kin.
VAR_TYPES: Mapping[str, Check] = MappingProxyType(
    {
        # service account and directories
        "dask_user": _matching(_POSIX_NAME, "a user name such as 'dask'"),
        "dask_group": _matching(_POSIX_NAME, "a group name such as 'dask'"),
        "dask_base_dir": _absolute_path(empty_ok=False),
        "dask_config_dir": _absolute_path(empty_ok=False),
        "dask_data_dir": _absolute_path(empty_ok=False),
        # runtime
        "dask_version": _version,
        "dask_runtime": _choice("venv", "conda", "docker"),
        "dask_python_packages": _string_list,
        "dask_venv_python": _absolute_path(empty_ok=False),
        "dask_pip_index_url": _matching(_URL, "an http(s):// or file:// URL or ''", True),
        "dask_pip_trusted_host": _any_string,
        "dask_wheelhouse": _any_string,
        "dask_wheelhouse_download": _boolean,
        "dask_conda_environment_file": _any_string,
        "dask_conda_platform": _matching(_CONDA_PLATFORM, "a conda platform such as 'linux-64'"),
        "dask_conda_cache_dir": _any_string,
        "dask_docker_image": _image,
        "dask_docker_image_tarball": _any_string,
        "dask_docker_install": _boolean,
        # scheduler
        "dask_scheduler_address": _any_string,
        "dask_scheduler_host": _any_string,
        "dask_scheduler_port": _port,
        "dask_dashboard_port": _port,
        "dask_dashboard_address": _any_string,
        "dask_scheduler_extra_args": _string_list,
        # workers
        "dask_worker_nworkers": _positive_int,
        "dask_worker_nthreads": _int_at_least(0, "a positive integer"),  # 0: one per core
        "dask_worker_memory_limit": _memory_limit,
        "dask_worker_resources": _resources,
        "dask_worker_name": _any_string,
        "dask_worker_local_directory": _absolute_path(empty_ok=True),
        "dask_worker_death_timeout": _timeout,
        "dask_worker_extra_args": _string_list,
        # TLS
        "dask_tls": _boolean,
        "dask_tls_cert_days": _positive_int,
        "dask_tls_renew_days": _int_at_least(0, "an integer >= 0"),
        "dask_tls_pki_dir": _any_string,
    }
)

# Ansible's connection variables that pydask-deploy reads itself.
ANSIBLE_TYPES: Mapping[str, Check] = MappingProxyType(
    {
        "ansible_host": _matching(re.compile(r"^\S+$"), "a host name or IP address"),
        "ansible_port": _port,
        "ansible_user": _matching(re.compile(r"^\S+$"), "a user name"),
    }
)

# Variables VariableManager adds to every host; they do not come from the inventory.
MAGIC_VARS = frozenset(
    {
        "ansible_config_file",
        "ansible_facts",
        "ansible_playbook_python",
        "ansible_version",
        "group_names",
        "groups",
        "hostvars",
        "inventory_dir",
        "inventory_file",
        "inventory_hostname",
        "inventory_hostname_short",
        "omit",
        "playbook_dir",
    }
)


def role_defaults() -> dict[str, object]:
    """Return the shipped role's defaults (``roles/dask/defaults/main.yml``): every variable
    an inventory may set, with the value the role uses when it is not set."""
    path = roles_path() / contract.ROLE_DEFAULTS
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:  # a broken role is a bug, not bad input
        raise RuntimeError(f"cannot read role defaults {path}: {exc}") from exc
    return {str(key): value for key, value in data.items()} if isinstance(data, dict) else {}


def known_variables() -> frozenset[str]:
    """Return every ``dask_*`` variable name pydask-deploy knows."""
    return frozenset(VAR_TYPES) | frozenset(k for k in role_defaults() if k.startswith("dask_"))
