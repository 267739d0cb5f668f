"""The values a validated inventory is read into: its hosts and their variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType


def _empty() -> Mapping[str, object]:
    return MappingProxyType({})


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

    ``defaults`` are the ``dask_*`` defaults of the shipped role; ``dask_vars`` lays a
    host's inventory values over them, which is what the role will see (before Jinja).
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
