"""Ansible callback: wall time and CPU (controller and each lab host) of every task.

Enabled by the benchmarks (ANSIBLE_CALLBACKS_ENABLED=task_profile, ANSIBLE_CALLBACK_PLUGINS
naming this directory). At each task start it reads the cgroup v2 ``cpu.stat`` of the
controller (PYDASK_PROFILE_CONTROLLER_CGROUP, the cgroup the benchmark started the command
in) and of each host (PYDASK_PROFILE_HOST_CGROUPS, ``name=path`` pairs joined by ``:``), so
the CPU a task cost is counted where it was spent, whatever else the machine runs. The
profile is written as JSON to PYDASK_PROFILE_OUT when the playbook ends.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_profile
type: aggregate
short_description: wall time and cgroup CPU per task (pydask-deploy benchmarks)
description: see the module docstring
requirements: [cgroup v2 cpu.stat files]
"""


def _usage(path: str) -> float:
    """CPU seconds a cgroup has used (0 when it is gone)."""
    try:
        for line in Path(path, "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    except OSError:
        pass
    return 0.0


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_profile"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._controller = os.environ.get("PYDASK_PROFILE_CONTROLLER_CGROUP", "")
        pairs = os.environ.get("PYDASK_PROFILE_HOST_CGROUPS", "")
        self._hosts = dict(p.split("=", 1) for p in pairs.split(":") if "=" in p)
        self._out = os.environ.get("PYDASK_PROFILE_OUT", "")
        self._tasks: list[dict[str, Any]] = []
        self._started = time.monotonic()

    def _sample(self) -> dict[str, Any]:
        return {
            "t": time.monotonic() - self._started,
            "controller": _usage(self._controller) if self._controller else 0.0,
            "hosts": {name: _usage(path) for name, path in self._hosts.items()},
        }

    def _mark(self, name: str) -> None:
        self._tasks.append({"name": name, "start": self._sample(), "results": {}})

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._mark(task.get_name())

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._mark("handler: " + task.get_name())

    def _result(self, result: Any, status: str) -> None:
        if self._tasks:
            changed = status == "ok" and bool(result._result.get("changed"))
            self._tasks[-1]["results"][result._host.get_name()] = "changed" if changed else status

    def v2_runner_on_ok(self, result: Any) -> None:
        self._result(result, "ok")

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._result(result, "failed")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._result(result, "skipped")

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._result(result, "unreachable")

    def v2_playbook_on_stats(self, stats: Any) -> None:
        end = self._sample()
        tasks = []
        for task, after in zip(
            self._tasks, [*(t["start"] for t in self._tasks[1:]), end], strict=True
        ):
            before = task["start"]
            tasks.append(
                {
                    "name": task["name"],
                    "seconds": after["t"] - before["t"],
                    "controller_cpu": after["controller"] - before["controller"],
                    "hosts_cpu": {
                        h: after["hosts"].get(h, 0.0) - before["hosts"].get(h, 0.0)
                        for h in before["hosts"]
                    },
                    "results": task["results"],
                }
            )
        if self._out:
            Path(self._out).write_text(json.dumps({"tasks": tasks, "seconds": end["t"]}))
