"""Roll a change of runtime or worker options through the workers, batch by batch, retire-first.

First Ansible stages the new runtime and writes the new units on every host at once, with
the restarts deferred (``EXTRA_DEFER_RESTART``), while the old processes keep serving; a
staging failure on any host stops the upgrade there, before anything is retired. Then, for
each batch of worker hosts whose running workers predate their unit file: the scheduler
retires the batch's workers (``retire_workers``), which moves the data they hold to workers
outside the batch and closes them; each unit restarts into its new runtime
(``Restart=always``; the unit file was already reloaded); the batch is done when its hosts'
workers are registered again from new processes, run the scheduler's distributed version
and compute. The first failing batch stops the upgrade; the hosts after it keep serving,
staged, and a second run restarts them.

The change itself is recorded in the inventory (``--set KEY=VALUE`` writes it into
``all.vars`` before anything runs), so the next ``apply`` of that inventory changes nothing,
and running ``upgrade`` again resumes: hosts already on the new runtime report no change and
are skipped.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydask_deploy import contract
from pydask_deploy.deploy import insync
from pydask_deploy.deploy.apply import check_ca, check_python, prepare_tls
from pydask_deploy.deploy.conda import CondaRuntime, prepare_conda
from pydask_deploy.deploy.pki import Pki
from pydask_deploy.deploy.plan import plan_apply, plan_restart
from pydask_deploy.deploy.run import OnProgress, Progress, RunResult, interrupted, run_playbook
from pydask_deploy.errors import PkiError, UpgradeError, UsageError
from pydask_deploy.inventory import Host, Inventory, load_inventory
from pydask_deploy.inventory.edit import InventoryEdit, flow, prepare_settings
from pydask_deploy.observe import connection, remote
from pydask_deploy.observe.cluster import (
    assign_workers,
    expected_workers,
    read_cluster,
    sections,
)
from pydask_deploy.observe.scheduler import SchedulerSession, WorkerView

DEFAULT_BATCH = "25%"

Say = Callable[[str], None]


@dataclass(frozen=True)
class UpgradeOptions:
    """How the upgrade runs: the batch size (``N`` or ``N%``), whether a new distributed
    may restart the scheduler, and its patience in seconds (for the workers to register
    again; before a unit that did not come back is restarted; for a retirement)."""

    batch: str = DEFAULT_BATCH
    restart_scheduler: bool = False
    timeout: float = 180.0
    restart_grace: float = 30.0
    retire_timeout: float = 600.0


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BatchResult:
    """What became of one batch of worker hosts.

    ``outcome`` is ``upgraded`` (workers retired, restarted into the new unit, registered and
    computing), ``current`` (no host's worker unit changed: nothing to restart) or
    ``failed``; ``restarted`` names the hosts whose workers were retired and restarted,
    ``retired`` and ``registered`` the worker addresses before and after; ``error`` says
    why a failed batch failed.
    """

    index: int
    hosts: tuple[str, ...]
    outcome: str
    seconds: float
    restarted: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()
    registered: tuple[str, ...] = ()
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.index,
            "hosts": list(self.hosts),
            "outcome": self.outcome,
            "seconds": round(self.seconds, 2),
            "restarted": list(self.restarted),
            "retired": list(self.retired),
            "registered": list(self.registered),
            "error": self.error,
        }


@dataclass(frozen=True)
class Staging:
    """The staging of every host before the first retire: how long it took, whether it
    worked (``error`` says where and why not), and the worker hosts whose running workers
    predate their new unit file (those the batches restart)."""

    seconds: float = 0.0
    error: str = ""
    restart: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 2),
            "ok": not self.error,
            "error": self.error,
            "restart": list(self.restart),
        }


@dataclass(frozen=True)
class UpgradeResult:
    """The outcome of an upgrade: the staging, each batch run, the hosts not reached, the
    scheduler host.

    ``scheduler`` is ``current`` (its unit did not change), ``staged`` (new runtime and unit
    in place, the running scheduler keeps its runtime until its next restart),
    ``restarted`` (``--restart-scheduler``), ``failed`` or ``not reached``.
    """

    inventory: Path
    batches: tuple[BatchResult, ...]
    pending: tuple[str, ...]
    scheduler: str
    seconds: float
    settings: Mapping[str, object] = field(default_factory=dict)
    batch: str = DEFAULT_BATCH
    error: str = ""
    staging: Staging = field(default_factory=Staging)
    interrupted: str = ""  # the signal that stopped the upgrade (SIGINT, SIGTERM), or ''

    @property
    def ok(self) -> bool:
        return (
            not self.error
            and not self.staging.error
            and not self.interrupted
            and all(b.outcome != "failed" for b in self.batches)
        )

    @property
    def resume(self) -> str:
        """The command that resumes a failed upgrade (the settings are already recorded)."""
        return f"pydask-deploy upgrade {self.inventory} --batch {self.batch}"

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "inventory": str(self.inventory),
            "settings": dict(self.settings),
            "batch": self.batch,
            "staging": self.staging.to_json(),
            "batches": [b.to_json() for b in self.batches],
            "pending": list(self.pending),
            "scheduler": self.scheduler,
            "seconds": round(self.seconds, 2),
            "error": self.error,
            "interrupted": self.interrupted or None,
            "resume": None if self.ok else self.resume,
        }


# --------------------------------------------------------------------------- batches


def batch_size(spec: str, workers: int) -> int:
    """How many worker hosts a batch holds: ``N`` or ``N%`` of ``workers``, at least 1.

    A percentage never covers every worker of a cluster with more than one (the retired
    workers' data needs somewhere to go); a plain ``N`` as large as the cluster is the user
    asking for everything at once.
    """
    text = spec.strip()
    match = re.fullmatch(r"(\d+)(%?)", text)
    if match is None or int(match[1]) == 0 or (match[2] and int(match[1]) > 100):
        raise UsageError(
            f"--batch must be a positive number of hosts or a percentage 1-100%, got {spec!r}"
        )
    if workers <= 1:
        return 1
    if match[2]:
        return max(1, min(workers - 1, math.floor(workers * int(match[1]) / 100)))
    return min(workers, int(match[1]))


def plan_batches(workers: Sequence[Host], spec: str) -> list[tuple[Host, ...]]:
    """The worker hosts in batches of ``batch_size(spec)``, in inventory order."""
    size = batch_size(spec, len(workers))
    return [tuple(workers[i : i + size]) for i in range(0, len(workers), size)]


# --------------------------------------------------------------------------- versions


def _wanted_version(inventory: Inventory) -> dict[str, str]:
    """Each host's ``dask_version`` where it decides the runtime's distributed version."""
    wanted = {}
    for host in inventory.hosts:
        variables = inventory.dask_vars(host)
        runtime = variables.get("dask_runtime")
        image = str(variables.get("dask_docker_image", ""))
        if runtime in ("venv", "conda") or (runtime == "docker" and "dask_version" in image):
            wanted[host.name] = str(variables.get("dask_version"))
    return wanted


def needs_scheduler_restart(inventory: Inventory, running: str) -> dict[str, str]:
    """The hosts whose ``dask_version`` differs from the ``running`` scheduler's."""
    return {name: v for name, v in _wanted_version(inventory).items() if v != running}


# --------------------------------------------------------------------------- pending restarts

# POSIX sh: when the worker unit's file was last written and when its process started, both
# to the microsecond. A process older than its unit file still runs the old runtime.
_UNIT_AGE_SCRIPT = f"""
echo "@@unit-age"
stat -c '%.6Y' {contract.unit_path(contract.WORKER_UNIT)} 2>/dev/null || echo missing
systemctl show --timestamp=us+utc -p ExecMainStartTimestamp {contract.WORKER_UNIT} 2>/dev/null
"""


def needs_restart(stdout: str) -> bool:
    """Whether a host's worker process predates its unit file (from ``_UNIT_AGE_SCRIPT``'s
    output): it then runs the old runtime or options. A worker that is not running needs
    its restart too; a host without the unit file does not."""
    lines = sections(stdout).get("unit-age", [])
    if not lines or not re.fullmatch(r"\d+(\.\d+)?", lines[0].strip()):
        return False
    written = float(lines[0])
    started = next(
        (line.partition("=")[2] for line in lines if line.startswith("ExecMainStartTimestamp=")),
        "",
    ).strip()
    found = re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC", started)
    if found is None:
        return True  # never started, or gone: only a restart brings it back
    when = dt.datetime.fromisoformat(found[1]).replace(tzinfo=dt.UTC).timestamp()
    return when < written


# --------------------------------------------------------------------------- the upgrade


@dataclass
class _UnitChanges:
    """Passes progress on and remembers which hosts' unit files changed."""

    on_progress: OnProgress
    workers: set[str] = field(default_factory=set)
    scheduler: set[str] = field(default_factory=set)

    def __call__(self, step: Progress) -> None:
        if step.kind == "changed" and step.task == contract.WORKER_UNIT_TASK:
            self.workers.add(step.host)
        if step.kind == "changed" and step.task == contract.SCHEDULER_UNIT_TASK:
            self.scheduler.add(step.host)
        self.on_progress(step)


def _failure(result: RunResult) -> str:
    if result.interrupted:
        return f"interrupted ({interrupted() or 'a signal'}): Ansible was stopped"
    return "; ".join(
        f"{h.name}: {(h.errors or ('unreachable' if h.unreachable else 'failed',))[0]}"
        for h in result.failed_hosts
    )


def _open_session(inventory: Inventory, dial: str) -> SchedulerSession:
    address = connection.cluster_address(inventory)
    try:
        return SchedulerSession.open(inventory, dial)
    except (OSError, TimeoutError) as exc:
        raise UpgradeError(
            f"the scheduler at {address} does not answer ({exc}); an upgrade rolls through a "
            f"running cluster: `pydask-deploy status {inventory.path}` shows what is wrong"
        ) from None


@dataclass
class _Upgrade:
    """One upgrade under way: the cluster, the scheduler session, and the steps of a batch.

    ``addresses`` are each host's addresses as the read side learnt them (``read_cluster``),
    to tell which registered workers are whose.
    """

    inventory: Inventory
    session: SchedulerSession
    dial: str
    options: UpgradeOptions
    say: Say
    on_progress: OnProgress
    pki: Pki | None
    version: str
    addresses: Mapping[str, frozenset[str]]
    settings: Mapping[str, object] = field(default_factory=dict)
    conda: CondaRuntime | None = None
    scheduler_staged: bool = False

    def stage(self, hosts: Sequence[Host]) -> tuple[RunResult, _UnitChanges]:
        """Run site.yml on ``hosts`` with every restart deferred."""
        changes = _UnitChanges(self.on_progress)
        plan = plan_apply(
            self.inventory,
            limit=",".join(h.name for h in hosts),
            extravars={contract.EXTRA_DEFER_RESTART: True},
            pki=self.pki,
            conda=self.conda,
        )
        result = run_playbook(plan, changes)
        if self.inventory.scheduler.name in changes.scheduler:
            self.scheduler_staged = True
        return result, changes

    def restart(self, hosts: Sequence[Host], units: Sequence[str]) -> RunResult:
        """Restart the units (by role: scheduler, worker) on ``hosts``."""
        return run_playbook(plan_restart(self.inventory, hosts, units), self.on_progress)

    def workers_on(self, hosts: Sequence[Host]) -> dict[str, tuple[WorkerView, ...]]:
        """The workers registered from each host now, by the scheduler's own view."""
        mine = {h.name: self.addresses.get(h.name, frozenset({h.address})) for h in hosts}
        return assign_workers(self.session.workers(), mine)[0]

    def pending_restarts(self) -> tuple[str, ...]:
        """The worker hosts whose workers predate their unit file (one SSH round)."""
        scripts = {h.name: _UNIT_AGE_SCRIPT for h in self.inventory.workers}
        reading = read_cluster(self.inventory, scripts, self.inventory.workers, source="none")
        return tuple(
            name
            for name, host in reading.hosts.items()
            if isinstance(host.answer, remote.CommandResult) and needs_restart(host.answer.stdout)
        )

    def stage_every_host(self) -> Staging:
        """Stage the new runtime and units on every host at once, restarts deferred."""
        started = time.monotonic()
        self.say(
            f"staging the new runtime on every host ({len(self.inventory.hosts)}) while the "
            "old processes keep serving"
        )
        result, _ = self.stage(self.inventory.hosts)
        if not result.succeeded:
            error = f"staging failed: {_failure(result)}; nothing was retired or restarted"
            return Staging(time.monotonic() - started, error=error)
        restart = self.pending_restarts()
        seconds = time.monotonic() - started
        shown = ", ".join(restart) if restart else "none"
        self.say(f"staged in {seconds:.1f} s; worker hosts to restart: {shown}")
        return Staging(seconds, restart=restart)

    def result(
        self, started: float, batches: Sequence[BatchResult], pending: Sequence[str],
        scheduler: str, error: str = "", staging: Staging | None = None,
    ) -> UpgradeResult:  # fmt: skip
        return UpgradeResult(
            inventory=self.inventory.path,
            batches=tuple(batches),
            pending=tuple(pending),
            scheduler=scheduler,
            seconds=time.monotonic() - started,
            settings=self.settings,
            batch=self.options.batch,
            error=error,
            staging=staging or Staging(),
            interrupted=interrupted() or "",
        )


def _wait_registered(
    up: _Upgrade, hosts: Sequence[Host], old_nannies: set[str]
) -> tuple[dict[str, list[WorkerView]], str]:
    """Wait until each host has its workers registered from a new process.

    A host still without them after ``restart_grace`` seconds gets its unit restarted
    once (its data has already moved). Returns the workers and an error ('' when done).
    """
    expected = {h.name: expected_workers(up.inventory, h) or 1 for h in hosts}
    started = time.monotonic()
    kicked = False
    while True:
        fresh = {
            name: [w for w in ws if w.nanny not in old_nannies and w.status == "running"]
            for name, ws in up.workers_on(hosts).items()
        }
        missing = [h for h in hosts if len(fresh[h.name]) < expected[h.name]]
        if not missing:
            return fresh, ""
        if signal := interrupted():
            # the retired workers' units restart by themselves into the staged runtime
            return fresh, f"interrupted ({signal}) while the workers came back"
        waited = time.monotonic() - started
        if waited > up.options.timeout:
            shown = ", ".join(
                f"{h.name} ({len(fresh[h.name])} of {expected[h.name]} workers)" for h in missing
            )
            return fresh, (
                f"not registered again within {up.options.timeout:.0f} s: {shown}; "
                f"`pydask-deploy logs {up.inventory.path} {missing[0].name}` shows why"
            )
        if waited > up.options.restart_grace and not kicked:
            kicked = True
            up.say(
                f"  {', '.join(h.name for h in missing)}: not back after "
                f"{up.options.restart_grace:.0f} s; restarting the unit (its data has moved)"
            )
            result = up.restart(missing, ["worker"])
            if not result.succeeded:
                return fresh, f"restart failed: {_failure(result)}"
        time.sleep(0.5)


def _check_new(up: _Upgrade, workers: Sequence[str]) -> str:
    """Each new worker runs the scheduler's distributed and computes; '' when so."""
    versions = up.session.versions()["workers"]
    skewed = [
        f"{a} runs distributed {versions[a]['packages']['distributed']}"
        for a in workers
        if a in versions and versions[a]["packages"]["distributed"] != up.version
    ]
    if skewed:
        return (
            f"{'; '.join(skewed)} but the scheduler runs {up.version}: this change needs "
            "the scheduler restarted too (--restart-scheduler)"
        )
    return up.session.compute_on(workers)


def _retire_and_restart(
    up: _Upgrade, label: str, changed: Sequence[Host], alone: bool
) -> tuple[tuple[str, ...], set[str], str]:
    """Retire the workers of ``changed`` (their data moves to the other workers) so that
    their units restart into the staged runtime. Returns the workers retired, the nannies
    of the processes that must not count as new, and an error ('' when done)."""
    before = up.workers_on(changed)
    addresses = [w.address for ws in before.values() for w in ws]
    old_nannies = {w.nanny for ws in before.values() for w in ws if w.nanny}
    up.say(
        f"{label}: retiring {len(addresses)} worker(s) on "
        f"{', '.join(h.name for h in changed)}; the scheduler moves their data to the "
        "other workers"
    )
    try:
        retired = up.session.retire(addresses, up.options.retire_timeout) if addresses else set()
    except (OSError, TimeoutError) as exc:
        return (), old_nannies, f"retiring failed: {exc}"
    kept = sorted(set(addresses) - retired)
    if kept and not alone:
        return (
            tuple(sorted(retired)),
            old_nannies,
            (
                f"the scheduler could not move the data of {', '.join(kept)} to another "
                "worker, so they were not retired (nothing outside the batch could take it)"
            ),
        )
    if kept:  # every worker in one batch, as asked: their data has nowhere to go
        up.say(f"{label}: restarting {', '.join(kept)} with their data")
        up.restart(changed, ["worker"])
    # a host with no worker registered holds no data the scheduler knows of, and its
    # process (if any) may still run the old unit: restart it into the new one
    absent = [h for h in changed if not before[h.name]]
    if absent and not kept:
        up.say(
            f"{label}: no worker registered from {', '.join(h.name for h in absent)}; "
            "restarting its unit"
        )
        old_nannies |= {w.nanny for ws in up.workers_on(absent).values() for w in ws}
        restarted = up.restart(absent, ["worker"])
        if not restarted.succeeded:
            return tuple(sorted(retired)), old_nannies, f"restart failed: {_failure(restarted)}"
    return tuple(sorted(retired)), old_nannies, ""


def _run_batch(
    up: _Upgrade, index: int, count: int, hosts: tuple[Host, ...], restart: set[str], alone: bool
) -> BatchResult:
    """Restart one batch's staged workers, retire-first (module docstring)."""
    names = tuple(h.name for h in hosts)
    label = f"batch {index}/{count}"
    started = time.monotonic()

    def done(outcome: str, **kwargs: Any) -> BatchResult:
        return BatchResult(index, names, outcome, time.monotonic() - started, **kwargs)

    changed = [h for h in hosts if h.name in restart]
    if not changed:
        up.say(f"{label} ({', '.join(names)}): already on the new runtime")
        return done("current")
    restarted = tuple(h.name for h in changed)
    retired, old_nannies, error = _retire_and_restart(up, label, changed, alone)
    if error:
        return done("failed", restarted=restarted, retired=retired, error=error)
    up.say(f"{label}: waiting for the workers to restart and register")
    fresh, error = _wait_registered(up, changed, old_nannies)
    registered = tuple(sorted(w.address for ws in fresh.values() for w in ws))
    error = error or _check_new(up, registered)
    outcome = "failed" if error else "upgraded"
    batch = done(outcome, restarted=restarted, retired=retired, registered=registered, error=error)
    if not error:
        up.say(
            f"{label} done in {batch.seconds:.1f} s (retired, restarted and back): "
            f"{len(registered)} worker(s) on {', '.join(restarted)} registered and computing"
        )
    return batch


def rolling_upgrade(
    path: str | Path,
    *,
    settings: Mapping[str, object] | None = None,
    options: UpgradeOptions | None = None,
    say: Say,
    on_progress: OnProgress,
) -> UpgradeResult:
    """Upgrade the cluster of the inventory at ``path`` batch by batch (module docstring).

    Raises ``UsageError`` (exit 2, nothing changed, the file untouched) for bad settings, a
    bad ``--batch`` or a version change without ``restart_scheduler``; ``UpgradeError``
    (exit 1) when the scheduler does not answer. Host failures are in the result.
    """
    path = Path(path)
    options = options or UpgradeOptions()
    settings = dict(settings or {})
    edit = prepare_settings(path, settings) if settings else None
    inventory = edit.inventory if edit else load_inventory(path)
    batches = plan_batches(inventory.workers, options.batch)
    with connection.scheduler_route(inventory) as dial:
        session = _open_session(inventory, dial)
        upgrade = None
        try:
            upgrade = _start(inventory, session, dial, edit, settings, options, say, on_progress)
            if needs_scheduler_restart(upgrade.inventory, upgrade.version):
                return _restart_everything(upgrade)
            return _roll(upgrade, batches)
        finally:
            session.close()
            if upgrade is not None:  # _restart_everything connects again
                upgrade.session.close()


def _start(
    inventory: Inventory,
    session: SchedulerSession,
    dial: str,
    edit: InventoryEdit | None,
    settings: Mapping[str, object],
    options: UpgradeOptions,
    say: Say,
    on_progress: OnProgress,
) -> _Upgrade:
    """Check the version change, record the settings, make the certificates current."""
    try:
        running = session.version()
    except (OSError, TimeoutError, PkiError) as exc:
        raise UpgradeError(f"the scheduler at {session.address} does not answer ({exc})") from None
    differ = needs_scheduler_restart(inventory, running)
    if differ and not options.restart_scheduler:
        wanted = ", ".join(sorted(set(differ.values())))
        raise UsageError(
            f"{inventory.path}: dask_version {wanted} but the scheduler runs distributed "
            f"{running}. Client, scheduler and workers must run the same version, so this "
            "change restarts the scheduler and every worker together, and every result held "
            "in the cluster's memory is lost. Run again with --restart-scheduler to do that"
            + ("; the inventory was not changed" if edit else "")
        )
    outputs, _ = insync.read_hosts(inventory, inventory.hosts, with_state=False)
    check_python(inventory, outputs)  # before anything changes, the inventory file included
    check_ca(inventory, outputs)
    # solved (and the lock rewritten) before the inventory is: bad input changes nothing
    conda = prepare_conda(inventory, say=say)
    if conda is not None:
        say(f"conda: {conda.summary()}")
    if edit is not None:
        edit.write()
        note = "" if edit.kept_comments else " (rewritten through PyYAML: comments dropped)"
        shown = ", ".join(f"{k}={flow(v)}" for k, v in settings.items())
        say(f"recorded in {inventory.path}{note}: {shown}")
        inventory = load_inventory(inventory.path)
    pki, _ = prepare_tls(inventory)
    if pki is not None:
        say(f"tls: {pki.summary()}")
    reading = read_cluster(inventory, source="none")
    addresses = {name: host.addresses for name, host in reading.hosts.items()}
    return _Upgrade(
        inventory, session, dial, options, say, on_progress, pki, running, addresses,
        settings=settings, conda=conda,
    )  # fmt: skip


def _roll(upgrade: _Upgrade, batches: list[tuple[Host, ...]]) -> UpgradeResult:
    inventory = upgrade.inventory
    started = time.monotonic()
    say = upgrade.say
    staging = upgrade.stage_every_host()
    if staging.error:
        pending = [h.name for b in batches for h in b]
        return upgrade.result(started, (), pending, "not reached", staging.error, staging)
    all_at_once = len(batches) == 1 and len(inventory.workers) > 1
    if all_at_once:
        say("every worker in one batch, as asked: held data has nowhere to move and is lost")
    restart = set(staging.restart)
    results: list[BatchResult] = []
    for index, hosts in enumerate(batches, 1):
        if signal := interrupted():
            pending = [h.name for b in batches[index - 1 :] for h in b]
            error = f"interrupted ({signal}) before batch {index}/{len(batches)}"
            return upgrade.result(started, results, pending, "not reached", error, staging)
        result = _run_batch(upgrade, index, len(batches), hosts, restart, all_at_once)
        results.append(result)
        if result.outcome == "failed":
            pending = [h.name for b in batches[index:] for h in b]
            return upgrade.result(started, results, pending, "not reached", result.error, staging)
    scheduler = inventory.scheduler
    state = "staged" if upgrade.scheduler_staged else "current"
    if state == "staged":
        say(
            f"{scheduler.name}: the new unit and runtime are in place; the running scheduler "
            f"(distributed {upgrade.version}) carries on as it is until it next restarts"
        )
    return upgrade.result(started, results, (), state, staging=staging)


def _restart_everything(upgrade: _Upgrade) -> UpgradeResult:
    """A new distributed version: stage everywhere, then restart scheduler and workers."""
    inventory = upgrade.inventory
    started = time.monotonic()
    names = tuple(h.name for h in inventory.hosts)
    differ = needs_scheduler_restart(inventory, upgrade.version)
    wanted = ", ".join(sorted(set(differ.values())))
    upgrade.say(
        f"distributed {upgrade.version} -> {wanted}: staging on every host while the cluster "
        "keeps serving, then restarting the scheduler and every worker together; results "
        "held in the cluster's memory are lost"
    )

    def failed(scheduler: str, error: str) -> UpgradeResult:
        batch = BatchResult(1, names, "failed", time.monotonic() - started, error=error)
        return upgrade.result(started, (batch,), (), scheduler, error)

    staged, _ = upgrade.stage(inventory.hosts)
    if not staged.succeeded:
        return failed("not reached", f"staging failed: {_failure(staged)}")
    upgrade.session.close()
    restarted = upgrade.restart(inventory.hosts, ["scheduler", "worker"])
    if not restarted.succeeded:
        return failed("failed", f"restart failed: {_failure(restarted)}")
    upgrade.session = _open_session(inventory, upgrade.dial)
    upgrade.version = upgrade.session.version()
    fresh, error = _wait_registered(upgrade, inventory.workers, set())
    registered = tuple(sorted(w.address for ws in fresh.values() for w in ws))
    error = error or _check_new(upgrade, registered)
    batch = BatchResult(
        1, names, "failed" if error else "upgraded", time.monotonic() - started,
        restarted=names, registered=registered, error=error,
    )  # fmt: skip
    return upgrade.result(started, (batch,), (), "failed" if error else "restarted", error)
