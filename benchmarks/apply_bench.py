"""Cold apply, no-op apply, status and a Dask SSHCluster start, beside `ansible all -m ping`.

Run as root on Linux, on a quiet machine (`uptime` load below 1, no other Ansible or pytest):

    .venv/bin/python benchmarks/apply_bench.py --hosts 3 8 24 [--before REV]

For each size, on fresh lab hosts (PYDASK_LAB_DIR, PYDASK_LAB_BRIDGE and PYDASK_LAB_SUBNET
move the lab off its default bridge, pdbench0 and 10.238.0.0/24):

- `lab up`, and `ansible all -m ping` (RUNS times, median);
- a cold apply with `pydask-deploy apply`, the controller's wheelhouse warm and the venv
  already built for the hosts' platform (the usual case: every cluster after the first);
- the same cold apply with plain `ansible-playbook playbooks/site.yml` (fresh hosts again);
- a cold apply on fresh hosts whose venv was never built: one host builds it (`first`);
- with `--before REV`, the cold apply of that revision of pydask-deploy (fresh hosts);
- on the converged cluster: the no-op apply (every host in sync, Ansible not started), the
  no-op `apply --full`, the same with plain `ansible-playbook`, `verify`, `status`, and the time a
  Dask `SSHCluster` takes to start a scheduler and a worker on every host from the venv apply
  made, until every worker is registered (what `dask ssh` users compare with).

Every apply runs in a cgroup of its own (benchmarks/apply_profile.py): beside its wall time
it reports the controller's CPU seconds and peak memory, the hosts' CPU seconds, and the
three tasks that cost the most CPU, which is what dominates it. Prints a Markdown table;
`--json FILE` keeps every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from apply_profile import host_cgroups, profile

from pydask_deploy import lab as lab_module
from pydask_deploy.resources import playbook_path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
RUNS = 3


def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run a command; its wall time and stdout (exit on failure)."""
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds, done.stdout


def median(argv: list[str], env: dict[str, str] | None = None, runs: int = RUNS) -> float:
    return statistics.median(run(argv, env)[0] for _ in range(runs))


def lab_config(
    workdir: Path, bridge: str = "pdbench0", subnet: str = "10.238.0.0/24"
) -> lab_module.LabConfig:
    """The benchmark's lab: from PYDASK_LAB_* when set, else its own bridge and subnet."""
    if "PYDASK_LAB_DIR" in os.environ:
        return lab_module.LabConfig.from_env()
    return lab_module.LabConfig(
        state_dir=workdir / "lab", bridge=bridge, subnet=ipaddress.IPv4Network(subnet)
    )


def lab_env(config: lab_module.LabConfig) -> dict[str, str]:
    return {
        "PYDASK_LAB_DIR": str(config.state_dir),
        "PYDASK_LAB_BRIDGE": config.bridge,
        "PYDASK_LAB_SUBNET": str(config.subnet),
        "PYDASK_LAB_CACHE": str(config.cache_dir),
    }


def fresh_lab(count: int, config: lab_module.LabConfig, inventory: Path, wheelhouse: Path) -> float:
    """Boot ``count`` fresh hosts (after taking down any before); the seconds `lab up` took.
    The inventory installs from the benchmark's own wheelhouse."""
    lab_module.lab_down(config, lambda _: None)
    tool = [sys.executable, "-m", "pydask_deploy"]
    seconds, _ = run(
        [*tool, "lab", "up", "--hosts", str(count), "-o", str(inventory)], lab_env(config)
    )
    text = inventory.read_text().replace(str(config.wheelhouse), str(wheelhouse))
    inventory.write_text(text)
    return seconds


def summary(data: dict[str, Any]) -> dict[str, Any]:
    """What a profiled run cost, and its three dearest tasks by CPU (controller + hosts)."""

    def cost(task: dict[str, Any]) -> float:
        return float(task["controller_cpu"] + sum(task["hosts_cpu"].values()))

    top = sorted(data["tasks"], key=cost, reverse=True)[:3]
    return {
        "seconds": round(data["command_seconds"], 2),
        "controller_cpu": round(data["controller_cpu_total"], 1),
        "hosts_cpu": round(sum(data["hosts_cpu_total"].values()), 1),
        "controller_peak_mib": round(data["controller_peak_rss"] / 2**20),
        "tasks": len(data["tasks"]),
        "dominant": [f"{t['name'].removeprefix('dask : ')} {cost(t):.1f} CPU-s" for t in top],
    }


def profiled(
    command: list[str], config: lab_module.LabConfig, env: dict[str, str] | None = None
) -> dict[str, Any]:
    data = profile(command, host_cgroups(config), env)
    if data["returncode"]:
        raise SystemExit(f"{' '.join(command)} failed ({data['returncode']})")
    return summary(data)


def ansible_env() -> dict[str, str]:
    """Plain ansible-playbook as a user runs it: the role on its path, Ansible's defaults."""
    return {
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }


