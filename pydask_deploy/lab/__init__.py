"""The local lab: real Debian hosts (systemd + sshd) on one Linux machine, for tests and trials.

Each host is a ``systemd-nspawn`` container with systemd as PID 1, its own sshd and its own
address on a private bridge, sharing one cached read-only root filesystem through overlayfs.
The hosts reach nothing but the controller: the lab is an air-gapped cluster by construction.
The facts and pitfalls behind each step are in the project's lab notes (LAB-NOTES.md).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import platform
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from pydask_deploy.errors import LabError, LabUsageError
from pydask_deploy.observe import remote

# What every lab host has installed; the rootfs is rebuilt when this list changes.
ROOTFS_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-venv",
    "iproute2",
    "procps",
    "ca-certificates",
    "sudo",
    "curl",
)
DOCKER_LAYER_PACKAGES = ("docker.io",)
Say = Callable[[str], None]  # where progress lines go
SUITE = "bookworm"
DEFAULT_SUBNET = ipaddress.IPv4Network("10.231.0.0/24")
MAX_HOSTS = 200
REGISTRY_PORT = 5000
SSH_OPTIONS = (
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
)


@dataclass(frozen=True)
class LabConfig:
    """Where the lab keeps its files and which network it uses.

    The defaults can be moved with environment variables so that two labs (a user's and a
    test run's) can live side by side: ``PYDASK_LAB_DIR``, ``PYDASK_LAB_CACHE``,
    ``PYDASK_LAB_BRIDGE`` and ``PYDASK_LAB_SUBNET``.
    """

    state_dir: Path = Path("/var/lib/pydask-deploy/lab")
    cache_dir: Path = Path("/var/cache/pydask-deploy/lab")
    bridge: str = "pdlab0"
    subnet: ipaddress.IPv4Network = DEFAULT_SUBNET

    @classmethod
    def from_env(cls) -> LabConfig:
        env = os.environ
        default = cls()
        try:
            subnet = ipaddress.IPv4Network(env.get("PYDASK_LAB_SUBNET", str(default.subnet)))
        except ValueError as exc:
            raise LabUsageError(f"PYDASK_LAB_SUBNET: {exc}") from None
        if subnet.prefixlen > 24:
            raise LabUsageError(f"PYDASK_LAB_SUBNET must be a /24 or larger, got {subnet}")
        return cls(
            state_dir=Path(env.get("PYDASK_LAB_DIR", default.state_dir)),
            cache_dir=Path(env.get("PYDASK_LAB_CACHE", default.cache_dir)),
            bridge=env.get("PYDASK_LAB_BRIDGE", default.bridge),
            subnet=subnet,
        )

    @property
    def gateway(self) -> str:
        """The controller's address on the bridge."""
        return str(self.subnet.network_address + 1)

    def address_of(self, index: int) -> str:
        return str(self.subnet.network_address + 10 + index)

    @property
    def key_path(self) -> Path:
        return self.cache_dir / "id_lab"

    @property
    def rootfs(self) -> Path:
        return self.cache_dir / f"rootfs-{SUITE}"

    @property
    def docker_layer(self) -> Path:
        return self.cache_dir / "layer-docker"

    @property
    def wheelhouse(self) -> Path:
        """Controller-side wheel directory that the venv runtime ships to the hosts."""
        return self.cache_dir / "wheelhouse"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "hosts"

    @property
    def record_path(self) -> Path:
        return self.state_dir / "lab.json"


@dataclass(frozen=True)
class LabHost:
    """One lab host as the lab started it."""

    name: str
    address: str
    index: int
    pid: int = 0
    state: str = "unknown"
    boot_seconds: float | None = None


@dataclass(frozen=True)
class Lab:
    """A lab as recorded on disk: its hosts, and whether they can run Docker."""

    config: LabConfig
    hosts: tuple[LabHost, ...]
    docker: bool = False
    registry: str | None = None
    services: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- checks


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


def _interfaces_on(subnet: ipaddress.IPv4Network) -> list[str]:
    """Names of interfaces with an address or a route inside ``subnet``."""
    users: list[str] = []
    addrs = json.loads(_run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]")
    for link in addrs:
        for info in link.get("addr_info", []):
            net = ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False)
            if net.overlaps(subnet):
                users.append(link["ifname"])
    routes = json.loads(_run(["ip", "-j", "-4", "route", "show"]).stdout or "[]")
    for route in routes:
        dst = route.get("dst", "")
        if dst in ("", "default"):
            continue
        if ipaddress.IPv4Network(dst, strict=False).overlaps(subnet) and route.get("dev"):
            users.append(route["dev"])
    return sorted(set(users))


