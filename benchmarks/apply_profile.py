"""Where a run's time goes: wall time and CPU per task, on the controller and in the hosts.

Run as root against a lab that is up (`pydask-deploy lab up`), e.g. for a cold apply:

    .venv/bin/python benchmarks/apply_profile.py -- \\
        .venv/bin/pydask-deploy apply inventory/lab.yml

The command runs in a cgroup of its own, and the ``task_profile`` callback beside this file
reads that cgroup's CPU and each lab host's (the lab starts every host in its own cgroup)
at every task start; so the figures stay true on a machine that is busy with other work,
where wall times do not. Prints one row per task, the slowest first (``--json`` for all).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from pydask_deploy.lab import LabConfig, read_lab

HERE = Path(__file__).resolve().parent


def cgroup_root() -> Path:
    """The cgroup v2 hierarchy: /sys/fs/cgroup itself, or the hybrid layout's unified/."""
    base = Path("/sys/fs/cgroup")
    return base if (base / "cgroup.controllers").exists() else base / "unified"


def host_cgroups(config: LabConfig) -> dict[str, Path]:
    """Each lab host's cgroup (where ``lab up`` started its nspawn)."""
    lab = read_lab(config)
    if lab is None:
        raise SystemExit("no lab is up (PYDASK_LAB_DIR ...): run `pydask-deploy lab up` first")
    return {h.name: cgroup_root() / f"pydask-lab-{config.bridge}" / h.name for h in lab.hosts}


class PeakMemory(threading.Thread):
    """The peak, over the run, of the summed RSS of the processes in a cgroup (sampled every
    quarter second): the controller's memory as `top` shows it, forks included."""

    def __init__(self, cgroup: Path) -> None:
        super().__init__(daemon=True)
        self.cgroup, self.peak, self.done = cgroup, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            total = 0
            for pid in (self.cgroup / "cgroup.procs").read_text().split():
                with contextlib.suppress(psutil.Error):
                    total += psutil.Process(int(pid)).memory_info().rss
            self.peak = max(self.peak, total)


def profile(
    command: list[str], hosts: dict[str, Path], env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``command`` in its own cgroup with the profiling callback; its profile: each task,
    the wall time, the controller's CPU seconds and peak memory, each host's CPU seconds."""
    own = cgroup_root() / f"pydask-bench-{os.getpid()}"
    own.mkdir(exist_ok=True)
    hosts_before = {name: _usage(path) for name, path in hosts.items()}
    with tempfile.TemporaryDirectory(prefix="pydask-profile-") as tmp:
        out = Path(tmp) / "profile.json"
        env = {
            **os.environ,
            **(env or {}),
            "ANSIBLE_CALLBACK_PLUGINS": str(HERE / "callback_plugins"),
            "ANSIBLE_CALLBACKS_ENABLED": "task_profile",
            "PYDASK_PROFILE_CONTROLLER_CGROUP": str(own),
            "PYDASK_PROFILE_HOST_CGROUPS": ":".join(f"{n}={p}" for n, p in hosts.items()),
            "PYDASK_PROFILE_OUT": str(out),
        }
        memory = PeakMemory(own)
        memory.start()
        started = time.monotonic()
        done = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            preexec_fn=lambda: (own / "cgroup.procs").write_text("0"),
        )
        seconds = time.monotonic() - started
        memory.done.set()
        memory.join()
        cpu = _usage(own)
        # ssh ControlPersist masters outlive the command: hand them back to the root cgroup
        for pid in (own / "cgroup.procs").read_text().split():
            (own.parent / "cgroup.procs").write_text(pid)
        own.rmdir()
        if done.returncode != 0:
            print(f"{command} failed ({done.returncode}):\n{done.stderr[-3000:]}", file=sys.stderr)
        data: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"tasks": []}
        data["returncode"] = done.returncode
    data["command_seconds"] = seconds
    data["controller_cpu_total"] = cpu
    data["controller_peak_rss"] = memory.peak
    data["hosts_cpu_total"] = {n: _usage(p) - hosts_before[n] for n, p in hosts.items()}
    data["stdout"] = done.stdout
    return data


def _usage(cgroup: Path) -> float:
    """CPU seconds a cgroup has used."""
    for line in (cgroup / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    return 0.0


def table(data: dict[str, Any], rows: int) -> str:
    """The slowest tasks by wall time, with the CPU they cost."""
    tasks = sorted(data["tasks"], key=lambda t: -t["seconds"])
    lines = [
        f"{'task':60} {'wall s':>7} {'ctl cpu':>8} {'hosts cpu':>9} {'max host':>8}  changed",
    ]
    for t in tasks[:rows]:
        hosts = t["hosts_cpu"].values()
        changed = sum(1 for s in t["results"].values() if s == "changed")
        lines.append(
            f"{t['name'][:60]:60} {t['seconds']:7.2f} {t['controller_cpu']:8.2f} "
            f"{sum(hosts):9.2f} {max(hosts, default=0):8.2f}  {changed}"
        )
    total_hosts = sum(data["hosts_cpu_total"].values())
    lines.append(
        f"{'whole command':60} {data['command_seconds']:7.2f} "
        f"{data['controller_cpu_total']:8.2f} {total_hosts:9.2f}"
        f"   ({len(data['tasks'])} tasks; Ansible's own wall {data.get('seconds', 0):.2f} s; "
        f"controller peak RSS {data['controller_peak_rss'] / 2**20:.0f} MiB)"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    data = profile(command, {n: p for n, p in host_cgroups(LabConfig.from_env()).items()})
    print(json.dumps(data, indent=1) if args.json else table(data, args.rows))
    return 1 if data["returncode"] else 0


if __name__ == "__main__":
    sys.exit(main())
