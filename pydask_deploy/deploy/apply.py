"""``apply``: make the certificates current, leave out hosts in sync, run site.yml on the rest.

The steps, in order: TLS (``prepare_tls``: the cluster's certificates on the controller, and
the warnings a user should see), the conda hosts' environment (``conda.prepare_conda``:
solved or read from the lock, fetched and staged on the controller), the in-sync check
(``insync``: one SSH round proves which hosts need nothing), then Ansible on the others
(``run_playbook``). ``upgrade`` stages with the same pieces.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydask_deploy import contract
from pydask_deploy.deploy import conda as conda_module
from pydask_deploy.deploy import insync
from pydask_deploy.deploy import pki as pki_module
from pydask_deploy.deploy.conda import CondaRuntime
from pydask_deploy.deploy.pki import Pki
from pydask_deploy.deploy.plan import plan_apply
from pydask_deploy.deploy.run import HostResult, OnProgress, RunResult, run_playbook
from pydask_deploy.errors import CaMismatchError, PythonMismatchError
from pydask_deploy.inventory import Inventory
from pydask_deploy.observe import connection, remote

Say = Callable[[str], None]


def check_ca(inventory: Inventory, outputs: Mapping[str, remote.HostResult]) -> None:
    """Refuse a cluster whose hosts carry another CA than the inventory's certificate
    directory (a copied or renamed inventory, a ``dask_tls_pki_dir`` that points elsewhere):
    going on would issue new certificates, restart the units and lock every existing client
    out. Raises ``CaMismatchError`` (exit 2) before anything changes, naming the host, both
    fingerprints and the two ways on. Hosts without a CA, or not reached, pass."""
    if not connection.tls_enabled(inventory):
        return
    directory = pki_module.pki_dir(inventory)
    ours_file = directory / contract.CA_CERT
    try:
        ours = pki_module.fingerprint(ours_file.read_bytes()) if ours_file.is_file() else None
    except ValueError:
        return  # an unreadable CA on the controller is ensure_pki's to report
    theirs: dict[str, list[str]] = {}
    for name, result in outputs.items():
        pem = insync.ca_in(result.stdout) if isinstance(result, remote.CommandResult) else None
        if pem is None:
            continue
        with contextlib.suppress(ValueError):
            found = pki_module.fingerprint(pem)
            if found != ours:
                theirs.setdefault(found, []).append(name)
    if not theirs:
        return
    hosts = "; ".join(f"{', '.join(names)}: {found}" for found, names in theirs.items())
    mine = (
        f"{ours_file} is {ours}" if ours else f"{directory} holds no CA (a new one would be made)"
    )
    raise CaMismatchError(
        f"{inventory.path}: the hosts carry another cluster CA than this inventory's ({hosts}; "
        f"{mine}). Going on would re-issue every certificate, restart the units and lock the "
        "existing clients out. Either point `dask_tls_pki_dir` at the directory holding the "
        "cluster's CA (beside the inventory it was applied with, `<stem>-pki`), or re-key the "
        f"cluster on purpose with `pydask-deploy apply {inventory.path} --new-ca`. Nothing "
        "was changed."
    )


def check_python(inventory: Inventory, outputs: Mapping[str, remote.HostResult]) -> None:
    """Refuse a venv cluster whose hosts' Pythons differ in their minor version (Debian 12's
    3.11 beside Debian 13's 3.13): a venv runs the host's own Python, and functions a client
    pickles do not load under another minor version. Raises ``PythonMismatchError`` (exit 2)
    before anything changes, naming the hosts, their versions and the ways on."""
    found: dict[str, list[str]] = {}
    for name, result in outputs.items():
        if isinstance(result, remote.CommandResult) and (
            version := insync.python_in(result.stdout)
        ):
            found.setdefault(version, []).append(name)
    minors = {".".join(v.split(".")[:2]) for v in found}
    if len(minors) < 2:
        return
    shown = "; ".join(f"{', '.join(names)}: Python {v}" for v, names in sorted(found.items()))
    raise PythonMismatchError(
        f"{inventory.path}: the venv runtime runs each host's own Python, and these differ in "
        f"their minor version ({shown}); functions a client pickles do not load under another "
        "minor version. Point `dask_venv_python` (per host or group) at interpreters of one "
        "minor version, or use a runtime that brings its own Python (`dask_runtime: conda` "
        "or `docker`). Nothing was changed."
    )


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
    read: tuple[Mapping[str, remote.HostResult], float] | None = None,
    chosen: Sequence[str] | None = None,
    conda: CondaRuntime | None = None,
) -> tuple[RunResult, FastPath]:
    """``apply``: probe, then run site.yml on the hosts not in sync (all with ``full``).

    ``read`` is what ``insync.read_hosts`` read on the hosts already, and its seconds (else
    the hosts are read here). Returns the RunResult (in-sync hosts included, with no task
    counted) and the FastPath. ``chosen`` are the hosts ``limit`` selects, when known.
    """
    started = time.monotonic()
    if chosen is None:
        chosen = limit_hosts(inventory, limit) if limit else tuple(h.name for h in inventory.hosts)
    checks = insync.host_checks(inventory, pki, [inventory.host(n) for n in chosen])
    extravars = insync.record_extravars(checks)
    fast = FastPath(checked=False)
    in_sync: tuple[str, ...] = ()
    if not full and chosen:
        if read is None:
            verdicts, seconds = insync.probe(inventory, checks)
        else:
            verdicts, seconds = insync.judge(checks, read[0]), read[1]
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
        inventory,
        check=check,
        diff=diff,
        limit=run_limit,
        pki=pki,
        conda=conda,
        extravars=extravars,
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
    conda: CondaRuntime | None = None

    def to_json(self) -> dict[str, Any]:
        document = self.run.to_json()
        if self.conda is not None:
            document["conda"] = conda_module.describe(self.conda)
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
    new_ca: bool = False,
) -> ApplyResult:
    """Converge the cluster of ``inventory`` (module docstring). Host failures are in the
    result; bad input raises ``UsageError`` before any host is touched, as does a host on
    another CA unless ``new_ca`` says the re-key is meant (``check_ca``)."""
    started = time.monotonic()
    chosen = limit_hosts(inventory, limit) if limit else tuple(h.name for h in inventory.hosts)
    # every host, also outside --limit: the CA and the Python must agree cluster-wide
    read = insync.read_hosts(inventory, inventory.hosts, with_state=not full)
    check_python(inventory, read[0])
    if not new_ca:
        check_ca(inventory, read[0])
    pki, warnings = prepare_tls(inventory, check=check)
    if pki is not None:
        say(f"tls: {pki.summary(check)}")
    for warning in warnings:
        warn(warning)
    conda = conda_module.prepare_conda(inventory, write=not check, say=say)
    if conda is not None:
        say(f"conda: {conda.summary(check)}")
    run, fast = converge(
        inventory,
        check=check,
        diff=diff,
        limit=limit,
        full=full,
        pki=pki,
        on_progress=on_progress,
        say=say,
        read=None if full else read,
        chosen=chosen,
        conda=conda,
    )
    run = replace(run, seconds=time.monotonic() - started)  # the first SSH round included
    return ApplyResult(run, fast, pki, tuple(warnings), conda)
