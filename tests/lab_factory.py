"""Labs for tests: each gets a bridge, a /24 and a state directory that no one else uses.

Several pytest sessions run lab tests on one machine at once (from several worktrees), so a
fixed bridge or subnet per fixture would make them boot into each other. A lab takes a
*slot* instead: slot ``n`` is bridge ``pdtf<n>`` with subnet ``10.160.<n>.0/24`` and state
directory ``/var/lib/pydask-deploy/test-labs/pdtf<n>``. A slot is claimed by holding an
exclusive ``flock`` on its lock file: the kernel drops the lock when its process dies, however
it dies, so a claim can never outlive its owner, and the next claimant tears down whatever
the dead owner left in the slot's state directory before using it. A slot whose bridge name
or subnet is on an interface, and that holds no state of ours, belongs to something else and
is passed over. The lock files stay (empty) when their slot is free: removing one while
another session opens it would let two sessions hold "the" lock of one slot.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import shutil
import subprocess
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pytest

from pydask_deploy import lab as lab_module

CLAIMS_DIR = Path("/var/lib/pydask-deploy/test-labs")
BRIDGE_PREFIX = "pdtf"  # "pydask test factory": apart from pdlab0, pdtest*, pdbench*
# Apart from the users' lab (10.231), the older fixed test labs (10.233-10.248), the
# benchmarks (10.238, 10.239, 10.250) and the manual labs (10.251-10.255).
POOL = ipaddress.IPv4Network("10.160.0.0/16")
SLOTS = 64
OWNER_FILE = "claimed-by"

# nspawn names a host's veth "vb-<machine>" and the machine is "<bridge>-h<index>"; Linux
# interface names hold 15 characters, and systemd shortens longer ones with a hash.
assert len(f"vb-{BRIDGE_PREFIX}{SLOTS - 1}-h{lab_module.MAX_HOSTS}") <= 15


class BootedLab(NamedTuple):
    """A booted lab and the inventory ``lab up`` wrote for it."""

    lab: lab_module.Lab
    inventory: Path


def _quiet(_: str) -> None:
    """Progress lines of a clean-up nobody watches."""


def _bridge_present(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


@dataclass(frozen=True)
class _Claim:
    """One held slot: the open lock file (the claim itself) and the lab configuration."""

    config: lab_module.LabConfig
    lock_fd: int

    def release(self) -> None:
        """Tear down whatever runs in the slot, empty its state directory, drop the lock."""
        try:
            _clean_slot(self.config)
        finally:
            os.ftruncate(self.lock_fd, 0)  # no owner named any more
            os.close(self.lock_fd)  # closing the file releases the flock


def _slot_config(index: int, cache_dir: Path) -> lab_module.LabConfig:
    bridge = f"{BRIDGE_PREFIX}{index}"
    return lab_module.LabConfig(
        state_dir=CLAIMS_DIR / bridge,
        cache_dir=cache_dir,
        bridge=bridge,
        subnet=list(POOL.subnets(new_prefix=24))[index],
    )


def _clean_slot(config: lab_module.LabConfig) -> None:
    """Stop a lab left in the slot and remove its state; the bridge goes with the lab."""
    lab_module.lab_down(config, _quiet)
    if _bridge_present(config.bridge):  # a bare bridge a test made (no lab record)
        subprocess.run(["ip", "link", "del", config.bridge], capture_output=True)
    if lab_module._mounts_under(config.state_dir):
        # never rmtree through a mount: that would delete the cached rootfs or a host's files
        raise RuntimeError(f"mounts remain under {config.state_dir}; not removing it")
    shutil.rmtree(config.state_dir, ignore_errors=True)


def _try_claim(index: int, cache_dir: Path) -> _Claim | None:
    config = _slot_config(index, cache_dir)
    fd = os.open(CLAIMS_DIR / f"{config.bridge}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another live session holds it
        os.close(fd)
        return None
    try:
        if config.state_dir.exists():
            # ours before, its owner died without cleaning up: what runs there is ours to stop
            try:
                _clean_slot(config)
            except RuntimeError as exc:
                warnings.warn(f"test lab slot {config.bridge} skipped: {exc}", stacklevel=1)
                os.close(fd)
                return None
        if _bridge_present(config.bridge) or lab_module.interfaces_on(config.subnet):
            os.close(fd)  # not ours: something else uses this name or subnet
            return None
        config.state_dir.mkdir(parents=True)
        owner = f"pid {os.getpid()} cwd {os.getcwd()}\n"
        (config.state_dir / OWNER_FILE).write_text(owner)
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner.encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return _Claim(config, fd)


def claim_slot(cache_dir: Path) -> _Claim:
    """Claim the first free slot; raise when every slot is taken."""
    CLAIMS_DIR.mkdir(parents=True, exist_ok=True)
    for index in range(SLOTS):
        claim = _try_claim(index, cache_dir)
        if claim is not None:
            return claim
    raise RuntimeError(f"all {SLOTS} test lab slots are in use (see {CLAIMS_DIR})")


@dataclass
class LabFactory:
    """Hands out labs on slots of their own and tears down whatever is still up at the end."""

    cache_dir: Path
    # a fresh directory per lab for its inventory (and the certificates apply puts beside it)
    tmp_path_factory: pytest.TempPathFactory
    _held: list[_Claim] = field(default_factory=list, init=False)

    @contextlib.contextmanager
    def claim(self) -> Iterator[lab_module.LabConfig]:
        """A free bridge, subnet and state directory for a lab the caller starts itself."""
        claim = claim_slot(self.cache_dir)
        self._held.append(claim)
        try:
            yield claim.config
        finally:
            self._held.remove(claim)
            claim.release()

    @contextlib.contextmanager
    def boot(
        self,
        count: int,
        *,
        docker: bool = False,
        inventory: Path | None = None,
        releases: Sequence[str] | None = None,
    ) -> Iterator[BootedLab]:
        """Boot ``count`` hosts (of ``releases``, one per host; default all bookworm) on a
        claimed slot; torn down and released on leaving."""
        with self.claim() as config:
            path = inventory or self.tmp_path_factory.mktemp(config.bridge) / "lab.yml"
            with lab_module.booted_lab(
                count, path, config, docker=docker, releases=releases
            ) as lab:
                yield BootedLab(lab, path)

    def close(self) -> None:
        """Release what a caller never left (a generator pytest did not finish)."""
        while self._held:
            self._held.pop().release()
