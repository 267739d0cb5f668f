"""Wall times of lab up, cold apply and no-op re-apply, beside `ansible all -m ping`.

Run as root on Linux: `.venv/bin/python benchmarks/apply_bench.py --hosts 3 8`.
Each size gets a fresh lab, torn down afterwards; PYDASK_LAB_DIR, PYDASK_LAB_BRIDGE and
PYDASK_LAB_SUBNET move it off the default bridge (pdbench0, 10.238.0.0/24). The no-op
re-apply is timed three ways: the fast path (every host found in sync over SSH, Ansible not
started), `apply --full` (every task on every host), and plain ansible-playbook with
Ansible's defaults (forks 5, no pipelining). The controller's wheelhouse is warm (filled by
an earlier run), as it is for any second cluster; the hosts are fresh.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydask_deploy import lab as lab_module
from pydask_deploy.resources import playbook_path, roles_path

BIN = Path(sys.executable).parent


def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run a command; its wall time and stdout (exit on failure)."""
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds, done.stdout


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    return run(argv, env)[0]


def lab_config(count: int, workdir: Path) -> lab_module.LabConfig:
    """The benchmark's lab: from PYDASK_LAB_* when set, else its own default bridge."""
    if "PYDASK_LAB_DIR" in os.environ:
        return lab_module.LabConfig.from_env()
    return lab_module.LabConfig(
        state_dir=workdir / f"lab{count}",
        bridge="pdbench0",
        subnet=ipaddress.IPv4Network("10.238.0.0/24"),
    )


def bench(count: int, workdir: Path) -> dict[str, float]:
    config = lab_config(count, workdir)
    inventory = workdir / f"lab{count}.yml"
    env = {
        "PYDASK_LAB_DIR": str(config.state_dir),
        "PYDASK_LAB_BRIDGE": config.bridge,
        "PYDASK_LAB_SUBNET": str(config.subnet),
    }
    tool = [sys.executable, "-m", "pydask_deploy"]
    figures: dict[str, float] = {}
    try:
        figures["lab up"] = timed(
            [*tool, "lab", "up", "--hosts", str(count), "-o", str(inventory)], env
        )
        figures["ansible all -m ping"] = timed(
            [str(BIN / "ansible"), "all", "-i", str(inventory), "-m", "ping"]
        )
        figures["cold apply"] = timed([*tool, "apply", str(inventory)])
        # the fast path: every host in sync over SSH; check that Ansible really did not start
        seconds, out = run([*tool, "apply", str(inventory), "--json"])
        report = json.loads(out)
        if report["ansible_started"] or len(report["in_sync_hosts"]) != count:
            raise SystemExit(f"the no-op apply did not find every host in sync: {out}")
        figures["no-op apply (fast path)"] = seconds
        figures["no-op apply --full"] = timed([*tool, "apply", str(inventory), "--full"])
        figures["no-op ansible-playbook, Ansible defaults"] = timed(
            [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook_path("site.yml"))],
            {"ANSIBLE_ROLES_PATH": str(roles_path()), "PATH": f"{BIN}:{os.environ['PATH']}"},
        )
        figures["verify"] = timed([*tool, "verify", str(inventory)])
    finally:
        lab_module.lab_down(config, lambda _: None)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[3, 8])
    args = parser.parse_args()
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="pydask-bench-") as tmp:
        for count in args.hosts:
            print(f"benchmarking {count} hosts ...", file=sys.stderr)
            results[count] = bench(count, Path(tmp))
    steps = list(next(iter(results.values())))
    print("| step | " + " | ".join(f"{n} hosts" for n in results) + " |")
    print("|---|" + "---|" * len(results))
    for step in steps:
        print(f"| {step} | " + " | ".join(f"{r[step]:.1f} s" for r in results.values()) + " |")


if __name__ == "__main__":
    main()
