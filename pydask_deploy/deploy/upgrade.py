"""Roll a change of runtime or worker options through the workers, batch by batch, retire-first.

For each batch of worker hosts: Ansible stages the new runtime and writes the new unit, with
the restart deferred (``__dask_defer_restart``), while the old processes keep serving; the
scheduler retires the batch's workers (``Client.retire_workers``), which moves the data they
hold to workers outside the batch and closes them; each unit restarts into its new runtime
(``Restart=always``; the unit file was already reloaded); the batch is done when its hosts'
workers are registered again from new processes, run the scheduler's distributed version
and compute. The first failing batch stops the upgrade; the hosts after it are untouched.

The change itself is recorded in the inventory (``--set KEY=VALUE`` writes it into
``all.vars`` before anything runs), so the next ``apply`` of that inventory changes nothing,
and running ``upgrade`` again resumes: hosts already on the new runtime report no change and
are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import operator
import re
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydask_deploy.deploy import pki as pki_module
from pydask_deploy.deploy.plan import Plan, fast_settings, plan_apply
from pydask_deploy.deploy.run import OnProgress, Progress, RunResult, run_playbook
from pydask_deploy.errors import DeployError, UsageError
from pydask_deploy.inventory import Host, Inventory, load_inventory
from pydask_deploy.inventory.edit import InventoryEdit, flow, prepare_settings
from pydask_deploy.observe import connection, remote
from pydask_deploy.resources import playbook_path

if TYPE_CHECKING:
    from distributed import Client

DEFAULT_BATCH = "25%"
# The task of roles/dask_worker that reports a change when the worker's unit (runtime,
# options, certificates) changed: the hosts that need their workers retired and restarted.
WORKER_UNIT_TASK = "Install the dask-worker unit."
SCHEDULER_UNIT_TASK = "Install the dask-scheduler unit."

Say = Callable[[str], None]


class UpgradeError(DeployError):
    """The upgrade could not start (no scheduler to talk to): exit 1, nothing was changed."""


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
class UpgradeResult:
    """The outcome of an upgrade: each batch run, the hosts not reached, the scheduler host.

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

    @property
    def ok(self) -> bool:
        return not self.error and all(b.outcome != "failed" for b in self.batches)

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
            "batches": [b.to_json() for b in self.batches],
            "pending": list(self.pending),
            "scheduler": self.scheduler,
            "seconds": round(self.seconds, 2),
            "error": self.error,
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


# --------------------------------------------------------------------------- the scheduler's view


def _client(inventory: Inventory, dial: str) -> Client:
    """A client to the scheduler, dialled at ``dial`` (``connection.scheduler_route``)."""
    from distributed import Client

    address = connection.cluster_address(inventory)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # version skew is reported by the upgrade itself
            return Client(  # type: ignore[no-untyped-call]
                dial, security=connection.client_security(inventory), timeout=15
            )
    except (OSError, TimeoutError) as exc:
        raise UpgradeError(
            f"the scheduler at {address} does not answer ({exc}); an upgrade rolls through a "
            f"running cluster: `pydask-deploy status {inventory.path}` shows what is wrong"
        ) from None


def host_addresses(hosts: Sequence[Host]) -> dict[str, set[str]]:
    """Every address each host may register its workers from: its inventory address, what
    it resolves to here, and what the host itself reports (``hostname -I``, one SSH round).
    Behind a login node the names often resolve only there, so the host's own answer counts.
    """
    targets = {h.name: remote.ssh_target(h) for h in hosts}
    answers = asyncio.run(remote.run_on_hosts(targets, "hostname -I", timeout=15))
    found: dict[str, set[str]] = {}
    for host in hosts:
        ips = {host.address}
        with contextlib.suppress(OSError):
            ips |= {str(info[4][0]) for info in socket.getaddrinfo(host.address, None)}
        answer = answers[host.name]
        if isinstance(answer, remote.CommandResult) and answer.exit_status == 0:
            ips |= set(answer.stdout.split())
        found[host.name] = ips
    return found


@dataclass(frozen=True)
class _Worker:
    address: str
    nanny: str
    status: str


