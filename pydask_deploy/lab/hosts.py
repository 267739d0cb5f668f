"""The hosts: one systemd-nspawn container each, booted over its own overlay of the rootfs.

Each host gets its own cgroup (two hosts started from one would share their payload), its
own host key and network file, and is powered off by a SIGTERM to its nspawn. What a host
leaves behind (mounts, cgroups, nspawn's propagate directory) is cleaned here too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from pydask_deploy.lab.config import REGISTRY_PORT, LabConfig, LabHost
from pydask_deploy.lab.record import host_marker
from pydask_deploy.lab.system import make_key, mounts_under, pid_alive, run, unmount


def _cgroup_roots() -> list[Path]:
    """cgroup hierarchies nspawn writes to: pure v2, or the hybrid name=systemd + unified pair."""
    base = Path("/sys/fs/cgroup")
    if run(["stat", "-fc", "%T", str(base)]).stdout.strip() == "cgroup2fs":
        return [base]
    return [base / h for h in ("systemd", "unified") if (base / h).is_dir()]


def _cgroup_dirs(config: LabConfig, name: str) -> list[Path]:
    """The cgroups a host is started in, one per hierarchy, under the lab's own."""
    return [root / f"pydask-lab-{config.bridge}" / name for root in _cgroup_roots()]


def _kill_leftovers(config: LabConfig) -> None:
    """SIGKILL what still runs in the lab's cgroups: a host whose nspawn died leaves its init."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids: set[int] = set()
        for root in _cgroup_roots():
            for procs in (root / f"pydask-lab-{config.bridge}").rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in procs.read_text().split())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _remove_cgroups(config: LabConfig) -> None:
    """Remove the lab's (emptied) cgroup directories, deepest first."""
    for root in _cgroup_roots():
        top = root / f"pydask-lab-{config.bridge}"
        if not top.is_dir():
            continue
        for directory in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if directory.is_dir():
                with contextlib.suppress(OSError):
                    directory.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def prepare_host(config: LabConfig, index: int, count: int, docker: bool) -> Path:
    """Mount the host's overlay and write its identity: host key, network, /etc/hosts."""
    name = f"h{index}"
    d = config.run_dir / name
    for sub in ("upper", "work", "root"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    root = d / "root"
    lower = str(config.rootfs)
    if docker:
        lower = f"{config.docker_layer / 'upper'}:{lower}"
    if not os.path.ismount(root):
        run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={lower},upperdir={d / 'upper'},workdir={d / 'work'}",
                str(root),
            ]
        )
    keys = root / "etc/ssh"
    for old in keys.glob("ssh_host_*"):
        old.unlink()
    make_key(keys / "ssh_host_ed25519_key", name)
    network = root / "etc/systemd/network"
    network.mkdir(parents=True, exist_ok=True)
    # LinkLocalAddressing/IPv6AcceptRA off: otherwise network-online waits 13 s per boot.
    (network / "10-host0.network").write_text(
        f"[Match]\nName=host0\n[Network]\nAddress={config.address_of(index)}/"
        f"{config.subnet.prefixlen}\nGateway={config.gateway}\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    )
    names = "".join(f"{config.address_of(i)}\th{i}\n" for i in range(1, count + 1))
    (root / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n{names}")
    if docker:
        (root / "etc/docker").mkdir(parents=True, exist_ok=True)
        (root / "etc/docker/daemon.json").write_text(
            json.dumps({"insecure-registries": [f"{config.gateway}:{REGISTRY_PORT}"]}) + "\n"
        )
        (d / "docker").mkdir(exist_ok=True)
    return d


def _machine_name(config: LabConfig, name: str) -> str:
    """nspawn machine name, unique per lab so that two labs' veth names never collide."""
    return f"{config.bridge}-{name}"


def start_host(config: LabConfig, index: int, docker: bool) -> int:
    """Start the host's nspawn in its own cgroup; return the nspawn PID."""
    name = f"h{index}"
    d = config.run_dir / name
    cgroups = _cgroup_dirs(config, name)
    for cg in cgroups:
        cg.mkdir(parents=True, exist_ok=True)

    def enter_own_cgroup() -> None:
        # Each nspawn needs its own cgroup: with --keep-unit it creates payload/ and
        # supervisor/ beside itself, and two hosts started from one cgroup would share them.
        for cg in cgroups:
            (cg / "cgroup.procs").write_text("0")

    cmd = [
        "systemd-nspawn",
        "-q",
        "-D",
        str(d / "root"),
        "-M",
        _machine_name(config, name),
        f"--hostname={name}",
        "--boot",
        "--register=no",
        "--keep-unit",
        "--link-journal=no",
        "--console=read-only",
        f"--network-bridge={config.bridge}",
    ]
    env = dict(os.environ)
    if docker:
        # dockerd inside: pure cgroup v2, keyrings and bpf for runc, /var/lib/docker off overlayfs
        env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
        cmd += [
            "--system-call-filter=add_key keyctl request_key bpf",
            f"--bind={d / 'docker'}:/var/lib/docker",
        ]
    with open(d / "console.log", "wb") as console:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=enter_own_cgroup,
            env=env,
        )
    return proc.pid


def stop_hosts(config: LabConfig, hosts: Sequence[LabHost]) -> None:
    """Power every host off at once (nspawn turns SIGTERM into an orderly poweroff), then reap."""
    alive = [h for h in hosts if pid_alive(h.pid, host_marker(config, h.name))]
    for h in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(h.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for h in alive:
        while pid_alive(h.pid, host_marker(config, h.name)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(h.pid, host_marker(config, h.name)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(h.pid, signal.SIGKILL)
    # Reap our own children if this process started them; ignore the rest.
    for h in alive:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(h.pid, os.WNOHANG)


def clean_state(config: LabConfig) -> None:
    """Remove mounts, host directories, cgroups and nspawn leftovers under the state dir."""
    _kill_leftovers(config)
    for point in mounts_under(config.state_dir):
        unmount(point)
    if config.run_dir.exists():
        for d in config.run_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(d / "docker", ignore_errors=True)
            shutil.rmtree(d, ignore_errors=True)
            # /run is not always a tmpfs: nspawn's propagate dir outlives the host
            propagate = Path("/run/systemd/nspawn/propagate") / _machine_name(config, d.name)
            shutil.rmtree(propagate, ignore_errors=True)
    _remove_cgroups(config)
    config.record_path.unlink(missing_ok=True)
