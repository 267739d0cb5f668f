"""Carry out a Plan with ansible-runner: stream progress, collect a per-host result.

This is the one module that starts Ansible.
"""

from __future__ import annotations

import contextlib
import difflib
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import ansible_runner

from pydask_deploy.deploy.plan import Plan
from pydask_deploy.resources import path_with_ansible


@dataclass(frozen=True)
class HostResult:
    """What one host did in a run.

    ``ok`` counts tasks that succeeded (changed ones included, as Ansible counts them),
    ``changed`` those that changed something, ``failed`` tasks that failed, ``unreachable``
    1 when the host could not be reached; ``errors`` names each failing task and its message.
    """

    name: str
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    errors: tuple[str, ...] = ()
    last_task: str = ""  # the last task the host reported, when the run was interrupted

    @property
    def succeeded(self) -> bool:
        return not self.failed and not self.unreachable


@dataclass(frozen=True)
class RunResult:
    """The outcome of a run: one ``HostResult`` per host, and the run's own status.

    ``in_sync`` names the hosts apply's fast path left out (insync.py): they are in ``hosts``
    with nothing counted. ``ansible_started`` is False when every host was in sync.
    """

    hosts: tuple[HostResult, ...]
    status: str
    rc: int
    seconds: float
    check: bool = False
    in_sync: tuple[str, ...] = ()
    ansible_started: bool = True

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts)

    @property
    def failed_hosts(self) -> tuple[HostResult, ...]:
        return tuple(h for h in self.hosts if not h.succeeded)

    @property
    def succeeded(self) -> bool:
        return self.status == "successful" and not self.failed_hosts

    @property
    def interrupted(self) -> bool:
        """SIGINT or SIGTERM stopped Ansible (``interruptible``) before it finished."""
        return self.status == "canceled"

    def to_json(self) -> dict[str, Any]:
        keys = ("ok", "changed", "failed", "unreachable", "skipped")
        return {
            "ok": self.succeeded,
            "check": self.check,
            "changed": self.changed > 0,
            "seconds": round(self.seconds, 2),
            "totals": {k: sum(getattr(h, k) for h in self.hosts) for k in keys},
            "hosts": {
                h.name: {
                    **{k: getattr(h, k) for k in keys},
                    "errors": list(h.errors),
                    "in_sync": h.name in self.in_sync,
                }
                for h in self.hosts
            },
            "in_sync_hosts": list(self.in_sync),
            "ansible_started": self.ansible_started,
            "interrupted": self.interrupted,
        }


@dataclass(frozen=True)
class Progress:
    """One step of a run, for the live display: a play or a task starting, a host's result
    (``diff`` holds the unified diff of each file it changed or would change, with
    ``--diff``), or the run's end (``done``)."""

    kind: str  # "play", "task", "ok", "changed", "failed", "unreachable", "skipped", "done"
    task: str = ""
    host: str = ""
    message: str = ""
    diff: str = ""


OnProgress = Callable[[Progress], None]

_RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}