def _workers_on(
    client: Client, hosts: Sequence[Host], addresses: Mapping[str, set[str]]
) -> dict[str, list[_Worker]]:
    """The workers registered from each host, by the scheduler's own view; ``addresses``
    from ``host_addresses``."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    ips = {h.name: addresses.get(h.name, {h.address}) for h in hosts}
    found: dict[str, list[_Worker]] = {h.name: [] for h in hosts}
    for address, worker in info.items():
        for name, mine in ips.items():
            if str(worker.get("host", "")) in mine:
                found[name].append(
                    _Worker(address, str(worker.get("nanny") or ""), str(worker.get("status")))
                )
    return found


def scheduler_version(client: Client) -> str:
    """The distributed version the scheduler runs."""
    versions: Any = client.get_versions(check=False)
    return str(versions["scheduler"]["packages"]["distributed"])


def _wanted_version(inventory: Inventory) -> dict[str, str]:
    """Each host's ``dask_version`` where it decides the runtime's distributed version."""
    wanted = {}
    for host in inventory.hosts:
        variables = inventory.dask_vars(host)
        runtime = variables.get("dask_runtime")
        image = str(variables.get("dask_docker_image", ""))
        if runtime == "venv" or (runtime == "docker" and "dask_version" in image):
            wanted[host.name] = str(variables.get("dask_version"))
    return wanted


def needs_scheduler_restart(inventory: Inventory, running: str) -> dict[str, str]:
    """The hosts whose ``dask_version`` differs from the ``running`` scheduler's."""
    return {name: v for name, v in _wanted_version(inventory).items() if v != running}


# --------------------------------------------------------------------------- the upgrade


@dataclass
class _UnitChanges:
    """Passes progress on and remembers which hosts' unit files changed."""

    on_progress: OnProgress
    workers: set[str] = field(default_factory=set)
    scheduler: set[str] = field(default_factory=set)

    def __call__(self, step: Progress) -> None:
        if step.kind == "changed" and step.task == WORKER_UNIT_TASK:
            self.workers.add(step.host)
        if step.kind == "changed" and step.task == SCHEDULER_UNIT_TASK:
            self.scheduler.add(step.host)
        self.on_progress(step)


def _failure(result: RunResult) -> str:
    return "; ".join(
        f"{h.name}: {(h.errors or ('unreachable' if h.unreachable else 'failed',))[0]}"
        for h in result.failed_hosts
    )


