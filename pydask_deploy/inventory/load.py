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
import functools
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeAlias

import yaml

from pydask_deploy.contract import SCHEDULER_GROUP, WORKERS_GROUP
from pydask_deploy.errors import InventoryError
from pydask_deploy.inventory import cache as inventory_cache
from pydask_deploy.inventory.model import Host, Inventory
from pydask_deploy.inventory.variables import (
    ANSIBLE_TYPES,
    HOME_PATHS,
    MAGIC_VARS,
    VAR_TYPES,
    Vault,
    is_int,
    known_variables,
    normal_path,
    path_under,
    protect_home,
    role_defaults,
    templated,
)
from pydask_deploy.resources import playbook_path

# --------------------------------------------------------------------------- YAML pass


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
_Loader.add_constructor("!vault", lambda loader, node: Vault())
_Loader.add_constructor("!unsafe", lambda loader, node: str(node.value))


def _show(value: object) -> str:
    """Show a value in a message as the user wrote it, shortly."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, Vault):
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
        check = VAR_TYPES.get(key) or ANSIBLE_TYPES.get(key)
        if check is None or templated(value):
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
            str(k): _plain(v) for k, v in resolved.items() if k not in MAGIC_VARS
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
        port=port if is_int(port) else 22,  # type: ignore[arg-type]
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
        if not templated(host.address):
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
        if is_int(sched_port) and sched_port == setting(sched, "dask_dashboard_port"):
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
    # one problem a line, with every host it concerns (an all.vars setting concerns them all)
    by_problem: dict[str, list[str]] = {}
    for name in worker_names:
        for problem in _worker_problems(hosts[name], functools.partial(setting, name)):
            by_problem.setdefault(problem, []).append(name)
    for problem, names in by_problem.items():
        problems.add(shown, f"{_hosts_phrase(names)}: {problem}")
    scheduler = hosts[schedulers[0]] if schedulers else None
    return scheduler, tuple(hosts[name] for name in worker_names)


_PATH_LISTS = ("dask_worker_read_write_paths", "dask_worker_read_only_paths")


def _worker_problems(host: Host, setting: Callable[[str], object]) -> list[str]:
    """What a worker host's resolved settings say that cannot work together: data paths over
    the tool's own directories, in both lists, or under home directories the unit hides;
    GPUs beside ``dask_worker_nworkers`` or a GPU resource."""
    found: list[str] = []
    declared: dict[str, tuple[str, str]] = {}  # normalised path -> (variable, as written)
    for key in _PATH_LISTS:
        value = setting(key)
        if not isinstance(value, list):
            continue  # a template, or a type error already reported
        for item in value:
            if isinstance(item, str) and item.startswith("/"):
                path = normal_path(item)
                if path in declared and declared[path][0] != key:
                    found.append(
                        f"{item!r} is in both `{declared[path][0]}` and `{key}`; list it in one"
                    )
                declared.setdefault(path, (key, item))
    own = {key: setting(key) for key in ("dask_base_dir", "dask_config_dir", "dask_data_dir")}
    local = setting("dask_worker_local_directory")
    own["dask_worker_local_directory"] = local or None
    for path, (key, item) in declared.items():
        for own_key, own_value in own.items():
            if not isinstance(own_value, str) or templated(own_value) or not own_value:
                continue
            mine = normal_path(own_value)
            if path_under(path, mine) or path_under(mine, path):
                found.append(
                    f"`{key}` has {item!r}, which overlaps `{own_key}` ({own_value}); the "
                    "role gives the workers what they need there: leave it out"
                )
    if declared and setting("dask_runtime") == "docker":
        found.append(
            "data paths need the venv or conda runtime: a docker worker sees only what is "
            "mounted into its container, which pydask-deploy does not do for them"
        )
    hidden = setting("dask_worker_protect_home")
    if protect_home(hidden) in ("yes", "tmpfs"):
        for path, (key, item) in declared.items():
            home = next((h for h in HOME_PATHS if path_under(path, h)), None)
            if home:
                found.append(
                    f"`{key}` has {item!r} under {home}, which `dask_worker_protect_home: "
                    f"{protect_home(hidden)}` hides from the workers; set it to read-only or no"
                )
    gpus = host.vars.get("dask_worker_gpus")
    if templated(gpus):
        found.append(
            f"`dask_worker_gpus` is {gpus!r}: it must be a number, not a template, since it "
            "names the host's units"
        )
    elif is_int(gpus) and gpus > 0:  # type: ignore[operator]
        if "dask_worker_nworkers" in host.vars:
            found.append(
                f"`dask_worker_gpus: {gpus}` and `dask_worker_nworkers: "
                f"{host.vars['dask_worker_nworkers']}` are both set; a GPU host runs one worker "
                "per GPU: remove `dask_worker_nworkers` there"
            )
        if setting("dask_runtime") == "docker":
            found.append(
                f"`dask_worker_gpus: {gpus}` needs the venv or conda runtime: a docker worker "
                "would need the NVIDIA container toolkit, which pydask-deploy does not set up"
            )
        resources = setting("dask_worker_resources")
        if isinstance(resources, dict) and "GPU" in resources:
            found.append(
                f"`dask_worker_gpus: {gpus}` and `dask_worker_resources: {resources}` both "
                "give GPUs; each GPU worker gets GPU=1: remove GPU from `dask_worker_resources`"
            )
    return found


# --------------------------------------------------------------------------- entry point


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate an inventory; raise ``InventoryError`` listing every problem.

    No SSH and no network: this reads the inventory file, the ``group_vars/`` and
    ``host_vars/`` beside it and the shipped role's defaults.
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
