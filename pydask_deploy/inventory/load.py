"""Load and validate a cluster inventory: a standard Ansible YAML inventory.

Two passes, both without SSH or network:

1. PyYAML reads the inventory file and the ``group_vars/``/``host_vars/`` files beside it, so
   a problem is reported with its file and line: YAML syntax, duplicate keys (which PyYAML
   and Ansible silently merge), the shape of groups, and each ``dask_*`` value where it is
   written (unknown name, wrong type or value).
2. Ansible's own ``InventoryManager`` and ``VariableManager`` (in-process) expand host ranges
   and resolve variable precedence exactly as ``ansible-playbook`` will; the checks that need
   resolved values (one scheduler, duplicate addresses, port clash, docker image) run on them.

Every problem found is reported at once, one a line, in one ``InventoryError``.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeAlias

import yaml

from pydask_deploy.errors import InventoryError
from pydask_deploy.inventory import cache as inventory_cache
from pydask_deploy.resources import playbook_path, roles_path

SCHEDULER_GROUP = "dask_scheduler"
WORKERS_GROUP = "dask_workers"


def _empty() -> Mapping[str, object]:
    return MappingProxyType({})


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Host:
    """One machine of the cluster as the inventory names it.

    ``address`` is ``ansible_host`` (else the name), ``port`` is ``ansible_port`` (else 22),
    ``user`` is ``ansible_user`` (else None: SSH decides). ``vars`` holds every variable
    Ansible resolves for the host from the inventory (``ansible_*`` included, Ansible's magic
    variables excluded), as written: Jinja templates are not rendered.
    """

    name: str
    address: str
    port: int = 22
    user: str | None = None
    vars: Mapping[str, object] = field(default_factory=_empty, hash=False, repr=False)


@dataclass(frozen=True)
class Inventory:
    """A validated inventory: one scheduler and zero or more workers.

    ``defaults`` are the ``dask_*`` defaults of the shipped roles; ``dask_vars`` lays a
    host's inventory values over them, which is what the roles will see (before Jinja).
    """

    path: Path
    scheduler: Host
    workers: tuple[Host, ...]
    defaults: Mapping[str, object] = field(default_factory=_empty, hash=False, repr=False)

    @property
    def hosts(self) -> tuple[Host, ...]:
        """Every host of the cluster once, the scheduler first (it may also be a worker)."""
        return (self.scheduler, *(w for w in self.workers if w.name != self.scheduler.name))

    def host(self, name: str) -> Host:
        """Return the cluster host called ``name`` (KeyError if there is none)."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def dask_vars(self, host: Host | str) -> Mapping[str, object]:
        """Return the ``dask_*`` variables of a host: role defaults, then inventory values."""
        found = self.host(host) if isinstance(host, str) else host
        merged = dict(self.defaults)
        merged.update((k, v) for k, v in found.vars.items() if k.startswith("dask_"))
        return MappingProxyType(merged)


# --------------------------------------------------------------------------- value checks

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


def _templated(value: object) -> bool:
    """Tell whether Ansible will compute the value later (Jinja, or a vault secret)."""
    return isinstance(value, _Vault) or (isinstance(value, str) and bool(_JINJA.search(value)))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_at_least(low: int, what: str) -> Check:
    def check(value: object) -> str | None:
        return None if _is_int(value) and value >= low else f"must be {what}"  # type: ignore[operator]

    return check


def _port(value: object) -> str | None:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    ok = _is_int(value) and 1 <= value <= 65535  # type: ignore[operator]
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
    if _is_int(value) and value >= 0:  # type: ignore[operator]
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
        and (_templated(amount) or (_is_number(amount) and amount >= 0))
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

