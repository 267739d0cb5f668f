"""An inventory from host names and Slurm-style ranges: ``node[01-16,20]``, ``gpu[1-4].lab``.

Ranges are expanded with python-hostlist, the hostlist syntax HPC sites already write in
Slurm, pdsh and clush. The inventory lists every host by name rather than as an Ansible
range (``node[01:16]``): each host can then be found with grep and given its own variables.
"""

from __future__ import annotations

from collections.abc import Sequence

import hostlist  # type: ignore[import-untyped]

from pydask_deploy.errors import UsageError
from pydask_deploy.inventory.generate.spec import (
    HOST_NAME_RULE,
    ClusterSpec,
    HostEntry,
    connection_vars,
    valid_host_name,
)


def expand(spec: str, where: str = "host spec") -> list[str]:
    """The host names ``spec`` stands for, in order; UsageError naming ``where`` and ``spec``.

    Duplicates are kept (the caller says where they came from).
    """
    text = spec.strip()
    if not text:
        raise UsageError(
            f"{where} {spec!r} is empty; give host names or ranges such as node[01-16]"
        )
    try:
        names: list[str] = hostlist.expand_hostlist(text, allow_duplicates=True)
    except hostlist.BadHostlist as exc:
        hint = "; write ranges as node[01-16] or node[1-4,8]"
        if "[" in text and ":" in text:
            hint = "; Ansible's node[01:16] is written node[01-16] here"
        elif "too large" in str(exc):
            hint = f" (at most {hostlist.MAX_SIZE} hosts)"
        raise UsageError(f"{where} {spec!r} is not a valid host range: {exc}{hint}") from None
    if not names:
        raise UsageError(f"{where} {spec!r} names no host")
    for name in names:
        if not valid_host_name(name):
            raise UsageError(
                f"{where} {spec!r} gives {name!r}, which cannot be used: {HOST_NAME_RULE}"
            )
    return names


def collect(names: Sequence[str]) -> str:
    """The short hostlist form of ``names``: ``node[01-03,07]``."""
    return str(hostlist.collect_hostlist(list(names)))


def static_spec(
    specs: Sequence[str],
    scheduler: str,
    user: str | None,
    key: str | None,
    jump: str | None,
    source: str,
) -> ClusterSpec:
    """A cluster whose workers are every host of ``specs`` and whose scheduler is ``scheduler``.

    The scheduler runs a worker too when ``specs`` name it, else it runs only the scheduler.
    UsageError for a bad range, a host named twice, or a scheduler that is not one host.
    """
    if not specs:
        raise UsageError("give at least one host or range, such as node[01-16]")
    first_seen: dict[str, str] = {}
    for spec in specs:
        for name in expand(spec):
            if name in first_seen:
                first = first_seen[name]
                by = f"in {spec!r}" if first == spec else f"by {first!r} and by {spec!r}"
                raise UsageError(f"host '{name}' is listed twice: {by}")
            first_seen[name] = spec
    heads = expand(scheduler, "--scheduler")
    if len(heads) != 1:
        raise UsageError(
            f"--scheduler {scheduler!r} must name one host; it names {len(heads)}: {collect(heads)}"
        )
    head = heads[0]
    notes = [
        "Hosts are listed one by one rather than as Ansible ranges (node[01:16]), so that each "
        "can be found with grep and given its own variables.",
    ]
    if head not in first_seen:
        notes.append(f"To run a worker on {head} too, list it under dask_workers as well.")
    return ClusterSpec(
        scheduler=HostEntry(head),
        workers=tuple(HostEntry(name) for name in first_seen),
        common_vars=connection_vars(user, key, jump),
        source=source,
        notes=tuple(notes),
    )
