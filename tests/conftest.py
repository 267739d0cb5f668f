"""Shared fixtures: a session-wide lab of real hosts that is always torn down."""

from __future__ import annotations

import ipaddress
import os
import platform
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pydask_deploy import lab as lab_module

# The tests' lab lives beside a user's lab, never on top of it.
TEST_LAB = lab_module.LabConfig(
    state_dir=Path("/var/lib/pydask-deploy/test-lab"),
    cache_dir=lab_module.LabConfig().cache_dir,  # share the cached rootfs and key
    bridge="pdtest0",
    subnet=ipaddress.IPv4Network("10.233.0.0/24"),
)
LAB_HOSTS = int(os.environ.get("PYDASK_TEST_LAB_HOSTS", "3"))


def lab_available() -> str | None:
    """Why the lab cannot run here, or None when it can."""
    if platform.system() != "Linux":
        return "the lab needs Linux"
    if os.geteuid() != 0:
        return "the lab needs root"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is not installed (run scripts/setup)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = lab_available()
    if reason is None:
        return
    if os.environ.get("CI"):
        # In CI a skipped lab test would hide that nothing was proven: fail instead.
        raise pytest.UsageError(f"lab tests cannot run in CI: {reason}")
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def lab_config() -> lab_module.LabConfig:
    return TEST_LAB


@pytest.fixture(scope="session")
def lab_inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's lab writes its inventory (the file exists once ``lab`` is up)."""
    return tmp_path_factory.mktemp("lab") / "lab.yml"


@pytest.fixture(scope="session")
def lab(lab_inventory: Path, lab_config: lab_module.LabConfig) -> Iterator[lab_module.Lab]:
    """A booted lab of LAB_HOSTS hosts for the whole session, torn down even when tests fail."""
    with lab_module.booted_lab(LAB_HOSTS, lab_inventory, lab_config) as booted:
        yield booted
