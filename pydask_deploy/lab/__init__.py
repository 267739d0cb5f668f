"""The local lab: real Debian hosts (systemd + sshd) on one Linux machine, for tests and trials.

Each host is a ``systemd-nspawn`` container with systemd as PID 1, its own sshd and its own
address on a private bridge, sharing one cached read-only root filesystem through overlayfs.
The hosts reach nothing but the controller: the lab is an air-gapped cluster by construction.
The facts and pitfalls behind each step are in the project's lab notes (LAB-NOTES.md).

This module holds what the commands and tests call (``lab_up``, ``lab_down``,
``lab_reboot``, ``lab_status``, ``ssh_command``, ``booted_lab``); each step lives in its own
module: ``config`` (the values), ``system`` (commands, processes, mounts), ``record``
(``lab.json``), ``rootfs`` (the cached root filesystems, one per Debian release, and layers),
``network`` (the bridge), ``hosts`` (start, stop, reboot, clean up), ``services`` (the Docker
registry) and ``inventory`` (the inventory it writes).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from pydask_deploy.errors import LabError, LabUsageError
from pydask_deploy.lab.config import (
    DEFAULT_SUBNET,
    MAX_HOSTS,
    REGISTRY_PORT,
    RELEASES,
    SSH_OPTIONS,
    SUITE,
    Lab,
    LabConfig,
    LabHost,
    Reboot,
    Say,
    Share,
    describe_releases,
    host_releases,
    parse_share,
)
from pydask_deploy.lab.hosts import (
    clean_state,
    mount_overlay,
    power_off,
    prepare_host,
    reset_host,
    start_host,
    stop_hosts,
)
from pydask_deploy.lab.inventory import inventory_data, inventory_spec, write_inventory
from pydask_deploy.lab.network import (
    bridge_down,
    bridge_exists,
    bridge_up,
    check_subnet_free,
    interfaces_on,
)
from pydask_deploy.lab.record import host_marker, read_lab, running_hosts, write_record
from pydask_deploy.lab.rootfs import (
    DOCKER_LAYER_PACKAGES,
    ROOTFS_PACKAGES,
    ensure_docker_layer,
    ensure_key,
    ensure_rootfs,
)
from pydask_deploy.lab.services import start_registry, stop_services
from pydask_deploy.lab.system import inotify_instances, mounts_under, pid_alive, raise_sysctl
from pydask_deploy.observe import remote

__all__ = [
    "DEFAULT_SUBNET",
    "DOCKER_LAYER_PACKAGES",
    "MAX_HOSTS",
    "REGISTRY_PORT",
    "RELEASES",
    "ROOTFS_PACKAGES",
    "SSH_OPTIONS",
    "SUITE",
    "Lab",
    "LabConfig",
    "LabHost",
    "Reboot",
    "Say",
    "Share",
    "booted_lab",
    "bridge_up",
    "check_can_run",
    "check_subnet_free",
    "ensure_docker_layer",
    "ensure_key",
    "ensure_rootfs",
    "find_host",
    "has_leftovers",
    "host_releases",
    "interfaces_on",
    "inventory_data",
    "inventory_spec",
    "lab_down",
    "lab_reboot",
    "lab_status",
    "lab_up",
    "parse_share",
    "read_lab",
    "running_hosts",
    "ssh_command",
    "write_inventory",
    "write_record",
]

# The names the lab had as one module, which the tests still reach for.
_write_record = write_record
_mounts_under = mounts_under


def check_can_run(config: LabConfig) -> None:
    """Raise ``LabUsageError`` unless this machine can run a lab (Linux, root, nspawn)."""
    if platform.system() != "Linux":
        raise LabUsageError(f"the lab needs Linux (systemd-nspawn); this is {platform.system()}")
    if os.geteuid() != 0:
        raise LabUsageError("the lab needs root (it mounts overlays and creates a bridge)")
    for tool in ("systemd-nspawn", "ip", "ssh-keygen", "mount"):
        if shutil.which(tool) is None:
            raise LabUsageError(
                f"`{tool}` not found; install the lab's packages with scripts/setup "
                "(apt packages systemd-container, iproute2, openssh-client)"
            )


def _wanted_releases(count: int, docker: bool, releases: Sequence[str] | None) -> tuple[str, ...]:
    """Each host's release, once the request is known to be one the lab can boot."""
    if not 1 <= count <= MAX_HOSTS:
        raise LabUsageError(f"--hosts must be between 1 and {MAX_HOSTS}, got {count}")
    wanted = tuple(releases) if releases else (SUITE,) * count
    if len(wanted) != count or any(r not in RELEASES for r in wanted):
        raise LabUsageError(f"one release per host, of {', '.join(RELEASES)}; got {wanted}")
    if docker and any(r != SUITE for r in wanted):
        # the Docker package layer is built over the default release's rootfs
        others = ", ".join(sorted(set(wanted) - {SUITE}))
        raise LabUsageError(f"--docker hosts run {SUITE} only, not {others}")
    return wanted