@dataclass
class _Upgrade:
    inventory: Inventory
    client: Client
    say: Say
    on_progress: OnProgress
    pki: pki_module.Pki | None
    version: str
    timeout: float
    restart_grace: float
    retire_timeout: float
    dial: str = ""  # where this machine reaches the scheduler
    addresses: dict[str, set[str]] = field(default_factory=dict)  # from host_addresses
    scheduler_staged: bool = False

    def stage(self, hosts: Sequence[Host]) -> tuple[RunResult, _UnitChanges]:
        """Run site.yml on ``hosts`` with every restart deferred."""
        changes = _UnitChanges(self.on_progress)
        plan = plan_apply(
            self.inventory,
            limit=",".join(h.name for h in hosts),
            extravars={"__dask_defer_restart": True},
            pki=self.pki,
        )
        result = run_playbook(plan, changes)
        if self.inventory.scheduler.name in changes.scheduler:
            self.scheduler_staged = True
        return result, changes

    def restart(self, hosts: Sequence[Host], units: Sequence[str]) -> RunResult:
        """Restart the units on ``hosts`` through ``playbooks/restart.yml``."""
        forks = max(5, min(50, len(hosts)))
        plan = Plan(
            inventory=self.inventory,
            playbook=playbook_path("restart.yml"),
            limit=",".join(h.name for h in hosts),
            forks=forks,
            extravars={"__dask_restart_units": list(units)},
            settings=fast_settings(forks),
        )
        return run_playbook(plan, self.on_progress)

    def retire(self, addresses: Sequence[str]) -> set[str]:
        """Retire workers through the scheduler (data first); return those it retired."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(
                self.client.retire_workers, workers=list(addresses), close_workers=True
            )
            try:
                return set(future.result(timeout=self.retire_timeout))
            except FutureTimeout:
                raise TimeoutError(
                    f"retiring {len(addresses)} worker(s) took longer than "
                    f"{self.retire_timeout:.0f} s"
                ) from None

    def wait_registered(
        self, hosts: Sequence[Host], old_nannies: set[str]
    ) -> tuple[dict[str, list[_Worker]], str]:
        """Wait until each host has its workers registered from a new process.

        A host still without them after ``restart_grace`` seconds gets its unit restarted
        once (its data has already moved). Returns the workers and an error ('' when done).
        """
        expected = {h.name: int(self.inventory.dask_vars(h)["dask_worker_nworkers"]) for h in hosts}  # type: ignore[call-overload]
        started = time.monotonic()
        kicked = False
        while True:
            found = _workers_on(self.client, hosts, self.addresses)
            fresh = {
                name: [w for w in ws if w.nanny not in old_nannies and w.status == "running"]
                for name, ws in found.items()
            }
            missing = [h for h in hosts if len(fresh[h.name]) < expected[h.name]]
            if not missing:
                return fresh, ""
            waited = time.monotonic() - started
            if waited > self.timeout:
                shown = ", ".join(
                    f"{h.name} ({len(fresh[h.name])} of {expected[h.name]} workers)"
                    for h in missing
                )
                return fresh, (
                    f"not registered again within {self.timeout:.0f} s: {shown}; "
                    f"`pydask-deploy logs {self.inventory.path} {missing[0].name}` shows why"
                )
            if waited > self.restart_grace and not kicked:
                kicked = True
                self.say(
                    f"  {', '.join(h.name for h in missing)}: not back after "
                    f"{self.restart_grace:.0f} s; restarting the unit (its data has moved)"
                )
                result = self.restart(missing, ["worker"])
                if not result.succeeded:
                    return fresh, f"restart failed: {_failure(result)}"
            time.sleep(0.5)

    def check_new(self, workers: Sequence[str]) -> str:
        """Each new worker runs the scheduler's distributed and computes; '' when so."""
        reply: Any = self.client.get_versions(check=False)
        versions = reply["workers"]
        skewed = [
            f"{a} runs distributed {versions[a]['packages']['distributed']}"
            for a in workers
            if a in versions and versions[a]["packages"]["distributed"] != self.version
        ]
        if skewed:
            return (
                f"{'; '.join(skewed)} but the scheduler runs {self.version}: this change needs "
                "the scheduler restarted too (--restart-scheduler)"
            )
        futures = [
            # a stdlib function: the scheduler unpickles it, and it cannot import this package
            self.client.submit(operator.add, 1, 1, workers=[a], pure=False)
            for a in workers
        ]
        try:
            self.client.gather(futures, errors="raise")  # type: ignore[no-untyped-call]
        except Exception as exc:  # the user's cluster: any failure here fails the batch
            return f"a new worker did not compute: {type(exc).__name__}: {exc}"
        return ""

    def run_batch(
        self, index: int, count: int, hosts: tuple[Host, ...], alone: bool
    ) -> BatchResult:
        names = tuple(h.name for h in hosts)
        started = time.monotonic()

        def done(outcome: str, **kwargs: Any) -> BatchResult:
            return BatchResult(index, names, outcome, time.monotonic() - started, **kwargs)

        self.say(f"batch {index}/{count} ({', '.join(names)}): staging the new runtime")
        result, changes = self.stage(hosts)
        if not result.succeeded:
            return done("failed", error=f"staging failed: {_failure(result)}")
        changed = [h for h in hosts if h.name in changes.workers]
        staged_in = time.monotonic() - started
        if not changed:
            self.say(f"batch {index}/{count}: already on the new runtime; nothing to restart")
            return done("current")
        self.say(f"batch {index}/{count}: staged in {staged_in:.1f} s")
        before = _workers_on(self.client, changed, self.addresses)
        addresses = [w.address for ws in before.values() for w in ws]
        old_nannies = {w.nanny for ws in before.values() for w in ws if w.nanny}
        restarted = tuple(h.name for h in changed)
        self.say(
            f"batch {index}/{count}: retiring {len(addresses)} worker(s) on "
            f"{', '.join(restarted)}; the scheduler moves their data to the other workers"
        )
        try:
            retired = self.retire(addresses) if addresses else set()
        except (OSError, TimeoutError) as exc:
            return done("failed", restarted=restarted, error=f"retiring failed: {exc}")
        kept = sorted(set(addresses) - retired)
        if kept and not alone:
            return done(
                "failed",
                restarted=restarted,
                retired=tuple(sorted(retired)),
                error=(
                    f"the scheduler could not move the data of {', '.join(kept)} to another "
                    "worker, so they were not retired (nothing outside the batch could take it)"
                ),
            )
        if kept:  # every worker in one batch, as asked: their data has nowhere to go
            self.say(f"batch {index}/{count}: restarting {', '.join(kept)} with their data")
            self.restart(changed, ["worker"])
        # a host with no worker registered holds no data the scheduler knows of, and its
        # process (if any) may still run the old unit: restart it into the new one
        absent = [h for h in changed if not before[h.name]]
        if absent and not kept:
            self.say(
                f"batch {index}/{count}: no worker registered from "
                f"{', '.join(h.name for h in absent)}; restarting its unit"
            )
            old_nannies |= {
                w.nanny
                for ws in _workers_on(self.client, absent, self.addresses).values()
                for w in ws
            }
            restarted_absent = self.restart(absent, ["worker"])
            if not restarted_absent.succeeded:
                error = f"restart failed: {_failure(restarted_absent)}"
                return done("failed", restarted=restarted, error=error)
        self.say(f"batch {index}/{count}: waiting for the workers to restart and register")
        fresh, error = self.wait_registered(changed, old_nannies)
        registered = tuple(sorted(w.address for ws in fresh.values() for w in ws))
        error = error or self.check_new(registered)
        outcome = "failed" if error else "upgraded"
        result_ = done(
            outcome,
            restarted=restarted,
            retired=tuple(sorted(retired)),
            registered=registered,
            error=error,
        )
        if not error:
            self.say(
                f"batch {index}/{count} done in {result_.seconds:.1f} s (retired, restarted "
                f"and back in {result_.seconds - staged_in:.1f} s): {len(registered)} "
                f"worker(s) on {', '.join(restarted)} registered and computing"
            )
        return result_