@dataclass
class _Collector:
    """Turns ansible-runner events into Progress and remembers each host's errors and its
    last task."""

    on_progress: OnProgress
    errors: dict[str, list[str]] = field(default_factory=dict)
    last_task: dict[str, str] = field(default_factory=dict)

    def __call__(self, event: Mapping[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        if kind == "playbook_on_stats":
            self.on_progress(Progress("done"))
        elif kind == "playbook_on_play_start":
            self.on_progress(Progress("play", task=str(data.get("play", ""))))
        elif kind == "playbook_on_task_start":
            self.on_progress(Progress("task", task=str(data.get("task", ""))))
        elif kind in _RESULT_EVENTS:
            result = data.get("res") or {}
            status = _RESULT_EVENTS[kind]
            if status == "ok" and result.get("changed"):
                status = "changed"
            if status == "failed" and data.get("ignore_errors"):
                status = "ok"
            host = str(data.get("host", ""))
            task = str(data.get("task", ""))
            self.last_task[host] = task
            message = _message(result) if status in ("failed", "unreachable") else ""
            if message:
                self.errors.setdefault(host, []).append(f"{task}: {message}")
            diff = unified_diff(result.get("diff"))
            self.on_progress(Progress(status, task=task, host=host, message=message, diff=diff))
        return True  # keep the event in the artifacts too


def unified_diff(diff: Any) -> str:
    """The unified diff of what a task changed in files (Ansible's ``diff`` result: one or a
    list of ``{before, after, before_header, after_header}``); '' when it changed no text."""
    parts = diff if isinstance(diff, list) else [diff]
    shown: list[str] = []
    for part in parts:
        if not isinstance(part, Mapping) or not isinstance(part.get("after"), str):
            continue
        before = part.get("before") if isinstance(part.get("before"), str) else ""
        path = str(part.get("before_header") or part.get("after_header") or "file")
        shown += difflib.unified_diff(
            str(before).splitlines(keepends=True),
            str(part["after"]).splitlines(keepends=True),
            fromfile=f"{path} (before)",
            tofile=f"{path} (after)",
        )
    return "".join(line if line.endswith("\n") else line + "\n" for line in shown)


def _message(result: Mapping[str, Any]) -> str:
    """The useful line of a failed or unreachable result."""
    message = str(result.get("msg") or "").strip()
    stderr = str(result.get("stderr") or "").strip()
    if stderr:
        tail = stderr.splitlines()[-1]
        message = f"{message} ({tail})" if message else tail
    return message or "failed without a message"


class _Signals:
    """The signal that asked a command to stop (``interruptible``), None while none did."""

    received: int | None = None


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into a request to stop, for a command that changes hosts:
    a running Ansible is stopped (ansible-runner kills its whole process group) and its
    result says so (``RunResult.interrupted``); no new Ansible starts. The command then says
    what was done and exits 130. The previous handlers come back afterwards."""
    names = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in names}

    def remember(signum: int, _frame: object) -> None:
        _Signals.received = _Signals.received or signum

    for s in names:
        signal.signal(s, remember)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _Signals.received = None


def interrupted() -> str | None:
    """The name of the signal that asked to stop (``SIGINT``), or None."""
    received = _Signals.received
    return signal.Signals(received).name if received else None


def run_playbook(plan: Plan, on_progress: OnProgress) -> RunResult:
    """Run the plan's playbook and return the per-host result (never raises for host failures).

    Inside ``interruptible``, a SIGINT or SIGTERM stops Ansible within half a second; the
    result is then ``interrupted`` and each host carries the last task it reported.
    """
    collector = _Collector(on_progress)
    if interrupted():
        return RunResult(hosts=(), status="canceled", rc=254, seconds=0.0, check=plan.check)
    path = path_with_ansible()
    cmdline = []
    if plan.check:
        cmdline.append("--check")
    if plan.diff:
        cmdline.append("--diff")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pydask-deploy-") as private:
        runner = ansible_runner.run(
            private_data_dir=private,
            playbook=str(plan.playbook),
            inventory=str(plan.inventory.path.resolve()),
            limit=plan.limit,
            forks=plan.forks,
            extravars=dict(plan.extravars),
            envvars={**plan.settings, "PATH": path},
            cmdline=" ".join(cmdline) or None,
            event_handler=collector,
            cancel_callback=lambda: interrupted() is not None,
            settings={"pexpect_timeout": 0.5},  # how often a stop request is looked at
            quiet=True,
            suppress_env_files=True,
        )
        stats = runner.stats or {}
        tail = "" if stats else runner.stdout.read()[-2000:]
    seconds = time.monotonic() - started
    names = list(plan.host_names)
    for bucket in ("ok", "changed", "failures", "dark", "skipped"):
        names += [n for n in (stats.get(bucket) or {}) if n not in names]
    hosts = tuple(
        HostResult(
            name=name,
            ok=int(stats.get("ok", {}).get(name, 0)),
            changed=int(stats.get("changed", {}).get(name, 0)),
            failed=int(stats.get("failures", {}).get(name, 0)),
            unreachable=int(stats.get("dark", {}).get(name, 0)),
            skipped=int(stats.get("skipped", {}).get(name, 0)),
            errors=tuple(collector.errors.get(name, ())),
        )
        for name in names
        if plan.limit is None or name in _touched(stats)
    )
    if runner.status == "canceled":
        reported = [n for n in names if n in collector.last_task]
        hosts = tuple(
            HostResult(name=n, errors=tuple(collector.errors.get(n, ())), last_task=task)
            for n in (names if plan.limit is None else reported)
            for task in [collector.last_task.get(n, "")]
        )
    elif not stats:
        # Ansible stopped before any host ran (bad playbook, missing role ...): say why.
        hosts = (HostResult(name="(ansible)", failed=1, errors=(tail.strip() or runner.status,)),)
    return RunResult(
        hosts=hosts,
        status=str(runner.status),
        rc=int(runner.rc or 0),
        seconds=seconds,
        check=plan.check,
    )


def _touched(stats: Mapping[str, Mapping[str, int]]) -> set[str]:
    return {name for bucket in stats.values() if bucket for name in bucket}