def _refuse_another_lab(
    existing: Lab, count: int, docker: bool, wanted: tuple[str, ...], shares: Sequence[Share]
) -> None:
    """A running lab of other options is the user's to take down, never ours to replace."""
    up = len(running_hosts(existing))
    have = tuple(h.release for h in existing.hosts)
    if (len(existing.hosts), existing.docker, have, existing.shares) == (
        count,
        docker,
        wanted,
        tuple(shares),
    ):
        return
    flags = ["--docker"] * existing.docker + [f"--share {s.spec}" for s in existing.shares]
    kind = f" with {' '.join(flags)}" if flags else ""
    raise LabUsageError(
        f"a lab of {len(existing.hosts)} hosts{describe_releases(have)}{kind} is "
        f"already up ({up} running); run `pydask-deploy lab down` first, then `lab up` "
        "with the new options"
    )


def _start_missing_hosts(
    config: LabConfig,
    existing: Lab | None,
    wanted: tuple[str, ...],
    docker: bool,
    shares: Sequence[Share],
) -> list[LabHost]:
    """The lab's hosts: those already running kept, the others prepared and started."""
    count = len(wanted)
    hosts: list[LabHost] = []
    for index in range(1, count + 1):
        name = f"h{index}"
        old = next((h for h in existing.hosts if h.name == name), None) if existing else None
        if old is not None:
            hosts.append(old)
            continue
        release = wanted[index - 1]
        prepare_host(config, index, count, docker, release)
        pid = start_host(config, index, docker, release, shares)
        hosts.append(
            LabHost(
                name=name, address=config.address_of(index), index=index, pid=pid, release=release
            )
        )
    return hosts


def _booted(config: LabConfig, hosts: list[LabHost], fresh: bool) -> tuple[LabHost, ...]:
    """The hosts once each has booted (or failed to), with its state and boot time."""
    states = remote.wait_until_booted(
        [(h.name, h.address) for h in hosts], key=config.key_path, timeout=180
    )
    return tuple(
        replace(
            h,
            # an answer from a host whose nspawn is gone came from something else
            state=states[h.name].state
            if pid_alive(h.pid, host_marker(config, h.name))
            else "failed to start",
            boot_seconds=states[h.name].seconds if fresh else h.boot_seconds,
        )
        for h in hosts
    )