def rolling_upgrade(
    path: str | Path,
    *,
    settings: Mapping[str, object] | None = None,
    batch: str = DEFAULT_BATCH,
    restart_scheduler: bool = False,
    say: Say,
    on_progress: OnProgress,
    timeout: float = 180.0,
    restart_grace: float = 30.0,
    retire_timeout: float = 600.0,
) -> UpgradeResult:
    """Upgrade the cluster of the inventory at ``path`` batch by batch (module docstring).

    Raises ``UsageError`` (exit 2, nothing changed, the file untouched) for bad settings, a
    bad ``--batch`` or a version change without ``restart_scheduler``; ``UpgradeError``
    (exit 1) when the scheduler does not answer. Host failures are in the result.
    """
    path = Path(path)
    settings = dict(settings or {})
    edit = prepare_settings(path, settings) if settings else None
    inventory = edit.inventory if edit else load_inventory(path)
    batches = plan_batches(inventory.workers, batch)
    with connection.scheduler_route(inventory) as dial:
        return _upgrade_through(
            inventory, dial, edit, settings, batch, batches, restart_scheduler, say,
            on_progress, timeout, restart_grace, retire_timeout,
        )  # fmt: skip


def _upgrade_through(
    inventory: Inventory,
    dial: str,
    edit: InventoryEdit | None,
    settings: dict[str, object],
    batch: str,
    batches: list[tuple[Host, ...]],
    restart_scheduler: bool,
    say: Say,
    on_progress: OnProgress,
    timeout: float,
    restart_grace: float,
    retire_timeout: float,
) -> UpgradeResult:
    path = inventory.path
    client = _client(inventory, dial)
    clients: list[Client] = []
    try:
        running = scheduler_version(client)
        differ = needs_scheduler_restart(inventory, running)
        if differ and not restart_scheduler:
            wanted = ", ".join(sorted(set(differ.values())))
            raise UsageError(
                f"{path}: dask_version {wanted} but the scheduler runs distributed {running}. "
                "Client, scheduler and workers must run the same version, so this change "
                "restarts the scheduler and every worker together, and every result held in "
                "the cluster's memory is lost. Run again with --restart-scheduler to do that"
                + ("; the inventory was not changed" if edit else "")
            )
        if edit is not None:
            edit.write()
            note = "" if edit.kept_comments else " (rewritten through PyYAML: comments dropped)"
            shown = ", ".join(f"{k}={flow(v)}" for k, v in settings.items())
            say(f"recorded in {path}{note}: {shown}")
            inventory = load_inventory(path)
        pki = None
        if connection.tls_enabled(inventory):
            pki = pki_module.ensure_pki(inventory, write=True)
            say(f"tls: {pki.summary()}")
        upgrade = _Upgrade(
            inventory,
            client,
            say,
            on_progress,
            pki,
            running,
            timeout,
            restart_grace,
            retire_timeout,
            dial,
            host_addresses(inventory.hosts),
        )
        if differ:
            try:
                return _restart_everything(upgrade, path, settings, batch, differ)
            finally:
                clients.append(upgrade.client)
        return _roll(upgrade, path, settings, batch, batches)
    finally:
        for opened in {client, *clients}:  # _restart_everything connects again
            with contextlib.suppress(Exception):
                opened.close()  # type: ignore[no-untyped-call]