def check_subnet_free(config: LabConfig) -> None:
    """Raise ``LabUsageError`` if something other than our bridge uses the lab subnet."""
    others = [name for name in _interfaces_on(config.subnet) if name != config.bridge]
    if others:
        raise LabUsageError(
            f"the lab subnet {config.subnet} is already used by {', '.join(others)}; "
            "choose another with PYDASK_LAB_SUBNET (e.g. 10.232.0.0/24)"
        )


# --------------------------------------------------------------------------- helpers


def _run(
    cmd: Sequence[str], check: bool = True, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), check=check, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload, no-any-return]
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()[-5:]
        raise LabError(
            f"`{' '.join(cmd)}` failed ({exc.returncode}): " + " / ".join(detail)
        ) from None


def _pid_alive(pid: int, marker: str) -> bool:
    """True if ``pid`` is running and its command line contains ``marker`` (no PID reuse)."""
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return marker in cmdline


def _mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first."""
    prefix = str(path.resolve()) if path.exists() else str(path)
    found = []
    with open("/proc/mounts") as mounts:
        for line in mounts:
            point = line.split()[1].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _unmount(point: Path) -> None:
    if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _cgroup_roots() -> list[Path]:
    """cgroup hierarchies nspawn writes to: pure v2, or the hybrid name=systemd + unified pair."""
    base = Path("/sys/fs/cgroup")
    if _run(["stat", "-fc", "%T", str(base)]).stdout.strip() == "cgroup2fs":
        return [base]
    return [base / h for h in ("systemd", "unified") if (base / h).is_dir()]


def _cgroup_dirs(config: LabConfig, name: str) -> list[Path]:
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


# --------------------------------------------------------------------------- record


def read_lab(config: LabConfig) -> Lab | None:
    """The lab recorded in the state directory, or None."""
    try:
        data = json.loads(config.record_path.read_text())
    except (OSError, ValueError):
        return None
    hosts = tuple(LabHost(**h) for h in data.get("hosts", []))
    return Lab(
        config=config,
        hosts=hosts,
        docker=bool(data.get("docker")),
        registry=data.get("registry"),
        services={k: int(v) for k, v in data.get("services", {}).items()},
    )


def _write_record(lab: Lab) -> None:
    lab.config.state_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "hosts": [asdict(h) for h in lab.hosts],
        "docker": lab.docker,
        "registry": lab.registry,
        "services": lab.services,
        "bridge": lab.config.bridge,
        "subnet": str(lab.config.subnet),
    }
    tmp = lab.config.record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(lab.config.record_path)


def _host_marker(config: LabConfig, name: str) -> str:
    return str(config.run_dir / name / "root")


def running_hosts(lab: Lab) -> list[LabHost]:
    return [h for h in lab.hosts if _pid_alive(h.pid, _host_marker(lab.config, h.name))]


# --------------------------------------------------------------------------- build


def ensure_key(config: LabConfig) -> Path:
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    if not config.key_path.exists():
        _make_key(config.key_path, "pydask-lab")
    return config.key_path


def _make_key(path: Path, comment: str) -> None:
    """A fresh ed25519 key pair without a passphrase at ``path`` (and ``path``.pub)."""
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def _apt_sources() -> str:
    """This machine's own apt sources, handed to mmdebstrap as its mirror."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        return str(deb822)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists() and legacy.read_text().strip():
        return str(legacy)
    raise LabUsageError(
        "no apt sources found (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list);"
        " the lab builds its hosts' root filesystem from this machine's Debian sources"
    )