def lab_up(
    count: int,
    docker: bool,
    inventory_path: Path,
    config: LabConfig,
    say: Say,
    releases: Sequence[str] | None = None,
    shares: Sequence[Share] = (),
) -> Lab:
    """Boot ``count`` hosts (idempotent for a lab of that size and kind) and write the
    inventory; ``releases`` names each host's Debian release (default: all ``SUITE``),
    ``shares`` the directories of this machine every host mounts."""
    wanted = _wanted_releases(count, docker, releases)
    check_can_run(config)
    existing = read_lab(config)
    if existing is not None and running_hosts(existing):
        _refuse_another_lab(existing, count, docker, wanted, shares)
    if existing is not None and len(running_hosts(existing)) == len(existing.hosts):
        say(f"a lab of {count} hosts is already up")
    elif existing is not None or has_leftovers(config):
        # A crashed run or a host that died: start from a clean slate rather than patch it.
        say("cleaning up a previous lab that did not shut down cleanly")
        lab_down(config, say)
        existing = None
    check_subnet_free(config)
    for release in sorted(set(wanted)):
        ensure_rootfs(config, say, release)
    if docker:
        ensure_docker_layer(config, say)
    config.wheelhouse.mkdir(parents=True, exist_ok=True)
    bridge_up(config)
    # each booted systemd takes ~5 inotify instances from root's per-user limit (default 128),
    # which every lab on the machine shares: leave room above what is already taken
    raise_sysctl("fs.inotify.max_user_instances", inotify_instances() + 64 + 8 * count)

    started = time.monotonic()
    services = dict(existing.services) if existing else {}
    hosts = _start_missing_hosts(config, existing, wanted, docker, shares)
    registry = f"{config.gateway}:{REGISTRY_PORT}" if docker else None
    if docker and not pid_alive(services.get("registry", 0), "docker-registry"):
        services["registry"] = start_registry(config)
    lab = Lab(
        config=config,
        hosts=tuple(hosts),
        docker=docker,
        registry=registry,
        services=services,
        shares=tuple(shares),
    )
    write_record(lab)  # record PIDs first, so `lab down` can clean up a failed boot

    say(f"waiting for {count} host(s) to finish booting")
    lab = replace(lab, hosts=_booted(config, hosts, fresh=existing is None))
    write_record(lab)
    bad = [h for h in lab.hosts if h.state not in ("running", "degraded")]
    write_inventory(lab, inventory_path)
    if bad:
        names = ", ".join(f"{h.name} ({h.state})" for h in bad)
        raise LabError(
            f"host(s) did not come up: {names}; see {config.run_dir}/<host>/console.log "
            f"(boot took {time.monotonic() - started:.1f} s)"
        )
    return lab


def has_leftovers(config: LabConfig) -> bool:
    """Whether a lab left mounts, its bridge or host directories behind."""
    return (
        bool(mounts_under(config.state_dir))
        or bridge_exists(config)
        or (config.run_dir.exists() and any(config.run_dir.iterdir()))
    )


def lab_down(config: LabConfig, say: Say) -> int:
    """Stop every host and remove mounts, cgroups, bridge and services; return hosts stopped."""
    lab = read_lab(config)
    if lab is None and not has_leftovers(config):
        return 0
    if os.geteuid() != 0:
        raise LabUsageError("the lab needs root to shut down (it unmounts overlays)")
    stopped = 0
    if lab is not None:
        stop_services(lab)
        stopped = len(running_hosts(lab))
        stop_hosts(config, lab.hosts)
    clean_state(config)
    bridge_down(config)
    return stopped


def lab_status(config: LabConfig) -> list[LabHost]:
    """The recorded hosts with their current state (``stopped`` when the nspawn is gone)."""
    lab = read_lab(config)
    if lab is None:
        return []
    alive = {h.name for h in running_hosts(lab)}
    states = remote.system_states(
        [(h.name, h.address) for h in lab.hosts if h.name in alive], key=config.key_path
    )
    return [
        LabHost(
            name=h.name,
            address=h.address,
            index=h.index,
            pid=h.pid,
            state=states.get(h.name, "stopped"),
            boot_seconds=h.boot_seconds,
            release=h.release,
        )
        for h in lab.hosts
    ]


