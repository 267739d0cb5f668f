"""What an inventory generator finds: the hosts, their roles and how to reach them.

Generators return a ``ClusterSpec``; ``render`` writes it. Values here are plain data, so a
generator is tested without writing a file and ``render`` without asking any cloud.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pydask_deploy.errors import UsageError
from pydask_deploy.observe.remote import Jump, jump_ssh_args


def _empty() -> Mapping[str, object]:
    return MappingProxyType({})


@dataclass(frozen=True)
class HostEntry:
    """One host as the inventory will list it.

    ``name`` is the inventory host name; ``address`` is written as ``ansible_host`` (None when
    the name itself resolves); ``vars`` are per-host variables such as
    ``{"dask_worker_resources": {"GPU": 2}}``; ``comment`` is one line written above the host,
    e.g. ``"i-0abc: m5.large in us-east-1a"``.
    """

    name: str
    address: str | None = None
    vars: Mapping[str, object] = field(default_factory=_empty, hash=False)
    comment: str | None = None


@dataclass(frozen=True)
class ClusterSpec:
    """A cluster to write: one scheduler, its workers, and what all hosts share.

    A worker with the scheduler's name means the scheduler host runs a worker too.
    ``common_vars`` go under ``all.vars`` (``ansible_user``, ``ansible_ssh_private_key_file``,
    ``ansible_ssh_common_args`` ...). ``source`` is the command that made it and ``notes`` are
    more header comment lines. ``warnings`` are header lines the command also shows the user
    on stderr (e.g. the nodes that were left out). ``preamble`` lines open the file, above the
    header (the lab's: who rewrites the file).
    """

    scheduler: HostEntry
    workers: tuple[HostEntry, ...]
    common_vars: Mapping[str, object]
    source: str
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    preamble: tuple[str, ...] = ()


# An RFC 1123 host name (or an IPv4 address, which matches it too); Ansible also takes `_`.
# Anything else would be misread in a YAML inventory key: `[` starts a range, `:` a port.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
HOST_NAME_RULE = (
    "a host name is letters, digits, '-' and '_' in dot-separated parts, "
    "not starting or ending with '-' (or an IPv4 address)"
)
_USER = re.compile(r"[^\s@:]+")


def valid_host_name(name: str) -> bool:
    """Tell whether ``name`` can be an inventory host name as written, without quoting."""
    return bool(HOST_NAME.fullmatch(name))


def connection_vars(user: str | None, key_file: str | None, jump: str | None) -> dict[str, object]:
    """The ``all.vars`` for ``--user``, ``--key`` and ``--jump`` (each left out when None).

    ``--jump [USER@]HOST[:PORT]`` becomes an ``ansible_ssh_common_args`` ProxyCommand through
    ``remote.jump_ssh_args``, so ``status`` and ``logs`` go the same way; ``--jump none``
    means no jump host. ``--key`` must exist here (a typo would otherwise surface later as
    "Permission denied" on every host); it is written as given, so ``~`` stays portable.

    No ``ansible_become``: the playbook already runs with become, and ``status``/``logs`` use
    ``sudo -n`` for any login user but root. (Were it set, the role's controller-side tasks
    still turn it off with a task variable, which outranks the inventory.)
    """
    found: dict[str, object] = {}
    if user is not None:
        if not _USER.fullmatch(user):
            raise UsageError(f"--user {user!r}: a user name has no spaces, '@' or ':'")
        found["ansible_user"] = user
    if key_file is not None:
        if not key_file.strip():
            raise UsageError("--key '': give the path of a private key file")
        if not os.path.isfile(os.path.expanduser(key_file)):
            raise UsageError(f"--key {key_file}: no such file")
        found["ansible_ssh_private_key_file"] = key_file
    hop = parse_jump(jump, "--jump")
    if hop is not None:
        found["ansible_ssh_common_args"] = jump_ssh_args(hop, key_file)
    return found


def parse_jump(spec: str | None, option: str) -> Jump | None:
    """Read a ``[USER@]HOST[:PORT]`` option value (None or ``none``: no host), or UsageError."""
    if spec is None or spec.strip().lower() == "none":
        return None
    try:
        return Jump.parse(spec)
    except ValueError as exc:
        raise UsageError(f"{option} {spec!r}: {exc}") from None