def ensure_rootfs(config: LabConfig, say: Say) -> None:
    """Build the cached root filesystem once (mmdebstrap); rebuild when packages or key change.

    Running labs use it as their read-only lower layer, so it is never touched otherwise.
    """
    stamp = config.cache_dir / "rootfs.stamp"
    key = ensure_key(config)
    public_key = Path(f"{key}.pub").read_text()
    wanted = " ".join((SUITE, *ROOTFS_PACKAGES)) + "\n" + public_key
    built = (config.rootfs / "lib/systemd/systemd").exists() and stamp.exists()
    if built and stamp.read_text() == wanted:
        return
    if shutil.which("mmdebstrap") is None:
        raise LabUsageError("`mmdebstrap` not found; run scripts/setup (apt package mmdebstrap)")
    say(f"building the lab's root filesystem in {config.rootfs} (once, ~30 s)")
    stamp.unlink(missing_ok=True)
    if config.rootfs.exists():
        shutil.rmtree(config.rootfs)
    started = time.monotonic()
    _run(
        [
            "mmdebstrap",
            "--variant=minbase",
            "--include=" + ",".join(ROOTFS_PACKAGES),
            '--aptopt=Acquire::Check-Valid-Until "false"',
            SUITE,
            str(config.rootfs),
            _apt_sources(),
        ]
    )
    root = config.rootfs
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(public_key)
    (ssh_dir / "authorized_keys").chmod(0o600)
    (root / "etc/hostname").unlink(missing_ok=True)  # nspawn --hostname sets it
    (root / "etc/machine-id").write_text("")  # a fresh machine-id on every boot
    (root / "etc/ssh/sshd_config.d/lab.conf").write_text(
        "UseDNS no\nPermitRootLogin prohibit-password\nHostKey /etc/ssh/ssh_host_ed25519_key\n"
    )
    # no DNS in the lab: names resolve through the /etc/hosts each host gets at boot
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("")
    for args in (
        ["enable", "systemd-networkd.service", "ssh.service"],
        [
            "mask",
            "e2scrub_reap.service",
            "apt-daily.timer",
            "apt-daily-upgrade.timer",
            "getty@tty1.service",
            "console-getty.service",
        ],
    ):
        _run(["chroot", str(root), "systemctl", *args])
    stamp.write_text(wanted)
    say(f"root filesystem built in {time.monotonic() - started:.0f} s")


def ensure_docker_layer(config: LabConfig, say: Say) -> None:
    """Install docker.io once into an overlay layer over the rootfs (by chroot), cached."""
    layer = config.docker_layer
    stamp = layer / "stamp"
    wanted = " ".join(DOCKER_LAYER_PACKAGES)
    if stamp.exists() and stamp.read_text() == wanted:
        return
    say("building the Docker package layer for --docker hosts (once)")
    if layer.exists():
        shutil.rmtree(layer)
    upper, work, merged = layer / "upper", layer / "work", layer / "merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True)
    _run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={config.rootfs},upperdir={upper},workdir={work}",
            str(merged),
        ]
    )
    binds = [merged / "proc", merged / "sys", merged / "dev"]
    try:
        for b in binds:
            _run(["mount", "--bind", "/" + b.name, str(b)])
        # the chroot's apt resolves names like this machine does, for the build only
        (merged / "etc/resolv.conf").unlink(missing_ok=True)
        shutil.copy("/etc/resolv.conf", merged / "etc/resolv.conf")
        policy = merged / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")  # keep services from starting in the chroot
        policy.chmod(0o755)
        _run(
            [
                "chroot",
                str(merged),
                "sh",
                "-c",
                "apt-get -o Acquire::Check-Valid-Until=false update -q && "
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
                + " ".join(DOCKER_LAYER_PACKAGES)
                + " && apt-get clean && rm -rf /var/lib/apt/lists/*",
            ]
        )
        policy.unlink()
        (merged / "etc/resolv.conf").write_text("")
    finally:
        for b in reversed(binds):
            _unmount(b)
        _unmount(merged)
    merged.rmdir()
    shutil.rmtree(work)
    stamp.write_text(wanted)


# --------------------------------------------------------------------------- bridge


def _bridge_exists(config: LabConfig) -> bool:
    return (
        subprocess.run(["ip", "link", "show", config.bridge], capture_output=True).returncode == 0
    )


def bridge_up(config: LabConfig) -> None:
    if not _bridge_exists(config):
        _run(["ip", "link", "add", config.bridge, "type", "bridge"])
    addr = f"{config.gateway}/{config.subnet.prefixlen}"
    have = _run(["ip", "-4", "-o", "addr", "show", "dev", config.bridge]).stdout
    if addr not in have:
        _run(["ip", "addr", "add", addr, "dev", config.bridge])
    _run(["ip", "link", "set", config.bridge, "up"])


# --------------------------------------------------------------------------- hosts


