"""A rolling upgrade on a deployed lab: staging ahead, then each batch beside its floor.

Run as root on Linux, on a quiet machine: `.venv/bin/python benchmarks/upgrade_bench.py
--hosts 8` (lab on pdbench2, 10.240.0.0/24, or the PYDASK_LAB_* variables).

Boots fresh hosts, applies, then:

- the floor of one batch, RUNS times on one worker host, with a client: retire that host's
  workers (the scheduler moves their data), `systemctl restart dask-worker`, wait until the
  host's new workers are registered. No upgrade can do a batch in less: the issue's target is
  this floor + 3 s;
- `upgrade --set dask_python_packages=[six] --batch 1 --json` (a new runtime: the venv is built
  once on one host, unpacked on the others while the old workers keep serving), and reports
  the staging seconds and each batch's, as `upgrade --json` does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from apply_bench import fresh_lab, lab_config, lab_env, run

from pydask_deploy import lab as lab_module

RUNS = 3


def floor(inventory: Path, config: lab_module.LabConfig, host: str) -> float:
    """Seconds to retire a host's workers, restart its unit and see new workers registered."""
    from distributed import Client

    from pydask_deploy.inventory import load_inventory
    from pydask_deploy.observe import connection, scheduler

    loaded = load_inventory(inventory)
    lab = lab_module.read_lab(config)
    assert lab is not None
    address = lab_module.find_host(lab, host).address
    with Client(
        connection.cluster_address(loaded), security=scheduler.client_security(loaded), timeout=30
    ) as client:

        def on_host() -> set[str]:
            workers = client.scheduler_info()["workers"]
            return {w for w, info in workers.items() if info["host"] == address}

        old = on_host()
        started = time.monotonic()
        client.retire_workers(workers=sorted(old), close_workers=True)
        subprocess.run(
            lab_module.ssh_command(config, host, ["systemctl", "restart", "dask-worker"]),
            check=True,
            capture_output=True,
        )
        while not (on_host() - old):
            if time.monotonic() - started > 120:
                raise SystemExit(f"no new worker on {host} after 120 s")
            time.sleep(0.1)
        return time.monotonic() - started


def bench(count: int, workdir: Path) -> dict[str, Any]:
    config = lab_config(workdir, bridge="pdbench2", subnet="10.240.0.0/24")
    inventory = workdir / f"lab{count}.yml"
    tool = [sys.executable, "-m", "pydask_deploy"]
    env = lab_env(config)
    figures: dict[str, Any] = {}
    try:
        fresh_lab(count, config, inventory, config.wheelhouse)
        figures["cold apply"] = run([*tool, "apply", str(inventory)], env)[0]
        floors = [floor(inventory, config, "h2") for _ in range(RUNS)]
        figures["floor: retire + restart + registration (one host, median)"] = statistics.median(
            floors
        )
        upgrade = ["upgrade", str(inventory), "--set", "dask_python_packages=[six]"]
        seconds, out = run([*tool, *upgrade, "--batch", "1", "--json"], env)
        report = json.loads(out)
        batches = [b["seconds"] for b in report["batches"]]
        figures["upgrade, whole command"] = seconds
        figures["upgrade: staging (every host, in parallel)"] = report["staging"]["seconds"]
        figures["upgrade: a batch of one host (median)"] = statistics.median(batches)
        figures["upgrade: slowest batch"] = max(batches)
        figures["batches"] = len(batches)
    finally:
        lab_module.lab_down(config, lambda _: None)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pydask-upgrade-bench-") as tmp:
        figures = bench(args.hosts, Path(tmp))
    print(json.dumps(figures, indent=1), file=sys.stderr)
    print(f"| {args.hosts} hosts | seconds |")
    print("|---|---|")
    for step, value in figures.items():
        print(f"| {step} | {value:.1f} |" if isinstance(value, float) else f"| {step} | {value} |")


if __name__ == "__main__":
    main()
