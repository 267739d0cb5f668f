"""Inventories from cloud VMs found by their tags: the part every provider shares.

A provider module (``aws.py``, ``gcp.py``, ``azure.py``, ``openstack.py``) only reads: it
lists the provider's VMs as ``Instance`` values. Everything else is decided here, without
network, so one set of tests covers every provider: which VMs are kept (running, carrying
every ``--tag``), which one is the scheduler, the worker options their tags carry, host
names and addresses.

Tag conventions (``dask-role`` can be renamed with ``--role-tag``):

- ``dask-role=scheduler``: the scheduler (exactly one instance); ``dask-role=worker`` or no
  ``dask-role`` tag: a worker; ``dask-role=scheduler-worker`` (or ``scheduler,worker`` where
  the cloud allows commas; GCP labels do not): the scheduler, and a worker too.
- ``dask-gpus=N`` -> ``dask_worker_gpus`` (one worker per GPU); ``dask-nthreads=N`` ->
  ``dask_worker_nthreads``; ``dask-nworkers=N`` -> ``dask_worker_nworkers``;
  ``dask-memory-limit=SIZE`` -> ``dask_worker_memory_limit`` (``auto``, ``8GiB``, ``0.5``).
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from pydask_deploy.errors import UsageError
from pydask_deploy.inventory import VAR_TYPES
from pydask_deploy.inventory.generate.spec import (
    ClusterSpec,
    HostEntry,
    connection_vars,
    valid_host_name,
)

ROLE_TAG = "dask-role"
RUNNING = "running"
ADDRESSES = ("private", "public")

_ROLE_WORDS = frozenset({"scheduler", "worker"})
_ROLE_SPLIT = re.compile(r"[\s,+/_-]+")
_WHOLE = re.compile(r"^\d+$")
_DECIMAL = re.compile(r"^\d*\.\d+$")
_HOST_NAME_JUNK = re.compile(r"[^A-Za-z0-9_-]+")


def _empty() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Instance:
    """One cloud VM as a provider module reports it.

    ``id`` is the provider's unique id (EC2 instance id, GCP instance id, Azure
    ``group/name``, OpenStack server id); ``name`` the name people gave it (the ``Name``
    tag, the VM name), if any. ``state`` is ``RUNNING`` for a running VM whatever the
    provider calls it, else the provider's word in lower case (``stopped``, ``shutoff``).
    ``zone`` and ``machine_type`` only go into the inventory's comments.
    """

    id: str
    name: str | None
    private_ip: str | None
    public_ip: str | None
    state: str
    tags: Mapping[str, str] = field(default_factory=_empty, hash=False)
    zone: str | None = None
    machine_type: str | None = None


@dataclass(frozen=True)
class Listing:
    """What a provider module found, and where it looked (``where``, for messages and notes:
    "AWS EC2 eu-west-1", "GCP project p, all zones")."""

    instances: tuple[Instance, ...]
    where: str


# --------------------------------------------------------------------------- --tag values


def parse_tags(values: Iterable[str], option: str = "--tag") -> dict[str, str]:
    """Read ``KEY=VALUE`` option values into a mapping (UsageError naming the bad value).

    The value may be empty (``env=`` matches a tag whose value is empty) and may contain
    ``=``; giving one key twice with different values can never match and is an error.
    """
    tags: dict[str, str] = {}
    for raw in values:
        key, sep, value = raw.partition("=")
        if not sep:
            raise UsageError(f"{option} {raw!r} must be KEY=VALUE, such as dask-cluster=prod")
        if not key.strip():
            raise UsageError(f"{option} {raw!r}: the tag key is empty")
        if key in tags and tags[key] != value:
            raise UsageError(
                f"{option} {key}={tags[key]} and {option} {raw}: an instance cannot carry "
                f"both values of {key!r}"
            )
        tags[key] = value
    return tags


def show_tags(tags: Mapping[str, str]) -> str:
    """Show a tag filter as the user typed it: ``a=1 b=2``."""
    return " ".join(f"{k}={v}" for k, v in tags.items())


# --------------------------------------------------------------------------- worker options


def _whole(low: int) -> Callable[[str], object | None]:
    def read(text: str) -> object | None:
        return int(text) if _WHOLE.fullmatch(text) and int(text) >= low else None

    return read


def _memory_limit(text: str) -> object | None:
    value: object = text
    if _WHOLE.fullmatch(text):
        value = int(text)
    elif _DECIMAL.fullmatch(text):
        value = float(text)
    return value if VAR_TYPES["dask_worker_memory_limit"](value) is None else None


@dataclass(frozen=True)
class _OptionTag:
    var: str
    read: Callable[[str], object | None]
    what: str


# The worker options an instance's tags may carry: tag -> inventory variable.
OPTION_TAGS: Mapping[str, _OptionTag] = MappingProxyType(
    {
        "dask-gpus": _OptionTag("dask_worker_gpus", _whole(0), "a whole number >= 0"),
        "dask-nthreads": _OptionTag(
            "dask_worker_nthreads", _whole(0), "a whole number >= 0 (0: one per core)"
        ),
        "dask-nworkers": _OptionTag("dask_worker_nworkers", _whole(1), "a whole number >= 1"),
        "dask-memory-limit": _OptionTag(
            "dask_worker_memory_limit", _memory_limit, "'auto', a size such as 8GiB or 0.5"
        ),
    }
)


# --------------------------------------------------------------------------- the spec


def _label(instance: Instance) -> str:
    if instance.name and instance.name != instance.id:
        return f"{instance.id} ({instance.name})"
    return instance.id


def _matches(instance: Instance, tags: Mapping[str, str]) -> bool:
    return all(instance.tags.get(k) == v for k, v in tags.items())


def _roles(instance: Instance, role_tag: str, problems: list[str]) -> frozenset[str]:
    raw = instance.tags.get(role_tag, "").strip()
    if not raw:
        return frozenset({"worker"})
    words = frozenset(w for w in _ROLE_SPLIT.split(raw.lower()) if w)
    if not words or not words <= _ROLE_WORDS:
        problems.append(
            f"{_label(instance)}: tag {role_tag!r} must be scheduler, worker or "
            f"scheduler-worker, got {raw!r}"
        )
        return frozenset()
    return words


def _worker_vars(instance: Instance, problems: list[str]) -> dict[str, object]:
    found: dict[str, object] = {}
    for tag, option in OPTION_TAGS.items():
        if tag not in instance.tags:
            continue
        raw = instance.tags[tag]
        value = option.read(raw.strip())
        if value is None:
            problems.append(f"{_label(instance)}: tag {tag!r} must be {option.what}, got {raw!r}")
        elif option.var == "dask_worker_gpus":
            if value:
                found[option.var] = value
        else:
            found[option.var] = value
    if "dask_worker_gpus" in found and "dask_worker_nworkers" in found:
        problems.append(
            f"{_label(instance)}: tags 'dask-gpus' and 'dask-nworkers' cannot both be set: a "
            "GPU instance runs one worker per GPU"
        )
    return found


def _near_misses(instance: Instance, role_tag: str, filter_keys: Iterable[str]) -> list[str]:
    """Notes for tags that look like a misspelt option tag (``dask-gpu=2``)."""
    known = [*OPTION_TAGS, role_tag]
    notes = []
    for tag in instance.tags:
        if tag in known or tag in filter_keys or not tag.lower().startswith("dask"):
            continue
        close = difflib.get_close_matches(tag, known, n=1, cutoff=0.8)
        if close:
            notes.append(f"{_label(instance)}: tag {tag!r} is ignored; did you mean {close[0]!r}?")
    return notes


def _safe_name(text: str) -> str:
    """``text`` made a valid inventory host name, or '' (junk becomes '-', dots stay)."""
    labels = (_HOST_NAME_JUNK.sub("-", label).strip("-")[:63] for label in text.split("."))
    name = ".".join(label for label in labels if label)[:253].strip("-.")
    return name if valid_host_name(name) else ""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _host_names(instances: Sequence[Instance]) -> dict[str, str]:
    """Name each instance for the inventory: its name made safe for Ansible, else its id.

    Names shared by several instances (an autoscaling group's ``Name`` tag) get the id
    appended, so every host keeps a stable, unique name across runs.
    """
    ids = {i.id: _safe_name(i.id) or f"vm-{_digest(i.id)}" for i in instances}
    base = {i.id: _safe_name(i.name or "") or ids[i.id] for i in instances}
    counts: dict[str, int] = {}
    for name in base.values():
        counts[name] = counts.get(name, 0) + 1
    names: dict[str, str] = {}
    for instance in instances:
        name = base[instance.id]
        if counts[name] > 1 and name != ids[instance.id]:
            name = _safe_name(f"{name}-{ids[instance.id]}") or ids[instance.id]
        names[instance.id] = name
    return names


def _comment(instance: Instance) -> str:
    """``i-0abc: m5.large in us-east-1a`` (what is known of it)."""
    kind = " in ".join(p for p in (instance.machine_type, instance.zone) if p)
    return f"{instance.id}: {kind}" if kind else instance.id


def cloud_spec(
    listing: Listing,
    tags: Mapping[str, str],
    *,
    source: str,
    role_tag: str = ROLE_TAG,
    address: str = "private",
    user: str | None = None,
    key_file: str | None = None,
    jump: str | None = None,
) -> ClusterSpec:
    """Decide the cluster from the instances a provider listed (UsageError, exit 2, else).

    Keeps the running instances that carry every tag of ``tags``; the one whose
    ``role_tag`` says ``scheduler`` is the scheduler, the others are workers (the scheduler
    too with ``scheduler-worker``). Every problem found is reported at once, one a line:
    a role or option tag with a bad value, no scheduler, two schedulers, no address.
    """
    if address not in ADDRESSES:
        raise UsageError(f"--address must be private or public, got {address!r}")
    kept = [i for i in listing.instances if i.state == RUNNING and _matches(i, tags)]
    if not kept:
        stopped = [i for i in listing.instances if i.state != RUNNING and _matches(i, tags)]
        why = f"no running instance in {listing.where} carries every tag {show_tags(tags)}"
        if stopped:
            shown = ", ".join(f"{_label(i)} is {i.state}" for i in stopped)
            why += f" ({shown})"
        raise UsageError(why)

    problems: list[str] = []
    warnings: list[str] = []
    names = _host_names(kept)
    kept.sort(key=lambda i: names[i.id])  # the same order on every run
    roles = {i.id: _roles(i, role_tag, problems) for i in kept}
    schedulers = [i for i in kept if "scheduler" in roles[i.id]]
    if not schedulers:
        problems.append(
            f"no instance in {listing.where} tagged {show_tags(tags)} has "
            f"{role_tag}=scheduler; tag one of {', '.join(_label(i) for i in kept)}"
        )
    elif len(schedulers) > 1:
        problems.append(
            f"{len(schedulers)} instances in {listing.where} have {role_tag}=scheduler "
            f"({', '.join(_label(i) for i in schedulers)}); a cluster has exactly one"
        )

    entries: dict[str, HostEntry] = {}
    for instance in kept:
        ip = instance.private_ip if address == "private" else instance.public_ip
        if not ip:
            hint = "" if address == "private" else "; give it one or use --address private"
            problems.append(f"{_label(instance)} has no {address} IP address{hint}")
        options = _worker_vars(instance, problems)
        warnings.extend(_near_misses(instance, role_tag, tags))
        if options and "worker" not in roles[instance.id]:
            warnings.append(
                f"{names[instance.id]} is the scheduler only; its tags "
                f"{', '.join(t for t in OPTION_TAGS if t in instance.tags)} are ignored "
                f"({role_tag}=scheduler-worker makes it a worker too)"
            )
            options = {}
        entries[instance.id] = HostEntry(
            name=names[instance.id],
            address=ip,
            vars=MappingProxyType(options),
            comment=_comment(instance),
        )
    if problems:
        raise UsageError("\n".join(problems))

    scheduler = schedulers[0]
    workers = tuple(entries[i.id] for i in kept if "worker" in roles[i.id])
    found = (
        f"{len(kept)} running instance(s) in {listing.where} tagged {show_tags(tags)}; "
        f"{address} addresses. Run the command again when instances come and go."
    )
    return ClusterSpec(
        scheduler=entries[scheduler.id],
        workers=workers,
        common_vars=MappingProxyType(connection_vars(user, key_file, jump)),
        source=source,
        notes=(found,),
        warnings=tuple(warnings),
    )