def _prepare_host(config: LabConfig, index: int, count: int, docker: bool) -> Path:
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
        _run(
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
    _make_key(keys / "ssh_host_ed25519_key", name)
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


def _start_host(config: LabConfig, index: int, docker: bool) -> int:
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


def _stop_hosts(config: LabConfig, hosts: Sequence[LabHost]) -> None:
    """Power every host off at once (nspawn turns SIGTERM into an orderly poweroff), then reap."""
    alive = [h for h in hosts if _pid_alive(h.pid, _host_marker(config, h.name))]
    for h in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(h.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for h in alive:
        while _pid_alive(h.pid, _host_marker(config, h.name)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(h.pid, _host_marker(config, h.name)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(h.pid, signal.SIGKILL)
    # Reap our own children if this process started them; ignore the rest.
    for h in alive:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(h.pid, os.WNOHANG)


def _clean_state(config: LabConfig) -> None:
    """Remove mounts, host directories, cgroups and nspawn leftovers under the state dir."""
    _kill_leftovers(config)
    for point in _mounts_under(config.state_dir):
        _unmount(point)
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


# --------------------------------------------------------------------------- services


def _start_registry(config: LabConfig) -> int:
    """Serve a Docker registry on the bridge address for --docker labs (Debian docker-registry)."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise LabUsageError(
            "`docker-registry` not found; --docker labs need it: "
            "PYDASK_LAB_DOCKER=1 scripts/setup (apt package docker-registry)"
        )
    storage = config.cache_dir / "registry"
    storage.mkdir(parents=True, exist_ok=True)
    conf = config.state_dir / "registry.yml"
    conf.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {
                    "filesystem": {"rootdirectory": str(storage)},
                    "delete": {"enabled": True},
                },
                "http": {"addr": f"{config.gateway}:{REGISTRY_PORT}"},
            }
        )
    )
    with open(config.state_dir / "registry.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, "serve", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc.pid


def _stop_services(lab: Lab) -> None:
    markers = {"registry": "docker-registry"}
    for name, pid in lab.services.items():
        if _pid_alive(pid, markers.get(name, name)):
            os.kill(pid, signal.SIGTERM)


# --------------------------------------------------------------------------- public


def lab_up(count: int, docker: bool, inventory_path: Path, config: LabConfig, say: Say) -> Lab:
    """Boot ``count`` hosts (idempotent for a lab of that size) and write the inventory."""
    if not 1 <= count <= MAX_HOSTS:
        raise LabUsageError(f"--hosts must be between 1 and {MAX_HOSTS}, got {count}")
    check_can_run(config)
    existing = read_lab(config)
    if existing is not None and running_hosts(existing):
        up = len(running_hosts(existing))
        if len(existing.hosts) != count or existing.docker != docker:
            kind = " with --docker" if existing.docker else ""
            raise LabUsageError(
                f"a lab of {len(existing.hosts)} hosts{kind} is already up ({up} running); "
                "run `pydask-deploy lab down` first, then `lab up` with the new size"
            )
    if existing is not None and len(running_hosts(existing)) == len(existing.hosts):
        say(f"a lab of {count} hosts is already up")
    elif existing is not None or _has_leftovers(config):
        # A crashed run or a host that died: start from a clean slate rather than patch it.
        say("cleaning up a previous lab that did not shut down cleanly")
        lab_down(config, say)
        existing = None
    check_subnet_free(config)
    ensure_rootfs(config, say)
    if docker:
        ensure_docker_layer(config, say)
    config.wheelhouse.mkdir(parents=True, exist_ok=True)
    bridge_up(config)
    # each booted systemd takes ~5 inotify instances from root's per-user limit (default 128)
    _raise_sysctl("fs.inotify.max_user_instances", 64 + 8 * count)

    started = time.monotonic()
    services = dict(existing.services) if existing else {}
    hosts: list[LabHost] = []
    for index in range(1, count + 1):
        name = f"h{index}"
        old = next((h for h in existing.hosts if h.name == name), None) if existing else None
        if old is not None:
            hosts.append(old)
            continue
        _prepare_host(config, index, count, docker)
        pid = _start_host(config, index, docker)
        hosts.append(LabHost(name=name, address=config.address_of(index), index=index, pid=pid))
    registry = f"{config.gateway}:{REGISTRY_PORT}" if docker else None
    if docker and not _pid_alive(services.get("registry", 0), "docker-registry"):
        services["registry"] = _start_registry(config)
    lab = Lab(
        config=config, hosts=tuple(hosts), docker=docker, registry=registry, services=services
    )
    _write_record(lab)  # record PIDs first, so `lab down` can clean up a failed boot

    say(f"waiting for {count} host(s) to finish booting")
    states = remote.wait_until_booted(
        [(h.name, h.address) for h in hosts], key=config.key_path, timeout=180
    )
    booted = tuple(
        LabHost(
            name=h.name,
            address=h.address,
            index=h.index,
            pid=h.pid,
            # an answer from a host whose nspawn is gone came from something else
            state=states[h.name].state
            if _pid_alive(h.pid, _host_marker(config, h.name))
            else "failed to start",
            boot_seconds=h.boot_seconds if existing else states[h.name].seconds,
        )
        for h in hosts
    )
    lab = Lab(config=config, hosts=booted, docker=docker, registry=registry, services=services)
    _write_record(lab)
    bad = [h for h in booted if h.state not in ("running", "degraded")]
    write_inventory(lab, inventory_path)
    if bad:
        names = ", ".join(f"{h.name} ({h.state})" for h in bad)
        raise LabError(
            f"host(s) did not come up: {names}; see {config.run_dir}/<host>/console.log "
            f"(boot took {time.monotonic() - started:.1f} s)"
        )
    return lab


def _has_leftovers(config: LabConfig) -> bool:
    return (
        bool(_mounts_under(config.state_dir))
        or _bridge_exists(config)
        or (config.run_dir.exists() and any(config.run_dir.iterdir()))
    )


def lab_down(config: LabConfig, say: Say) -> int:
    """Stop every host and remove mounts, cgroups, bridge and services; return hosts stopped."""
    lab = read_lab(config)
    if lab is None and not _has_leftovers(config):
        return 0
    if os.geteuid() != 0:
        raise LabUsageError("the lab needs root to shut down (it unmounts overlays)")
    stopped = 0
    if lab is not None:
        _stop_services(lab)
        stopped = len(running_hosts(lab))
        _stop_hosts(config, lab.hosts)
    _clean_state(config)
    if _bridge_exists(config):
        subprocess.run(["ip", "link", "del", config.bridge], capture_output=True)
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
        )
        for h in lab.hosts
    ]


def ssh_command(config: LabConfig, host: str, command: Sequence[str]) -> list[str]:
    """The ssh argv that reaches a lab host by name (``h2``), number (``2``) or address."""
    lab = read_lab(config)
    if lab is None:
        raise LabUsageError("no lab is up; start one with `pydask-deploy lab up`")
    wanted = f"h{host}" if host.isdigit() else host
    match = next((h for h in lab.hosts if wanted in (h.name, h.address)), None)
    if match is None:
        names = ", ".join(h.name for h in lab.hosts)
        raise LabUsageError(f"no lab host {host!r}; the lab has {names}")
    return ["ssh", "-i", str(config.key_path), *SSH_OPTIONS, f"root@{match.address}", *command]


def inventory_data(lab: Lab) -> dict[str, object]:
    """The Ansible inventory for a lab: first host schedules, the rest work."""
    hosts = {h.name: {"ansible_host": h.address} for h in lab.hosts}
    first, *rest = lab.hosts
    workers = rest or [first]  # a one-host lab runs the scheduler and a worker together
    all_vars: dict[str, object] = {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(lab.config.key_path),
        "ansible_ssh_common_args": " ".join(SSH_OPTIONS[:4]),
        "ansible_python_interpreter": "/usr/bin/python3",
        # The lab is air-gapped: the controller builds a wheelhouse and ships it.
        "dask_wheelhouse": str(lab.config.wheelhouse),
    }
    return {
        "all": {
            "vars": all_vars,
            "children": {
                "dask_scheduler": {"hosts": {first.name: hosts[first.name]}},
                "dask_workers": {"hosts": {h.name: hosts[h.name] for h in workers}},
            },
        }
    }


def write_inventory(lab: Lab, path: Path) -> None:
    header = (
        "# Written by `pydask-deploy lab up`: the local lab's hosts, ready for\n"
        f"#   pydask-deploy apply {path}\n"
        "# Rewritten on every `lab up`; copy it before editing.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(inventory_data(lab), sort_keys=False, default_flow_style=False)
    path.write_text(header + body)


def _raise_sysctl(name: str, minimum: int) -> None:
    proc_path = Path("/proc/sys") / name.replace(".", "/")
    try:
        if int(proc_path.read_text()) < minimum:
            proc_path.write_text(str(minimum))
    except OSError:
        pass


@contextlib.contextmanager
def booted_lab(
    count: int, inventory_path: Path, config: LabConfig, docker: bool = False, say: Say = print
) -> Iterator[Lab]:
    """Boot a lab for the duration of a block and always tear it down (test fixtures)."""
    try:
        yield lab_up(count, docker, inventory_path, config, say)
    finally:
        lab_down(config, say)
