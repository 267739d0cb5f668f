"""Wall time of `status` and `verify` on a deployed lab, beside `ansible all -m ping`.

Run as root on Linux: `.venv/bin/python benchmarks/status_bench.py --hosts 8`.
Boots a fresh lab on its own bridge (pdbench1, 10.239.0.0/24, or the PYDASK_LAB_* variables),
applies the cluster, then times each command RUNS times (median, min, max, and the median
as a multiple of ping's) and tears the lab down. The commands are timed end to end as a
user runs them (interpreter start, inventory parse, SSH to every host); status also reports
its SSH round alone (the scheduler's view is read from its dashboard on its own host, in the
same round), and verify runs testinfra over one kept ssh connection per host.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydask_deploy import lab as lab_module

BIN = Path(sys.executable).parent
TOOL = [sys.executable, "-m", "pydask_deploy"]


def run(argv: list[str], env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def timed(argv: list[str]) -> float:
    started = time.monotonic()
    run(argv)
    return time.monotonic() - started


def figures(samples: list[float]) -> str:
    return f"{statistics.median(samples):.2f} s | {min(samples):.2f} s | {max(samples):.2f} s"


def bench(count: int, runs: int, workdir: Path) -> dict[str, list[float]]:
    config = (
        lab_module.LabConfig.from_env()
        if "PYDASK_LAB_DIR" in os.environ
        else lab_module.LabConfig(
            state_dir=workdir / "lab",
            bridge="pdbench1",
            subnet=ipaddress.IPv4Network("10.239.0.0/24"),
        )
    )
    env = {
        "PYDASK_LAB_DIR": str(config.state_dir),
        "PYDASK_LAB_BRIDGE": config.bridge,
        "PYDASK_LAB_SUBNET": str(config.subnet),
    }
    inventory = workdir / "lab.yml"
    samples: dict[str, list[float]] = {}
    try:
        print(f"lab up --hosts {count} ...", file=sys.stderr)
        run([*TOOL, "lab", "up", "--hosts", str(count), "-o", str(inventory)], env)
        print("apply ...", file=sys.stderr)
        run([*TOOL, "apply", str(inventory)])
        # the cluster is up once every worker registered: wait for a healthy status first
        deadline = time.monotonic() + 120
        while (
            json.loads(run([*TOOL, "status", str(inventory), "--json"], ok=(0, 1)))["ok"] is False
        ):
            if time.monotonic() > deadline:
                raise SystemExit("the cluster did not become healthy in 120 s")
            time.sleep(1)
        status = [*TOOL, "status", str(inventory)]
        ping = [str(BIN / "ansible"), "all", "-i", str(inventory), "-m", "ping"]
        samples["pydask-deploy status"] = [timed(status) for _ in range(runs)]
        samples["status: its SSH round alone (in-process)"] = [
            json.loads(run([*status, "--json"]))["seconds"] for _ in range(runs)
        ]
        samples["pydask-deploy verify"] = [
            timed([*TOOL, "verify", str(inventory)]) for _ in range(runs)
        ]
        samples["ansible all -m ping"] = [timed(ping) for _ in range(runs)]
        # what every command pays before its first SSH connection: Python and the CLI
        samples["pydask-deploy --help (start-up alone)"] = [
            timed([*TOOL, "--help"]) for _ in range(runs)
        ]
    finally:
        lab_module.lab_down(config, lambda _: None)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pydask-status-bench-") as tmp:
        samples = bench(args.hosts, args.runs, Path(tmp))
    print(f"{args.hosts} hosts, {args.runs} runs each\n")
    ping = statistics.median(samples["ansible all -m ping"])
    print("| command | median | min | max | ratio to ping |")
    print("|---|---|---|---|---|")
    for name, values in samples.items():
        print(f"| {name} | {figures(values)} | {statistics.median(values) / ping:.2f} |")


if __name__ == "__main__":
    main()
