"""The hosts' shared root filesystems and their package layers, built once and cached.

A rootfs (one per Debian release) is a minbase made by mmdebstrap from this machine's own
apt sources (another release's from the same mirrors), with the lab's key allowed for root;
a layer (docker.io for ``--docker`` hosts, over the default release's) is installed by chroot
into an overlay over it and stacked as an extra lower directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from pydask_deploy.errors import LabUsageError
from pydask_deploy.lab.config import RELEASES, SUITE, LabConfig, Say
from pydask_deploy.lab.system import make_key, overlay, run, unmount

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


def _apt_sources_file() -> Path:
    """This machine's own apt sources, which the hosts' rootfs is built from."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        return deb822
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists() and legacy.read_text().strip():
        return legacy
    raise LabUsageError(
        "no apt sources found (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list);"
        " the lab builds its hosts' root filesystem from this machine's Debian sources"
    )


def own_release(os_release: Path = Path("/etc/os-release")) -> str:
    """This machine's Debian codename (``VERSION_CODENAME``), or "" when it has none."""
    try:
        lines = os_release.read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "VERSION_CODENAME":
            return value.strip().strip("\"'")
    return ""


def sources_for_release(text: str, own: str, release: str, origin: str) -> str:
    """``text`` (apt sources, deb822 or one-line) with this machine's suites turned into
    ``release``'s: ``bookworm-updates`` becomes ``trixie-updates``, from the same mirrors.

    Raises ``LabUsageError`` when no suite names ``own``: nothing to derive from.
    """

    def suite(word: str) -> str:
        if word == own or word.startswith(f"{own}-"):
            return release + word[len(own) :]
        return word

    out: list[str] = []
    changed = False
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "suites":
            words = value.split()
            new = [suite(w) for w in words]
            changed |= new != words
            out.append(f"{key}: {' '.join(new)}")
            continue
        fields = line.split()
        if fields and fields[0] in ("deb", "deb-src"):
            # deb [options] URI SUITE COMPONENT...: the suite follows the URI
            at = 1
            if fields[1].startswith("["):
                while not fields[at].endswith("]"):
                    at += 1
                at += 1
            if len(fields) > at + 1:
                old = fields[at + 1]
                fields[at + 1] = suite(old)
                changed |= fields[at + 1] != old
                out.append(" ".join(fields))
                continue
        out.append(line)
    if not changed:
        raise LabUsageError(
            f"cannot build a {release} root filesystem from {origin}: none of its suites "
            f"names this machine's release ({own or 'unknown'}) to derive {release}'s from"
        )
    return "\n".join(out) + "\n"


def _mirror_args(release: str) -> tuple[list[str], str | None]:
    """mmdebstrap's mirror argument for ``release`` and what it reads on stdin.

    This machine's own release is built from its sources file as is; another release from
    the same mirrors with the suites renamed, handed over on stdin (nothing is written).
    """
    source = _apt_sources_file()
    own = own_release()
    if release == own:
        return [str(source)], None
    return ["-"], sources_for_release(source.read_text(), own, release, str(source))


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock while one lab checks and builds a cached tree: two labs booting
    at once (several test sessions share the cache) would otherwise build it on each other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _stamp_path(config: LabConfig, release: str) -> Path:
    return config.cache_dir / f"rootfs-{release}.stamp"


def _adopt_legacy_stamp(config: LabConfig, release: str, wanted: str) -> None:
    """Caches made before releases have one ``rootfs.stamp`` for the default release: take
    it over when it matches (copied, not moved, so older checkouts sharing the cache do not
    rebuild a rootfs that running labs use)."""
    legacy = config.cache_dir / "rootfs.stamp"
    stamp = _stamp_path(config, release)
    taken = release == SUITE and not stamp.exists() and legacy.exists()
    if taken and legacy.read_text() == wanted:
        stamp.write_text(wanted)


def ensure_rootfs(config: LabConfig, say: Say, release: str = SUITE) -> None:
    """Build ``release``'s cached root filesystem once (mmdebstrap); rebuild it when the
    packages or the key change.

    Running labs use it as their read-only lower layer, so it is never touched otherwise.
    """
    if release not in RELEASES:
        raise LabUsageError(f"unknown release {release!r}; the lab knows {', '.join(RELEASES)}")
    key = ensure_key(config)
    public_key = Path(f"{key}.pub").read_text()
    wanted = " ".join((release, *ROOTFS_PACKAGES)) + "\n" + public_key
    rootfs = config.rootfs_of(release)
    stamp = _stamp_path(config, release)
    with _build_lock(config.cache_dir / f"rootfs-{release}.lock"):
        _adopt_legacy_stamp(config, release, wanted)
        built = (rootfs / "lib/systemd/systemd").exists() and stamp.exists()
        if built and stamp.read_text() == wanted:
            return
        stamp.unlink(missing_ok=True)  # a build that fails half-way is never taken as done
        _build_rootfs(rootfs, release, public_key, say)
        stamp.write_text(wanted)


def _build_rootfs(root: Path, release: str, public_key: str, say: Say) -> None:
    """mmdebstrap a minbase ``release`` into ``root`` and make it a lab host's system."""
    if shutil.which("mmdebstrap") is None:
        raise LabUsageError("`mmdebstrap` not found; run scripts/setup (apt package mmdebstrap)")
    mirrors, stdin = _mirror_args(release)
    say(f"building the lab's {release} root filesystem in {root} (once, ~30 s)")
    if root.exists():
        shutil.rmtree(root)
    started = time.monotonic()
    run(
        [
            "mmdebstrap",
            "--variant=minbase",
            "--include=" + ",".join(ROOTFS_PACKAGES),
            '--aptopt=Acquire::Check-Valid-Until "false"',
            release,
            str(root),
            *mirrors,
        ],
        input=stdin,
    )
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
    say(f"{release} root filesystem built in {time.monotonic() - started:.0f} s")


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
    overlay(str(config.rootfs), upper, work, merged)
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
