"""The hosts: one systemd-nspawn container each, booted over its own overlay of a rootfs.

Each host gets its own cgroup (two hosts started from one would share their payload), its
own host key and network file, and is powered off by a SIGTERM to its nspawn. Its overlay
outlives its nspawn, so a host can boot again on the same disk (a reboot). What a host
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
from collections.abc import Iterator, Sequence
from pathlib import Path

from pydask_deploy.lab.config import (
    REGISTRY_PORT,
    SUITE,
    UNIFIED_CGROUP_RELEASES,
    LabConfig,
    LabHost,
    Share,
)
from pydask_deploy.lab.record import host_marker
from pydask_deploy.lab.system import make_key, mounts_under, overlay, pid_alive, run, unmount


def _cgroup_roots() -> list[Path]:
    """cgroup hierarchies nspawn writes to: pure v2, or the hybrid name=systemd + unified pair."""
    base = Path("/sys/fs/cgroup")
    if run(["stat", "-fc", "%T", str(base)]).stdout.strip() == "cgroup2fs":
        return [base]
    return [base / h for h in ("systemd", "unified") if (base / h).is_dir()]


def _cgroup_dirs(config: LabConfig, name: str) -> list[Path]:
    """The cgroups a host is started in, one per hierarchy, under the lab's own."""
    return [root / f"pydask-lab-{config.bridge}" / name for root in _cgroup_roots()]


def _kill_leftovers(config: LabConfig, name: str | None = None) -> None:
    """SIGKILL what still runs in the lab's cgroups (or one host's): a host whose nspawn
    died leaves its init."""
    tops = [root / f"pydask-lab-{config.bridge}" for root in _cgroup_roots()]
    if name is not None:
        tops = _cgroup_dirs(config, name)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids: set[int] = set()
        for top in tops:
            for procs in top.rglob("cgroup.procs"):
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


def mount_overlay(config: LabConfig, name: str, docker: bool, release: str = SUITE) -> Path:
    """Mount the host's disk, its overlay over ``release``'s rootfs, unless it is mounted."""
    d = config.run_dir / name
    for sub in ("upper", "work", "root"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    root = d / "root"
    lower = str(config.rootfs_of(release))
    if docker:
        lower = f"{config.docker_layer / 'upper'}:{lower}"
    if not os.path.ismount(root):
        overlay(lower, d / "upper", d / "work", root)
    return d


def prepare_host(
    config: LabConfig, index: int, count: int, docker: bool, release: str = SUITE
) -> Path:
    """Mount a new host's overlay and write its identity: host key, network, /etc/hosts."""
    name = f"h{index}"
    d = mount_overlay(config, name, docker, release)
    root = d / "root"
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


def start_host(
    config: LabConfig,
    index: int,
    docker: bool,
    release: str = SUITE,
    shares: Sequence[Share] = (),
) -> int:
    """Start the host's nspawn in its own cgroup, with the lab's shared directories bound
    in; return the nspawn PID."""
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
        # the same directory of this machine in every host, read and written through
        *(f"--bind={share.source}:{share.mountpoint}" for share in shares),
    ]
    env = dict(os.environ)
    if docker or release in UNIFIED_CGROUP_RELEASES:
        # a pure cgroup v2 tree inside: dockerd needs it, and systemd >= 256 boots on no other
        env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
    if docker:
        # dockerd inside: keyrings and bpf for runc, /var/lib/docker off overlayfs
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


def power_off(
    config: LabConfig, hosts: Sequence[LabHost], timeout: float = 20
) -> Iterator[tuple[LabHost, float]]:
    """Power every host off at once (nspawn turns SIGTERM into an orderly poweroff) and yield
    each, with the seconds it took, as its nspawn exits; after ``timeout`` seconds the nspawns
    still there are killed. A host already off is yielded at once."""
    started = time.monotonic()
    alive = [h for h in hosts if pid_alive(h.pid, host_marker(config, h.name))]
    for h in hosts:
        if h not in alive:
            yield h, 0.0
    for h in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(h.pid, signal.SIGTERM)
    deadline = started + timeout
    pending = list(alive)
    while pending:
        for h in list(pending):
            if not pid_alive(h.pid, host_marker(config, h.name)):
                # reap our own child if this process started it; ignore the rest
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(h.pid, os.WNOHANG)
                pending.remove(h)
                yield h, time.monotonic() - started
        if pending and time.monotonic() >= deadline:
            for h in pending:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(h.pid, signal.SIGKILL)
            deadline = float("inf")  # killed: they are gone as soon as the kernel says so
        if pending:
            time.sleep(0.05)


def stop_hosts(config: LabConfig, hosts: Sequence[LabHost], timeout: float = 20) -> None:
    """Power every host off at once and wait until every nspawn is gone (``power_off``)."""
    for _ in power_off(config, hosts, timeout):
        pass


def reset_host(config: LabConfig, name: str) -> None:
    """Make a stopped host ready to boot again on its disk: kill what its nspawn left in its
    cgroups and remove them (nspawn makes its payload and supervisor cgroups anew), remove
    its propagate directory, and wait for its veth to go (a new one takes the same name)."""
    _kill_leftovers(config, name)
    for top in _cgroup_dirs(config, name):
        if top.is_dir():
            for d in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if d.is_dir():
                    with contextlib.suppress(OSError):
                        d.rmdir()
    machine = _machine_name(config, name)
    shutil.rmtree(Path("/run/systemd/nspawn/propagate") / machine, ignore_errors=True)
    veth = f"vb-{machine}"  # nspawn's name for it, when it fits in 15 characters
    deadline = time.monotonic() + 10
    while len(veth) <= 15 and time.monotonic() < deadline:
        if subprocess.run(["ip", "link", "show", veth], capture_output=True).returncode:
            break
        time.sleep(0.1)


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
