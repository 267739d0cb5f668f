"""destroy: removes what apply installed, idempotently; a later apply starts clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import cli, cluster_client, ssh
from lab_factory import LabFactory

from pydask_deploy import lab as lab_module
from pydask_deploy.deploy.destroy import plan_destroy
from pydask_deploy.inventory import load_inventory
from pydask_deploy.resources import playbook_path, roles_path

_INVENTORY = """\
all:
  children:
    dask_scheduler:
      hosts:
        s1: {ansible_host: 10.0.0.1}
    dask_workers:
      hosts:
        w1: {ansible_host: 10.0.0.2}
"""


def test_plan_destroy_runs_the_destroy_playbook(tmp_path: Path) -> None:
    path = tmp_path / "inv.yml"
    path.write_text(_INVENTORY)
    plan = plan_destroy(load_inventory(path), remove_user=True)
    assert plan.playbook == playbook_path("destroy.yml")
    assert plan.extravars == {"__dask_remove_user": True}
    assert plan.limit is None and not plan.check


@pytest.mark.parametrize("playbook", ["site.yml", "destroy.yml", "restart.yml"])
def test_playbooks_parse(tmp_path: Path, playbook: str) -> None:
    path = tmp_path / "inv.yml"
    path.write_text(_INVENTORY)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "--syntax-check",
            "-i",
            str(path),
            str(playbook_path(playbook)),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_ROLES_PATH": str(roles_path())},
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_destroy_without_yes_and_without_a_terminal_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "inv.yml"
    path.write_text(_INVENTORY)
    done = subprocess.run(
        [sys.executable, "-m", "pydask_deploy", "destroy", str(path)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert done.returncode == 2
    assert "pass --yes" in done.stderr and "s1, w1" in done.stderr
    assert "PLAY" not in done.stderr


# --------------------------------------------------------------------------- on a real host

_LEFTOVERS = (
    "ls -d /opt/dask /etc/dask /var/lib/dask /etc/systemd/system/dask-*.service 2>/dev/null; "
    "pgrep -u dask -f 'dask (worker|scheduler)' || true"
)


@pytest.fixture(scope="module")
def destroy_lab(lab_factory: LabFactory) -> Iterator[tuple[lab_module.Lab, Path]]:
    """One lab host of its own that runs the scheduler and a worker, converged by apply."""
    with lab_factory.boot(1) as (lab, inventory):
        applied = cli("apply", str(inventory))
        assert applied.returncode == 0, applied.stderr[-3000:]
        yield lab, inventory


@pytest.mark.lab
def test_destroy_then_apply_gives_a_working_cluster(
    destroy_lab: tuple[lab_module.Lab, Path],
) -> None:
    lab, inventory = destroy_lab
    host = lab.hosts[0].name
    assert ssh(lab, host, _LEFTOVERS).strip()

    first = cli("destroy", str(inventory), "--yes", "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads(first.stdout)
    assert report["ok"] is True and report["changed"] is True
    assert ssh(lab, host, _LEFTOVERS).strip() == ""
    assert ssh(lab, host, "systemctl is-enabled dask-worker dask-scheduler || true").strip() == ""
    assert ssh(lab, host, "id -u dask").strip()  # the user stays unless asked

    second = cli("destroy", str(inventory), "--yes", "--json")
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout)["changed"] is False  # idempotent

    removed = cli("destroy", str(inventory), "--yes", "--remove-user")
    assert removed.returncode == 0, removed.stderr[-3000:]
    assert ssh(lab, host, "id -u dask >/dev/null 2>&1 && echo present || echo gone").strip() == (
        "gone"
    )

    applied = cli("apply", str(inventory))
    assert applied.returncode == 0, applied.stderr[-3000:]
    verified = cli("verify", str(inventory))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    with cluster_client(inventory) as client:
        assert client.submit(lambda: 6 * 7).result(timeout=60) == 42