def _roll(
    upgrade: _Upgrade,
    path: Path,
    settings: Mapping[str, object],
    batch: str,
    batches: list[tuple[Host, ...]],
) -> UpgradeResult:
    inventory = upgrade.inventory
    started = time.monotonic()
    say = upgrade.say
    all_at_once = len(batches) == 1 and len(inventory.workers) > 1
    if all_at_once:
        say("every worker in one batch, as asked: held data has nowhere to move and is lost")
    results: list[BatchResult] = []
    for index, hosts in enumerate(batches, 1):
        result = upgrade.run_batch(index, len(batches), hosts, all_at_once)
        results.append(result)
        if result.outcome == "failed":
            pending = tuple(h.name for b in batches[index:] for h in b)
            return UpgradeResult(
                path, tuple(results), pending, "not reached",
                time.monotonic() - started, settings, batch, error=result.error,
            )  # fmt: skip
    scheduler = inventory.scheduler
    in_batches = any(scheduler.name == h.name for b in batches for h in b)
    if not in_batches:
        say(f"scheduler host {scheduler.name}: staging the new runtime, no restart")
        staged, _ = upgrade.stage([scheduler])
        if not staged.succeeded:
            return UpgradeResult(
                path, tuple(results), (), "failed", time.monotonic() - started, settings, batch,
                error=f"staging on the scheduler host failed: {_failure(staged)}",
            )  # fmt: skip
    state = "staged" if upgrade.scheduler_staged else "current"
    if state == "staged":
        say(
            f"{scheduler.name}: the new unit and runtime are in place; the running scheduler "
            f"(distributed {upgrade.version}) carries on as it is until it next restarts"
        )
    return UpgradeResult(
        path, tuple(results), (), state, time.monotonic() - started, settings, batch
    )


def _restart_everything(
    upgrade: _Upgrade,
    path: Path,
    settings: Mapping[str, object],
    batch: str,
    differ: Mapping[str, str],
) -> UpgradeResult:
    """A new distributed version: stage everywhere, then restart scheduler and workers."""
    inventory = upgrade.inventory
    say = upgrade.say
    started = time.monotonic()
    names = tuple(h.name for h in inventory.hosts)
    wanted = ", ".join(sorted(set(differ.values())))
    say(
        f"distributed {upgrade.version} -> {wanted}: staging on every host while the cluster "
        "keeps serving, then restarting the scheduler and every worker together; results "
        "held in the cluster's memory are lost"
    )
    staged, _ = upgrade.stage(inventory.hosts)
    if not staged.succeeded:
        failed = BatchResult(
            1,
            names,
            "failed",
            time.monotonic() - started,
            error=f"staging failed: {_failure(staged)}",
        )
        return UpgradeResult(
            path, (failed,), (), "not reached", failed.seconds, settings, batch, failed.error
        )
    upgrade.client.close()  # type: ignore[no-untyped-call]
    restarted = upgrade.restart(inventory.hosts, ["scheduler", "worker"])
    if not restarted.succeeded:
        error = f"restart failed: {_failure(restarted)}"
        failed = BatchResult(1, names, "failed", time.monotonic() - started, error=error)
        return UpgradeResult(path, (failed,), (), "failed", failed.seconds, settings, batch, error)
    upgrade.client = _client(inventory, upgrade.dial)
    upgrade.version = scheduler_version(upgrade.client)
    fresh, error = upgrade.wait_registered(inventory.workers, set())
    registered = tuple(sorted(w.address for ws in fresh.values() for w in ws))
    error = error or upgrade.check_new(registered)
    outcome = "failed" if error else "upgraded"
    result = BatchResult(
        1, names, outcome, time.monotonic() - started, restarted=names, registered=registered,
        error=error,
    )  # fmt: skip
    state = "failed" if error else "restarted"
    return UpgradeResult(path, (result,), (), state, result.seconds, settings, batch, error)