def sshcluster_start(inventory: Path) -> float:
    """Seconds for distributed's SSHCluster to start a scheduler (on the first host, other
    ports than the deployed one) and a worker on every host, from the venv apply made, until
    every worker is registered; then it is closed."""
    from distributed import Client
    from distributed.deploy.ssh import SSHCluster

    from pydask_deploy.inventory import load_inventory

    loaded = load_inventory(inventory)
    addresses = [h.address for h in [loaded.scheduler, *loaded.workers]]
    key = str(loaded.dask_vars(loaded.scheduler).get("ansible_ssh_private_key_file", ""))
    key = key or str(lab_module.LabConfig.from_env().key_path)

    async def start() -> float:
        started = time.monotonic()
        async with (
            SSHCluster(
                addresses,
                connect_options={"known_hosts": None, "username": "root", "client_keys": [key]},
                remote_python="/opt/dask/envs/current/bin/python",
                scheduler_options={"port": 8790, "dashboard_address": ":8797"},
                asynchronous=True,
            ) as cluster,
            Client(cluster, asynchronous=True) as client,
        ):
            await client.wait_for_workers(len(addresses) - 1, timeout=300)
            return time.monotonic() - started

    return asyncio.run(start())


def before_tree(rev: str, tree: Path) -> None:
    """The tool at ``rev``, unpacked into ``tree``: run it with PYTHONPATH pointing there."""
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)


def bench(count: int, workdir: Path, before: str | None) -> dict[str, Any]:
    config = lab_config(workdir)
    inventory = workdir / f"lab{count}.yml"
    wheelhouse = workdir / "wheelhouse"
    tool = [sys.executable, "-m", "pydask_deploy"]
    site = str(playbook_path("site.yml"))
    figures: dict[str, Any] = {}
    try:
        figures["lab up"] = fresh_lab(count, config, inventory, wheelhouse)
        ping = [str(BIN / "ansible"), "all", "-i", str(inventory), "-m", "ping"]
        figures["ansible all -m ping"] = median(ping)

        # the first cluster ever on this platform: pip download on the controller (the wheels
        # already there), then one host builds the venv
        shutil.rmtree(wheelhouse / ".pydask-deploy-runtimes", ignore_errors=True)
        for marker in wheelhouse.glob(".pydask-deploy-*"):
            marker.unlink()
        figures["cold apply, first ever (venv built on one host)"] = profiled(
            [*tool, "apply", str(inventory)], config
        )

        # the usual cold apply: the controller holds the platform's venv
        figures["lab up (again)"] = fresh_lab(count, config, inventory, wheelhouse)
        figures["cold apply"] = profiled([*tool, "apply", str(inventory)], config)
        figures["no-op apply (every host in sync)"] = median([*tool, "apply", str(inventory)])
        figures["no-op apply --full"] = profiled([*tool, "apply", str(inventory), "--full"], config)
        plain = [str(BIN / "ansible-playbook"), "-i", str(inventory), site]
        figures["no-op ansible-playbook"] = profiled(plain, config, ansible_env())
        status = [*tool, "status", str(inventory)]
        figures["verify"] = run([*tool, "verify", str(inventory)])[0]  # workers registered
        figures["status"] = median(status)
        figures["SSHCluster start (scheduler + a worker a host, same venv)"] = sshcluster_start(
            inventory
        )

        # the same cold apply through plain ansible-playbook, with the certificates apply made
        # beside the inventory
        fresh_lab(count, config, inventory, wheelhouse)
        figures["cold ansible-playbook"] = profiled(plain, config, ansible_env())

        if before:
            # that revision's own wheelhouse: the same wheels, without uv, which it never used
            old_wheels = workdir / "wheelhouse-before"
            if not old_wheels.exists():
                old_wheels.mkdir()
                for wheel in wheelhouse.glob("*.whl"):
                    if not wheel.name.startswith("uv-"):
                        shutil.copy(wheel, old_wheels)
            tree = workdir / f"before-{before}"
            if not tree.exists():
                before_tree(before, tree)
            fresh_lab(count, config, inventory, old_wheels)
            figures[f"cold apply at {before}"] = profiled(
                [*tool, "apply", str(inventory)], config, {"PYTHONPATH": str(tree)}
            )
    finally:
        lab_module.lab_down(config, lambda _: None)
    return figures


def cell(value: Any) -> str:
    if isinstance(value, dict):
        return (
            f"{value['seconds']:.1f} s (ctl {value['controller_cpu']:.0f} + hosts "
            f"{value['hosts_cpu']:.0f} CPU-s, {value['controller_peak_mib']} MiB)"
        )
    return f"{value:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[3, 8])
    parser.add_argument("--before", help="also time the cold apply of this git revision")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="pydask-bench-") as tmp:
        workdir = Path(tmp)
        # this run's own wheelhouse, filled by its first apply's pip download (from the
        # lab's wheels when they hold what it needs)
        (workdir / "wheelhouse").mkdir()
        for count in args.hosts:
            print(f"benchmarking {count} hosts ...", file=sys.stderr)
            results[count] = bench(count, workdir, args.before)
            print(json.dumps(results[count], indent=1), file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    steps = list(next(iter(results.values())))
    print("| step | " + " | ".join(f"{n} hosts" for n in results) + " |")
    print("|---|" + "---|" * len(results))
    for step in steps:
        print(f"| {step} | " + " | ".join(cell(r.get(step, 0.0)) for r in results.values()) + " |")
    print()
    for count, figures in results.items():
        for step, value in figures.items():
            if isinstance(value, dict):
                print(f"{count} hosts, {step}: {'; '.join(value['dominant'])}")


if __name__ == "__main__":
    main()