# The type of every known ``dask_*`` variable. A variable in a role's defaults/main.yml must
# have an entry here (tests/test_inventory.py checks it); add new ones next to their kin.
VAR_TYPES: Mapping[str, Check] = MappingProxyType(
    {
        # dask_common
        "dask_user": _matching(_POSIX_NAME, "a user name such as 'dask'"),
        "dask_group": _matching(_POSIX_NAME, "a group name such as 'dask'"),
        "dask_base_dir": _absolute_path(empty_ok=False),
        "dask_config_dir": _absolute_path(empty_ok=False),
        "dask_data_dir": _absolute_path(empty_ok=False),
        # dask_runtime
        "dask_version": _version,
        "dask_runtime": _choice("venv", "conda", "docker"),
        "dask_python_packages": _string_list,
        "dask_venv_python": _absolute_path(empty_ok=False),
        "dask_pip_index_url": _matching(_URL, "an http(s):// or file:// URL or ''", True),
        "dask_pip_trusted_host": _any_string,
        "dask_wheelhouse": _any_string,
        "dask_wheelhouse_download": _boolean,
        "dask_conda_installer_url": _matching(_URL, "an http(s):// or file:// URL"),
        "dask_conda_installer_file": _any_string,
        "dask_conda_prefix": _absolute_path(empty_ok=False),
        "dask_conda_environment_file": _any_string,
        "dask_docker_image": _image,
        "dask_docker_image_tarball": _any_string,
        "dask_docker_install": _boolean,
        # dask_scheduler
        "dask_scheduler_address": _any_string,
        "dask_scheduler_host": _any_string,
        "dask_scheduler_port": _port,
        "dask_dashboard_port": _port,
        "dask_dashboard_address": _any_string,
        "dask_scheduler_extra_args": _string_list,
        # dask_worker
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
_ANSIBLE_TYPES: Mapping[str, Check] = MappingProxyType(
    {
        "ansible_host": _matching(re.compile(r"^\S+$"), "a host name or IP address"),
        "ansible_port": _port,
        "ansible_user": _matching(re.compile(r"^\S+$"), "a user name"),
    }
)

# Variables VariableManager adds to every host; they do not come from the inventory.
_MAGIC_VARS = frozenset(
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
    """Return the defaults of the shipped roles (``roles/*/defaults/main.yml``), merged."""
    defaults: dict[str, object] = {}
    for role in sorted(roles_path().glob("*/defaults/main.y*ml")):
        try:
            data = yaml.safe_load(role.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:  # a broken role is a bug, not bad input
            raise RuntimeError(f"cannot read role defaults {role}: {exc}") from exc
        if isinstance(data, dict):
            for key, value in data.items():
                defaults.setdefault(str(key), value)
    return defaults


def known_variables() -> frozenset[str]:
    """Return every ``dask_*`` variable name pydask-deploy knows."""
    return frozenset(VAR_TYPES) | frozenset(k for k in role_defaults() if k.startswith("dask_"))


# --------------------------------------------------------------------------- YAML pass


class _Vault:
    """An Ansible ``!vault`` value: encrypted, so never checked."""


class _Map(dict[Any, Any]):
    """A YAML mapping that remembers its line and the line of each key."""

    line: int = 0
    key_lines: dict[Any, int]
    kind: str = ""  # "hosts of group 'x'", set by the shape walk, for duplicate messages


class _Loader(yaml.SafeLoader):
    """A safe loader that records duplicate keys and lines, and knows Ansible's tags."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[_Map, object, int, int]] = []


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[_Map]:
    data = _Map()
    data.line = node.start_mark.line + 1
    data.key_lines = {}
    yield data
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` may be overridden on purpose
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            first = data.key_lines.get(key)
        except TypeError:  # unhashable key: construct_mapping reports it
            continue
        if first is None:
            data.key_lines[key] = line
        else:
            loader.duplicates.append((data, key, first, line))
    data.update(loader.construct_mapping(node))


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("!vault", lambda loader, node: _Vault())
_Loader.add_constructor("!unsafe", lambda loader, node: str(node.value))


def _show(value: object) -> str:
    """Show a value in a message as the user wrote it, shortly."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, _Vault):
        text = "!vault"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class _Problems:
    """Collects problem lines in order, each once."""

    lines: list[str] = field(default_factory=list)
    fatal: bool = False  # the shape is broken: Ansible cannot be asked to resolve it

    def add(self, where: str, message: str, fatal: bool = False) -> None:
        line = f"{where}: {message}"
        if line not in self.lines:
            self.lines.append(line)
        self.fatal = self.fatal or fatal


_Duplicates: TypeAlias = list[tuple[_Map, object, int, int]]


def _read_yaml(shown: str, problems: _Problems) -> tuple[object, _Duplicates] | None:
    """Load one YAML file: (data, its duplicate keys), or None if it cannot be read."""
    try:
        with open(shown, encoding="utf-8") as stream:
            text = stream.read()
    except IsADirectoryError:
        problems.add(shown, "is a directory; give the inventory file", True)
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        problems.add(shown, f"cannot read file: {reason}", True)
        return None
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark else shown
        what = exc.problem or exc.context or "unreadable"
        problems.add(where, f"invalid YAML: {what}", True)
        return None
    except yaml.YAMLError as exc:
        problems.add(shown, f"invalid YAML: {exc}", True)
        return None
    finally:
        loader.dispose()
    return data, loader.duplicates


def _report_duplicates(shown: str, duplicates: _Duplicates, problems: _Problems) -> None:
    """Report duplicate keys, after the shape walk has said which mappings hold hosts.

    Fatal: Ansible would keep the last one with a warning of its own.
    """
    for mapping, key, first, line in duplicates:
        if mapping.kind:
            what = f"host {_show(key)} is listed twice in the {mapping.kind}"
        else:
            what = f"duplicate key {_show(key)}"
        problems.add(f"{shown}:{line}", f"{what} (first at line {first})", True)


def _check_vars(
    mapping: object, shown: str, scope: str, known: frozenset[str], problems: _Problems
) -> None:
    """Check the variables of one `vars` mapping (or host entry, or vars file)."""
    prefix = f"{scope}: " if scope else ""
    if not isinstance(mapping, _Map):
        problems.add(shown, f"{prefix}variables must be a mapping, got {_show(mapping)}", True)
        return
    for key, value in mapping.items():
        where = f"{shown}:{mapping.key_lines.get(key, mapping.line)}"
        if not isinstance(key, str):
            problems.add(where, f"{prefix}variable name must be a string, got {_show(key)}", True)
            continue
        if key.startswith("dask_") and key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean `{close[0]}`?" if close else " (not a pydask-deploy variable)"
            problems.add(where, f"{prefix}unknown variable `{key}`{hint}")
            continue
        check = VAR_TYPES.get(key) or _ANSIBLE_TYPES.get(key)
        if check is None or _templated(value):
            continue
        expected = check(value)
        if expected:
            problems.add(where, f"{prefix}`{key}` {expected}, got {_show(value)}")


def _section(group: _Map, key: str, name: str, shown: str, problems: _Problems) -> _Map | None:
    """Return a group's `hosts`/`vars`/`children` mapping (Ansible allows a bare name)."""
    value = group[key]
    where = f"{shown}:{group.key_lines.get(key, group.line)}"
    if value is None:
        return None
    if isinstance(value, str) and key != "vars":
        single = _Map({value: None})
        single.line, single.key_lines = group.line, {value: group.key_lines.get(key, 0)}
        return single
    if not isinstance(value, _Map):
        hint = " (write each name as a key ending in ':')" if isinstance(value, list) else ""
        problems.add(
            where, f"group '{name}': `{key}` must be a mapping, got {_show(value)}{hint}", True
        )
        return None
    return value


def _expand_pattern(pattern: str) -> list[str]:
    """Expand a host pattern (`node[01:16]`, `web:2222`) as Ansible's YAML plugin does."""
    from ansible.parsing.utils.addresses import (  # type: ignore[import-untyped]
        parse_address,
    )
    from ansible.plugins.inventory import (  # type: ignore[import-untyped]
        detect_range,
        expand_hostname_range,
    )

    try:
        host, _ = parse_address(pattern, allow_ranges=True)
    except Exception:  # Ansible does the same: not an address, keep the pattern
        host = pattern
    if detect_range(host):
        return [str(name) for name in expand_hostname_range(host)]
    return [str(host)]


def _check_group(
    name: str,
    data: object,
    shown: str,
    line: int,
    known: frozenset[str],
    problems: _Problems,
) -> None:
    """Check one group definition (and its children) where it is written."""
    if data is None:
        return
    if not isinstance(data, _Map):
        problems.add(
            f"{shown}:{line}",
            f"group '{name}' must be a mapping with `hosts`, `vars` or `children`, "
            f"got {_show(data)}",
            True,
        )
        return
    scope = "all" if name == "all" else f"group '{name}'"
    for key in data:
        where = f"{shown}:{data.key_lines.get(key, data.line)}"
        if key == "vars":
            section = _section(data, key, name, shown, problems)
            if section is not None:
                _check_vars(section, shown, scope, known, problems)
        elif key == "children":
            section = _section(data, key, name, shown, problems)
            for child, child_data in (section or {}).items():
                child_line = section.key_lines.get(child, 0) if section else 0
                if not isinstance(child, str):
                    problems.add(
                        f"{shown}:{child_line}", f"group name must be a string, got {child!r}", True
                    )
                    continue
                _check_group(child, child_data, shown, child_line, known, problems)
        elif key == "hosts":
            section = _section(data, key, name, shown, problems)
            if section is not None:
                section.kind = f"hosts of group '{name}'"
                _check_hosts(section, name, shown, known, problems)
        elif isinstance(key, str) and key.startswith(("dask_", "ansible_")):
            problems.add(where, f"group '{name}': variable `{key}` must be under `vars`", True)
        else:
            close = difflib.get_close_matches(str(key), ["hosts", "vars", "children"], n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            problems.add(
                where,
                f"group '{name}': unexpected key {_show(key)}; a group has only `hosts`, "
                f"`vars` and `children`{hint}",
                True,
            )


def _check_hosts(
    hosts: _Map, group: str, shown: str, known: frozenset[str], problems: _Problems
) -> None:
    """Check the `hosts` of one group: names, ranges, overlaps and host variables."""
    first_seen: dict[str, tuple[str, int]] = {}
    for pattern, host_vars in hosts.items():
        line = hosts.key_lines.get(pattern, hosts.line)
        where = f"{shown}:{line}"
        if not isinstance(pattern, str):
            problems.add(where, f"host name must be a string, got {_show(pattern)}; quote it", True)
            continue
        try:
            names = _expand_pattern(pattern)
        except Exception as exc:  # AnsibleError, ValueError from a malformed range
            problems.add(where, f"invalid host pattern {pattern!r}: {exc}", True)
            continue
        for host in names:
            seen = first_seen.setdefault(host, (pattern, line))
            if seen[0] != pattern:
                problems.add(
                    where,
                    f"host '{host}' is listed twice in the hosts of group '{group}' "
                    f"(also as {seen[0]!r} at line {seen[1]})",
                )
        if host_vars is not None:
            _check_vars(host_vars, shown, f"host '{pattern}'", known, problems)


def _check_inventory_file(shown: str, known: frozenset[str], problems: _Problems) -> bool:
    """The PyYAML pass over the inventory file. Return whether Ansible can take it from here."""
    loaded = _read_yaml(shown, problems)
    if loaded is None:
        return False
    data, duplicates = loaded
    if data is None:
        problems.add(shown, "the inventory is empty", True)
        return False
    if not isinstance(data, _Map):
        problems.add(shown, f"an inventory must be a mapping of groups, got {_show(data)}", True)
        return False
    if "plugin" in data:
        problems.add(
            shown,
            f"this is an inventory plugin configuration (plugin: {data['plugin']}), not a "
            "static YAML inventory; write one with `pydask-deploy inventory ...`",
            True,
        )
        return False
    for name, group in data.items():
        line = data.key_lines.get(name, data.line)
        if not isinstance(name, str):
            problems.add(f"{shown}:{line}", f"group name must be a string, got {_show(name)}", True)
            continue
        _check_group(name, group, shown, line, known, problems)
    _report_duplicates(shown, duplicates, problems)
    return not problems.fatal


def _check_vars_files(
    base: str,
    groups: Sequence[str],
    hosts: Sequence[str],
    known: frozenset[str],
    problems: _Problems,
) -> bool:
    """Check `group_vars/` and `host_vars/` beside the inventory, as Ansible finds them."""
    from ansible.parsing.dataloader import DataLoader  # type: ignore[import-untyped]

    loader = DataLoader()
    for subdir, names in (("group_vars", groups), ("host_vars", hosts)):
        directory = os.path.join(base, subdir)
        if not os.path.isdir(directory):
            continue
        for name in names:
            for found in loader.find_vars_files(directory, name):
                loaded = _read_yaml(found, problems)
                if loaded is not None and loaded[0] is not None:
                    _check_vars(loaded[0], found, "", known, problems)
                    _report_duplicates(found, loaded[1], problems)
    return not problems.fatal


# --------------------------------------------------------------------------- Ansible pass


def _plain(value: object) -> object:
    """Turn Ansible's tagged values into plain Python ones (str, int, dict, list ...)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    return value  # e.g. an encrypted vault value, left as Ansible gave it


@dataclass(frozen=True)
class _Resolved:
    """What Ansible makes of the inventory."""

    hosts: dict[str, dict[str, object]]  # every host, in inventory order -> its vars
    groups: dict[str, list[str]]  # group name -> its hosts (children included)


def _ansible_names(path: Path) -> tuple[list[str], list[str]] | str:
    """Parse the file with Ansible's YAML inventory plugin alone: (groups, hosts) or an error.

    InventoryManager turns a failed source into warnings and an empty inventory; parsing on
    the side first gives the reason instead, and the names whose vars files to check.
    """
    from ansible.errors import AnsibleError  # type: ignore[import-untyped]
    from ansible.inventory.data import InventoryData  # type: ignore[import-untyped]
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import inventory_loader  # type: ignore[import-untyped]

    data = InventoryData()
    try:
        inventory_loader.get("yaml").parse(data, DataLoader(), str(path), cache=False)
    except AnsibleError as exc:
        return str(exc.message).splitlines()[0]
    return [str(g) for g in data.groups], [str(h) for h in data.hosts]


def _resolve(path: Path) -> _Resolved:
    """Resolve hosts, groups and variables with Ansible itself, as ansible-playbook would."""
    from ansible.inventory.manager import InventoryManager  # type: ignore[import-untyped]
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager  # type: ignore[import-untyped]

    loader = DataLoader()
    # ansible-playbook reads playbook-level group_vars/ beside the playbook, not in the
    # current directory: resolve as the shipped playbooks will see it.
    loader.set_basedir(str(playbook_path("site.yml").parent))
    # An absolute source: Ansible finds group_vars/ beside a relative one from its basedir.
    inventory = InventoryManager(loader=loader, sources=[os.path.abspath(path)])
    variables = VariableManager(loader=loader, inventory=inventory)
    hosts: dict[str, dict[str, object]] = {}
    for host in inventory.get_hosts():
        resolved = variables.get_vars(host=host, include_hostvars=False)
        hosts[str(host.name)] = {
            str(k): _plain(v) for k, v in resolved.items() if k not in _MAGIC_VARS
        }
    groups = {
        str(name): [str(h.name) for h in group.get_hosts()]
        for name, group in inventory.groups.items()
    }
    return _Resolved(hosts, groups)


# --------------------------------------------------------------------------- cluster checks


def _make_host(name: str, host_vars: dict[str, object]) -> Host:
    address = host_vars.get("ansible_host")
    port = host_vars.get("ansible_port")
    user = host_vars.get("ansible_user")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    return Host(
        name=name,
        address=address if isinstance(address, str) and address else name,
        port=port if _is_int(port) else 22,  # type: ignore[arg-type]
        user=user if isinstance(user, str) and user else None,
        vars=MappingProxyType(host_vars),
    )


def _hosts_phrase(names: Sequence[str]) -> str:
    quoted = [f"'{n}'" for n in names[:5]]
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ("host " if len(names) == 1 else "hosts ") + ", ".join(quoted) + more


def _check_cluster(
    shown: str,
    resolved: _Resolved,
    defaults: Mapping[str, object],
    problems: _Problems,
) -> tuple[Host | None, tuple[Host, ...]]:
    """Checks on resolved values: one scheduler, duplicates, ports, docker image."""
    schedulers = resolved.groups.get(SCHEDULER_GROUP)
    if schedulers is None:
        problems.add(
            shown,
            f"no `{SCHEDULER_GROUP}` group; add it under `all.children` with exactly one host",
        )
    elif not schedulers:
        problems.add(shown, f"group `{SCHEDULER_GROUP}` has no host; it needs exactly one")
    elif len(schedulers) > 1:
        problems.add(
            shown,
            f"group `{SCHEDULER_GROUP}` must have exactly one host, found {len(schedulers)}: "
            + ", ".join(f"'{n}'" for n in schedulers),
        )
    worker_names = resolved.groups.get(WORKERS_GROUP, [])
    cluster = list(dict.fromkeys([*(schedulers or [])[:1], *worker_names]))
    hosts = {name: _make_host(name, resolved.hosts[name]) for name in cluster}

    def setting(name: str, key: str) -> object:
        return hosts[name].vars.get(key, defaults.get(key))

    by_endpoint: dict[tuple[str, int], list[str]] = {}
    for host in hosts.values():
        if not _templated(host.address):
            by_endpoint.setdefault((host.address, host.port), []).append(host.name)
    for (address, port), names in by_endpoint.items():
        if len(names) > 1:
            problems.add(
                shown,
                f"{_hosts_phrase(names)} are the same machine ({address}, port {port}); "
                "list each machine once",
            )

    if schedulers:
        sched = schedulers[0]
        sched_port = setting(sched, "dask_scheduler_port")
        if _is_int(sched_port) and sched_port == setting(sched, "dask_dashboard_port"):
            problems.add(
                shown,
                f"host '{sched}': `dask_scheduler_port` and `dask_dashboard_port` are both "
                f"{sched_port}; they must differ",
            )

    no_image = [
        name
        for name in hosts
        if setting(name, "dask_runtime") == "docker" and not setting(name, "dask_docker_image")
    ]
    if no_image:
        problems.add(
            shown,
            f"{_hosts_phrase(no_image)}: `dask_runtime` is 'docker' but `dask_docker_image` "
            "is not set",
        )
    scheduler = hosts[schedulers[0]] if schedulers else None
    return scheduler, tuple(hosts[name] for name in worker_names)


# --------------------------------------------------------------------------- entry point


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate an inventory; raise ``InventoryError`` listing every problem.

    No SSH and no network: this reads the inventory file, the ``group_vars/`` and
    ``host_vars/`` beside it and the shipped roles' defaults.
    """
    shown = str(path)
    path = Path(path)
    defaults = {k: v for k, v in role_defaults().items() if k.startswith("dask_")}
    stored = inventory_cache.read(path)
    if stored is not None:  # this very inventory validated before: same files, same result
        return _from_document(path, stored, defaults)
    problems = _Problems()
    known = known_variables()

    # Ansible may print warnings; they belong on stderr (stdout may carry --json).
    with contextlib.redirect_stdout(sys.stderr):
        if not _check_inventory_file(shown, known, problems):
            raise InventoryError("\n".join(problems.lines))
        names = _ansible_names(path)
        if isinstance(names, str):
            problems.add(shown, f"Ansible cannot read this inventory: {names}")
            raise InventoryError("\n".join(problems.lines))
        base = os.path.dirname(shown)
        if not _check_vars_files(base, *names, known, problems):
            raise InventoryError("\n".join(problems.lines))
        resolved = _resolve(path)

    scheduler, workers = _check_cluster(shown, resolved, defaults, problems)
    if problems.lines or scheduler is None:
        raise InventoryError("\n".join(problems.lines))
    inventory = Inventory(
        path=path, scheduler=scheduler, workers=workers, defaults=MappingProxyType(defaults)
    )
    inventory_cache.write(path, _to_document(inventory))
    return inventory


def _to_document(inventory: Inventory) -> dict[str, Any]:
    return {
        "scheduler": inventory.scheduler.name,
        "workers": [w.name for w in inventory.workers],
        "hosts": {h.name: dict(h.vars) for h in inventory.hosts},
    }


def _from_document(path: Path, document: dict[str, Any], defaults: dict[str, object]) -> Inventory:
    hosts = {name: _make_host(name, dict(v)) for name, v in document["hosts"].items()}
    return Inventory(
        path=path,
        scheduler=hosts[document["scheduler"]],
        workers=tuple(hosts[name] for name in document["workers"]),
        defaults=MappingProxyType(defaults),
    )
