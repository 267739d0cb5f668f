"""Shared fixtures: a session-wide lab of real hosts that is always torn down."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Cluster, cli, edit_inventory
from lab_factory import LabFactory

from pydask_deploy import lab as lab_module

# Every lab shares the cached rootfs, key and wheelhouse with the user's lab, unless told otherwise.
LAB_CACHE = Path(os.environ.get("PYDASK_LAB_CACHE", lab_module.LabConfig().cache_dir))
LAB_HOSTS = int(os.environ.get("PYDASK_TEST_LAB_HOSTS", "3"))


@pytest.fixture(scope="session", autouse=True)
def inventory_cache_of_this_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Resolved inventories go to this run's own cache (the commands run here inherit it),
    never to the user's ~/.cache."""
    saved = os.environ.get("PYDASK_DEPLOY_CACHE")
    os.environ["PYDASK_DEPLOY_CACHE"] = str(tmp_path_factory.mktemp("inventory-cache"))
    yield
    if saved is None:
        os.environ.pop("PYDASK_DEPLOY_CACHE", None)
    else:
        os.environ["PYDASK_DEPLOY_CACHE"] = saved


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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def lab_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabFactory]:
    """Labs on a bridge, subnet and state directory of their own, free across concurrent
    sessions; every lab is torn down when its block ends, and whatever is left at the end
    of the session (a test interrupted, SIGTERM included) is torn down then."""
    # SIGTERM (a CI timeout, `kill`) otherwise ends the process without any teardown
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    factory = LabFactory(cache_dir=LAB_CACHE, tmp_path_factory=tmp_path_factory)
    try:
        yield factory
    finally:
        factory.close()
        if previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def lab_inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's lab writes its inventory (the file exists once ``lab`` is up)."""
    return tmp_path_factory.mktemp("lab") / "lab.yml"


@pytest.fixture(scope="session")
def lab(lab_factory: LabFactory, lab_inventory: Path) -> Iterator[lab_module.Lab]:
    """A booted lab of LAB_HOSTS hosts for the whole session, torn down even when tests fail."""
    with lab_factory.boot(LAB_HOSTS, inventory=lab_inventory) as booted:
        yield booted.lab


@pytest.fixture(scope="session")
def docker_lab_inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("docker-lab") / "lab.yml"


@pytest.fixture(scope="session")
def docker_lab(lab_factory: LabFactory, docker_lab_inventory: Path) -> Iterator[lab_module.Lab]:
    """Two --docker hosts on their own bridge, with the lab's registry, for the session."""
    with lab_factory.boot(2, docker=True, inventory=docker_lab_inventory) as booted:
        yield booted.lab


# --------------------------------------------------------------------------- a converged cluster
# Shared by the tests that need a deployed cluster (test_apply, test_status, test_logs).


@pytest.fixture(scope="session")
def cluster(
    lab: lab_module.Lab, lab_inventory: Path, tmp_path_factory: pytest.TempPathFactory
) -> Cluster:
    """The session lab converged by one cold apply, with scikit-learn for the user's workload."""
    inventory = edit_inventory(
        lab_inventory,
        tmp_path_factory.mktemp("cluster") / "cluster.yml",
        dask_python_packages=["scikit-learn"],
    )
    applied = cli("apply", str(inventory), "--json")
    assert applied.returncode == 0, applied.stderr[-3000:]
    return Cluster(lab, inventory, json.loads(applied.stdout))