def find_host(lab: Lab, host: str) -> LabHost:
    """A lab host by name (``h2``), number (``2``) or address; ``LabUsageError`` naming the
    lab's hosts when there is none."""
    wanted = f"h{host}" if host.isdigit() else host
    match = next((h for h in lab.hosts if wanted in (h.name, h.address)), None)
    if match is None:
        raise LabUsageError(f"no lab host {host!r}; the lab has {_names(lab)}")
    return match


def ssh_command(config: LabConfig, host: str, command: Sequence[str]) -> list[str]:
    """The ssh argv that reaches a lab host by name (``h2``), number (``2``) or address."""
    lab = read_lab(config)
    if lab is None:
        raise LabUsageError("no lab is up; start one with `pydask-deploy lab up`")
    match = find_host(lab, host)
    return ["ssh", "-i", str(config.key_path), *SSH_OPTIONS, f"root@{match.address}", *command]


def lab_reboot(
    config: LabConfig, names: Sequence[str], say: Say, timeout: float = 180
) -> list[Reboot]:
    """Reboot lab hosts, all at once, on their own disks, and wait until each has booted.

    Like a real reboot: each host's systemd shuts down in order (an nspawn still there after
    90 s is killed, as a power cut would), then the host boots again on the same overlay,
    address and host key, as soon as it is down. Unknown names raise ``LabUsageError``
    before any host is touched.
    """
    lab = read_lab(config)
    if lab is None:
        raise LabUsageError("no lab is up; start one with `pydask-deploy lab up`")
    if not names:
        raise LabUsageError(f"name the hosts to reboot; the lab has {_names(lab)}")
    targets = list({h.name: h for h in (find_host(lab, n) for n in names)}.values())
    check_can_run(config)
    raise_sysctl("fs.inotify.max_user_instances", inotify_instances() + 64 + 8 * len(targets))
    started = time.monotonic()
    say(f"rebooting {', '.join(h.name for h in targets)}")
    hosts = {h.name: h for h in lab.hosts}
    down: dict[str, float] = {}
    booting: dict[str, float] = {}
    try:
        for host, seconds in power_off(config, targets, timeout=90):
            down[host.name] = seconds
            reset_host(config, host.name)
            mount_overlay(config, host.name, lab.docker, host.release)
            booting[host.name] = time.monotonic()
            pid = start_host(config, host.index, lab.docker, host.release, lab.shares)
            hosts[host.name] = replace(host, pid=pid, state="booting")
    finally:
        # record the new PIDs even when a start fails, so that `lab down` finds every host
        lab = replace(lab, hosts=tuple(hosts[h.name] for h in lab.hosts))
        write_record(lab)
    waited = time.monotonic()
    states = remote.wait_until_booted(
        [(h.name, h.address) for h in targets], key=config.key_path, timeout=timeout
    )
    results: list[Reboot] = []
    for target in targets:
        host = hosts[target.name]
        state = states[host.name]
        booted = waited + state.seconds
        alive = pid_alive(host.pid, host_marker(config, host.name))
        host = replace(
            host,
            state=state.state if alive else "failed to start",
            boot_seconds=booted - booting[host.name],
        )
        hosts[host.name] = host
        results.append(
            Reboot(
                host=host,
                down_seconds=down[host.name],
                boot_seconds=booted - booting[host.name],
                seconds=booted - started,
            )
        )
    write_record(replace(lab, hosts=tuple(hosts[h.name] for h in lab.hosts)))
    return results


def _names(lab: Lab) -> str:
    return ", ".join(h.name for h in lab.hosts)


@contextlib.contextmanager
def booted_lab(
    count: int,
    inventory_path: Path,
    config: LabConfig,
    docker: bool = False,
    say: Say = print,
    releases: Sequence[str] | None = None,
    shares: Sequence[Share] = (),
) -> Iterator[Lab]:
    """Boot a lab for the duration of a block and always tear it down (test fixtures)."""
    try:
        yield lab_up(count, docker, inventory_path, config, say, releases, shares)
    finally:
        lab_down(config, say)
