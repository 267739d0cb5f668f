"""The hosts' shared root filesystem and its package layers, built once and cached.

The rootfs is a Debian minbase made by mmdebstrap from this machine's own apt sources, with
the lab's key allowed for root; a layer (docker.io for ``--docker`` hosts) is installed by
chroot into an overlay over it and stacked as an extra lower directory.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pydask_deploy.errors import LabUsageError
from pydask_deploy.lab.config import SUITE, LabConfig, Say
from pydask_deploy.lab.system import make_key, run, unmount

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


def ensure_key(config: LabConfig) -> Path:
    """The lab's SSH key (made once, kept in the cache): root on every host accepts it."""
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    if not config.key_path.exists():
        make_key(config.key_path, "pydask-lab")
    return config.key_path


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
    run(
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
        run(["chroot", str(root), "systemctl", *args])
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
    run(
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
            run(["mount", "--bind", "/" + b.name, str(b)])
        # the chroot's apt resolves names like this machine does, for the build only
        (merged / "etc/resolv.conf").unlink(missing_ok=True)
        shutil.copy("/etc/resolv.conf", merged / "etc/resolv.conf")
        policy = merged / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")  # keep services from starting in the chroot
        policy.chmod(0o755)
        run(
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
            unmount(b)
        unmount(merged)
    merged.rmdir()
    shutil.rmtree(work)
    stamp.write_text(wanted)
