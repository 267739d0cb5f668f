"""``apply``: make the certificates current, leave out hosts in sync, run site.yml on the rest.

The steps, in order: TLS (``prepare_tls``: the cluster's certificates on the controller, and
the warnings a user should see), the in-sync check (``insync``: one SSH round proves which
hosts need nothing), then Ansible on the others (``run_playbook``). ``upgrade`` stages with
the same pieces.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydask_deploy.deploy import insync
from pydask_deploy.deploy import pki as pki_module
from pydask_deploy.deploy.pki import Pki
from pydask_deploy.deploy.plan import plan_apply
from pydask_deploy.deploy.run import HostResult, OnProgress, RunResult, run_playbook
from pydask_deploy.inventory import Inventory
from pydask_deploy.observe import connection

Say = Callable[[str], None]


def prepare_tls(inventory: Inventory, *, check: bool = False) -> tuple[Pki | None, list[str]]:
    """The cluster's certificates made current (none written with ``check``), or None when
    the inventory turns TLS off; and the warnings to show (a CA near its end, TLS off)."""
    if connection.tls_enabled(inventory):
        pki = pki_module.ensure_pki(inventory, write=not check)
        return pki, list(pki.warnings)
    return None, [
        f"dask_tls is false: anyone who reaches {connection.cluster_address(inventory)} "
        "can run code as the dask user on every worker; remove `dask_tls: false` to "
        "turn mutual TLS back on"
    ]


def limit_hosts(inventory: Inventory, pattern: str) -> tuple[str, ...]:
    """The cluster hosts an Ansible host pattern selects, as ``--limit`` would."""
    from ansible.inventory.manager import InventoryManager  # type: ignore[import-untyped]
    from ansible.parsing.dataloader import DataLoader  # type: ignore[import-untyped]

    manager = InventoryManager(loader=DataLoader(), sources=[str(inventory.path.resolve())])
    chosen = {str(h.name) for h in manager.list_hosts(pattern)}
    return tuple(h.name for h in inventory.hosts if h.name in chosen)


def _by_reason(run: Mapping[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, reason in run.items():
        grouped.setdefault(reason, []).append(name)
    return grouped


def _few(names: Sequence[str], shown: int = 6) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


@dataclass(frozen=True)
class FastPath:
    """What the probe decided for a run: hosts left out as in sync, and why others ran."""

    checked: bool
    in_sync: tuple[str, ...] = ()
    run: Mapping[str, str] | None = None  # host -> why it runs
    seconds: float = 0.0


def converge(
    inventory: Inventory,
    *,
    check: bool,
    diff: bool,
    limit: str | None,
    full: bool,
    pki: Pki | None,
    on_progress: OnProgress,
    say: Callable[[str], None],
) -> tuple[RunResult, FastPath]:
    """``apply``: probe, then run site.yml on the hosts not in sync (all with ``full``).

    Returns the RunResult (in-sync hosts included, with no task counted) and the FastPath.
    """
    started = time.monotonic()
    chosen = limit_hosts(inventory, limit) if limit else tuple(h.name for h in inventory.hosts)
    checks = insync.host_checks(inventory, pki, [inventory.host(n) for n in chosen])
    extravars = insync.record_extravars(checks)
    fast = FastPath(checked=False)
    in_sync: tuple[str, ...] = ()
    if not full and chosen:
        verdicts, seconds = insync.probe(inventory, checks)
        in_sync = tuple(n for n in chosen if verdicts[n].in_sync)
        run = {n: verdicts[n].reason for n in chosen if not verdicts[n].in_sync}
        fast = FastPath(True, in_sync, run, seconds)
        if in_sync:
            say(
                f"in sync, left out: {_few(in_sync)} (checked over SSH in {seconds:.1f} s; "
                "--full runs every task)"
            )
        for reason, names in _by_reason(run).items():
            say(f"runs the playbook: {_few(names)}: {reason}")
    to_run = [n for n in chosen if n not in in_sync]
    kept = tuple(HostResult(name=n) for n in in_sync)
    if chosen and not to_run:
        say("every host is in sync: Ansible not started")
        result = RunResult(
            hosts=kept,
            status="successful",
            rc=0,
            seconds=time.monotonic() - started,
            check=check,
            in_sync=in_sync,
            ansible_started=False,
        )
        return result, fast
    run_limit = limit if not in_sync else ",".join(to_run)
    plan = plan_apply(
        inventory, check=check, diff=diff, limit=run_limit, pki=pki, extravars=extravars
    )
    ran = run_playbook(plan, on_progress)
    order = {h.name: i for i, h in enumerate(inventory.hosts)}
    hosts = sorted((*ran.hosts, *kept), key=lambda h: order.get(h.name, len(order)))
    merged = replace(ran, hosts=tuple(hosts), seconds=time.monotonic() - started, in_sync=in_sync)
    return merged, fast


@dataclass(frozen=True)
class ApplyResult:
    """What ``apply`` did: the run (in-sync hosts included), the in-sync check, the
    certificates issued and the warnings shown."""

    run: RunResult
    fast: FastPath
    pki: Pki | None
    warnings: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        document = self.run.to_json()
        document["warnings"] = list(self.warnings)
        document["certificates_issued"] = [
            {"name": i.name, "reason": i.reason} for i in (self.pki.issued if self.pki else ())
        ]
        document["sync_check"] = {
            "checked": self.fast.checked,
            "seconds": round(self.fast.seconds, 2),
            "ran": dict(self.fast.run or {}),
        }
        return document


def apply_cluster(
    inventory: Inventory,
    *,
    check: bool = False,
    diff: bool = False,
    limit: str | None = None,
    full: bool = False,
    on_progress: OnProgress,
    say: Say,
    warn: Say,
) -> ApplyResult:
    """Converge the cluster of ``inventory`` (module docstring). Host failures are in the
    result; bad input raises ``UsageError`` before any host is touched."""
    pki, warnings = prepare_tls(inventory, check=check)
    if pki is not None:
        say(f"tls: {pki.summary(check)}")
    for warning in warnings:
        warn(warning)
    run, fast = converge(
        inventory,
        check=check,
        diff=diff,
        limit=limit,
        full=full,
        pki=pki,
        on_progress=on_progress,
        say=say,
    )
    return ApplyResult(run, fast, pki, tuple(warnings))
