"""Hosts behind a login node: apply, status and `ansible all -m ping` through a jump host.

Run as root on Linux: `.venv/bin/python benchmarks/jump_bench.py --hosts 8`.
Boots a fresh lab of N+1 hosts on its own bridge (pdbench7, 10.250.0.0/24): h1 is the login
node, and the N others accept SSH only from it (sshd `AllowUsers root@<h1>`). The inventory
reaches them through h1 with an `ssh -W` ProxyCommand, as `inventory static --jump` writes.
Times a cold apply once, then each read RUNS times (median, min, max): `pydask-deploy
status` end to end, `ansible all -m ping` with the same inventory, and the SSH round alone
in-process, once with one shared connection to the login node (what status and logs do) and
once with a connection to the login node per host (what a tool without sharing does).
Tears the lab down.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml
from status_bench import BIN, TOOL, figures, run, timed

from pydask_deploy import lab as lab_module
from pydask_deploy.inventory import load_inventory
from pydask_deploy.observe import remote

CONFIG = lab_module.LabConfig(
    state_dir=Path("/var/lib/pydask-deploy/bench-jump-lab"),
    bridge="pdbench7",
    subnet=ipaddress.IPv4Network("10.250.0.0/24"),
)


def behind_login_inventory(lab: lab_module.Lab, path: Path) -> Path:
    """The lab's hosts but h1, reached through h1 only; h2 schedules and every one works."""
    login, *rest = lab.hosts
    key = str(lab.config.key_path)
    jump = remote.jump_ssh_args(remote.Jump(login.address, "root"), key, check_host_keys=False)
    hosts = {h.name: {"ansible_host": h.address} for h in rest}
    data = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": key,
                "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                f"-o UserKnownHostsFile=/dev/null {jump}",
                "ansible_python_interpreter": "/usr/bin/python3",
                "dask_wheelhouse": str(lab.config.wheelhouse),
            },
            "children": {
                "dask_scheduler": {"hosts": {rest[0].name: hosts[rest[0].name]}},
                "dask_workers": {"hosts": hosts},
            },
        }
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ssh_round(inventory: Path, shared: bool) -> float:
    """One `true` on every host through the login node, timed in-process."""
    loaded = load_inventory(inventory)
    targets = {h.name: remote.ssh_target(h) for h in loaded.hosts}

    async def each_alone() -> None:
        await asyncio.gather(*(remote.run_on_hosts({n: t}, "true") for n, t in targets.items()))

    started = time.monotonic()
    asyncio.run(remote.run_on_hosts(targets, "true") if shared else each_alone())
    return time.monotonic() - started


def bench(count: int, runs: int, workdir: Path) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    try:
        print(f"lab up --hosts {count + 1} ...", file=sys.stderr)
        lab = lab_module.lab_up(count + 1, False, workdir / "lab.yml", CONFIG, lambda _: None)
        login = lab.hosts[0].address
        for host in lab.hosts[1:]:
            argv = lab_module.ssh_command(
                CONFIG,
                host.name,
                [
                    f"echo 'AllowUsers root@{login}' > /etc/ssh/sshd_config.d/05-jump.conf"
                    " && systemctl reload ssh"
                ],
            )
            run(argv)
        inventory = behind_login_inventory(lab, workdir / "behind-login.yml")
        print("apply through the login node ...", file=sys.stderr)
        samples["cold apply through the login node"] = [timed([*TOOL, "apply", str(inventory)])]
        deadline = time.monotonic() + 120
        status = [*TOOL, "status", str(inventory)]
        while json.loads(run([*status, "--json"], ok=(0, 1)))["ok"] is False:
            if time.monotonic() > deadline:
                raise SystemExit("the cluster did not become healthy in 120 s")
            time.sleep(1)
        ping = [str(BIN / "ansible"), "all", "-i", str(inventory), "-m", "ping"]
        samples["pydask-deploy status"] = [timed(status) for _ in range(runs)]
        samples["ansible all -m ping"] = [timed(ping) for _ in range(runs)]
        samples["SSH round, one shared login-node connection"] = [
            ssh_round(inventory, shared=True) for _ in range(runs)
        ]
        samples["SSH round, a login-node connection per host"] = [
            ssh_round(inventory, shared=False) for _ in range(runs)
        ]
    finally:
        lab_module.lab_down(CONFIG, lambda _: None)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=8, help="hosts behind the login node")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pydask-jump-bench-") as tmp:
        samples = bench(args.hosts, args.runs, Path(tmp))
    print(f"{args.hosts} hosts behind a login node, {args.runs} runs each\n")
    print("| command | median | min | max |")
    print("|---|---|---|---|")
    for name, values in samples.items():
        shown = figures(values) if len(values) > 1 else f"{values[0]:.2f} s | - | -"
        print(f"| {name} | {shown} |")


if __name__ == "__main__":
    main()
