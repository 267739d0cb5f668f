"""The controller-side primitives the lab is built from: commands, processes, mounts, sysctls."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from pydask_deploy.errors import LabError


def run(
    cmd: Sequence[str], check: bool = True, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run a command, its output captured; a failure is a ``LabError`` with its last lines."""
    try:
        return subprocess.run(list(cmd), check=check, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload, no-any-return]
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()[-5:]
        raise LabError(
            f"`{' '.join(cmd)}` failed ({exc.returncode}): " + " / ".join(detail)
        ) from None


def pid_alive(pid: int, marker: str) -> bool:
    """True if ``pid`` is running and its command line contains ``marker`` (no PID reuse)."""
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return marker in cmdline


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first."""
    prefix = str(path.resolve()) if path.exists() else str(path)
    found = []
    with open("/proc/mounts") as mounts:
        for line in mounts:
            point = line.split()[1].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def overlay(lower: str, upper: Path, work: Path, target: Path) -> None:
    """Mount an overlay of ``upper`` over ``lower`` (colon-separated layers) at ``target``."""
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    run(["mount", "-t", "overlay", "overlay", "-o", options, str(target)])


def unmount(point: Path) -> None:
    """Unmount ``point``; lazily when it is busy (a dying host may still hold it)."""
    if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def raise_sysctl(name: str, minimum: int) -> None:
    """Raise a kernel setting to at least ``minimum``; never lower it, never fail on it."""
    proc_path = Path("/proc/sys") / name.replace(".", "/")
    try:
        if int(proc_path.read_text()) < minimum:
            proc_path.write_text(str(minimum))
    except OSError:
        pass


def inotify_instances() -> int:
    """How many inotify instances the machine's processes hold (the limit is per user, and
    every lab on this machine, its hosts' systemds included, draws on root's)."""
    count = 0
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            links = [os.readlink(fd) for fd in fd_dir.iterdir()]
        except OSError:  # the process ended, or is not ours to read
            continue
        count += links.count("anon_inode:inotify")
    return count


def make_key(path: Path, comment: str) -> None:
    """A fresh ed25519 key pair without a passphrase at ``path`` (and ``path``.pub)."""
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
