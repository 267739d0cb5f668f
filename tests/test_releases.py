"""Hosts of more than one Debian release: the lab boots each host on its own release, apply
refuses a venv cluster whose hosts' Pythons differ in their minor version, and a cluster of
Debian 13 hosts (Python 3.13) converges and verifies.

The trixie rootfs is built once per machine and cached (PYDASK_LAB_CACHE), like bookworm's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from helpers import cli, lab_env, ssh
from lab_factory import BootedLab, LabFactory

pytestmark = pytest.mark.lab

_MIXED = ("bookworm", "bookworm", "trixie")
_CODENAME = (
    ". /etc/os-release && echo $VERSION_CODENAME "
    "$(python3 -c 'import sys; print(sys.version.split()[0])')"
)
# the interpreter a unit's main process runs (a venv's python is a link to the host's)
_UNIT_PYTHON = "readlink -f /proc/$(systemctl show -p MainPID --value {unit})/exe"
# what apply installs; absent on a host apply did not touch
_INSTALLED = (
    "ls -d /opt/dask /etc/dask /var/lib/dask /etc/systemd/system/dask-*.service 2>/dev/null; "
    "getent passwd dask || true"
)


def test_an_all_trixie_lab_converges_and_verifies(lab_factory: LabFactory) -> None:
    with lab_factory.boot(2, releases=("trixie", "trixie")) as (lab, inventory):
        for host in lab.hosts:
            assert ssh(lab, host.name, _CODENAME).split()[0] == "trixie"
        applied = cli("apply", str(inventory))
        assert applied.returncode == 0, applied.stderr[-3000:]
        verified = cli("verify", str(inventory))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        # the units run venvs on the hosts' own Python 3.13
        for host, unit in zip(lab.hosts, ("dask-scheduler", "dask-worker"), strict=True):
            python = ssh(lab, host.name, _UNIT_PYTHON.format(unit=unit)).strip()
            assert python == "/usr/bin/python3.13", (host.name, unit)


@pytest.fixture(scope="module")
def mixed_lab(lab_factory: LabFactory) -> Iterator[BootedLab]:
    """Two bookworm hosts (Python 3.11) and a trixie host (Python 3.13), never applied."""
    with lab_factory.boot(3, releases=_MIXED) as booted:
        yield booted


def test_a_lab_boots_each_host_on_its_release(mixed_lab: BootedLab) -> None:
    lab, inventory = mixed_lab
    env = lab_env(lab.config)
    for host, release in zip(lab.hosts, _MIXED, strict=True):
        codename, python = ssh(lab, host.name, _CODENAME).split()
        assert (host.release, codename) == (release, release)
        assert python.startswith("3.13." if release == "trixie" else "3.11."), host.name
    status = cli("lab", "status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert [h["release"] for h in json.loads(status.stdout)["hosts"]] == list(_MIXED)
    assert "lab up --hosts 3 --release h3=trixie" in inventory.read_text()
    # the same lab again is a no-op; other releases are refused while it is up
    same = cli("lab", "up", "--hosts", "3", "--release", "h3=trixie", "-o", str(inventory), env=env)
    assert same.returncode == 0, same.stderr
    assert "already up" in same.stderr
    other = cli("lab", "up", "--hosts", "3", "-o", str(inventory), env=env)
    assert other.returncode == 2
    assert "a lab of 3 hosts (h3 on trixie) is already up" in other.stderr


def test_apply_refuses_hosts_whose_pythons_differ(mixed_lab: BootedLab) -> None:
    lab, inventory = mixed_lab
    applied = cli("apply", str(inventory))
    assert applied.returncode == 2, applied.stdout + applied.stderr[-3000:]
    assert "h1, h2: Python 3.11." in applied.stderr
    assert "h3: Python 3.13." in applied.stderr
    assert "PLAY" not in applied.stdout + applied.stderr
    for host in lab.hosts:
        assert ssh(lab, host.name, _INSTALLED).strip() == "", host.name
