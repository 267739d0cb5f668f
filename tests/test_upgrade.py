"""upgrade: batches, --set, and a rolling upgrade on real lab hosts that loses no held key."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from distributed import Client, wait
from helpers import cli, cluster_client, ssh, wait_for_workers
from lab_factory import LabFactory

from pydask_deploy import lab as lab_module
from pydask_deploy.deploy.upgrade import (
    batch_size,
    needs_restart,
    plan_batches,
    unit_age_script,
)
from pydask_deploy.errors import UsageError
from pydask_deploy.inventory import load_inventory

# --------------------------------------------------------------------------- batches


@pytest.mark.parametrize(
    ("spec", "workers", "size"),
    [
        ("1", 3, 1),
        ("2", 3, 2),
        ("3", 3, 3),  # a plain count as large as the cluster: the user asked for it
        ("9", 3, 3),
        ("25%", 3, 1),  # at least one host
        ("50%", 10, 5),
        ("100%", 3, 2),  # a percentage never takes every worker at once
        ("100%", 1, 1),
        ("1", 1, 1),
        (" 10% ", 40, 4),
    ],
)
def test_batch_size(spec: str, workers: int, size: int) -> None:
    assert batch_size(spec, workers) == size


@pytest.mark.parametrize("spec", ["0", "0%", "101%", "-1", "abc", "1.5", "%", ""])
def test_batch_size_rejects_nonsense(spec: str) -> None:
    with pytest.raises(UsageError, match="--batch must be"):
        batch_size(spec, 4)


@pytest.mark.parametrize(
    ("lines", "restart"),
    [
        # the unit file was written after the process started: it runs the old runtime
        (["1795925974.565433", "ExecMainStartTimestamp=Sun 2026-11-29 04:19:33.524086 UTC"], True),
        # restarted since: current
        (["1795925974.565433", "ExecMainStartTimestamp=Sun 2026-11-29 04:19:41.524086 UTC"], False),
        # in the same second, to the microsecond
        (["1795925974.565433", "ExecMainStartTimestamp=Sun 2026-11-29 04:19:34.565400 UTC"], True),
        (["1795925974.565433", "ExecMainStartTimestamp="], True),  # not running
        (["missing", "ExecMainStartTimestamp="], False),  # no worker unit on the host
        ([], False),
    ],
)
def test_needs_restart_compares_the_unit_file_with_the_process(
    lines: list[str], restart: bool
) -> None:
    assert needs_restart("\n".join(["@@unit-age", *lines, "@@end"])) is restart


def test_a_gpu_host_needs_a_restart_when_one_of_its_workers_is_old() -> None:
    current = ["1795925974.565433", "ExecMainStartTimestamp=Sun 2026-11-29 04:19:41.524086 UTC"]
    old = ["1795925974.565433", "ExecMainStartTimestamp=Sun 2026-11-29 04:19:33.524086 UTC"]
    both_current = ["@@unit-age dask-worker@0", *current, "@@unit-age dask-worker@1", *current]
    assert needs_restart("\n".join([*both_current, "@@end"])) is False
    one_old = ["@@unit-age dask-worker@0", *current, "@@unit-age dask-worker@1", *old]
    assert needs_restart("\n".join([*one_old, "@@end"])) is True
    script = unit_age_script(["dask-worker@0", "dask-worker@1"])
    assert "stat -c '%.6Y' /etc/systemd/system/dask-worker@.service" in script
    assert "ExecMainStartTimestamp dask-worker@1" in script


def test_plan_batches_keeps_inventory_order(tmp_path: Path) -> None:
    inventory = load_inventory(_write(tmp_path / "inv.yml", _INVENTORY))
    batches = plan_batches(inventory.workers, "2")
    assert [[h.name for h in b] for b in batches] == [["w1", "w2"], ["w3"]]


# --------------------------------------------------------------------------- --set

_INVENTORY = """\
# the cluster of the lab
all:
  vars:
    ansible_user: root   # lab hosts take root logins
    # extra packages, one a line
    dask_python_packages:
      - scikit-learn
      - six

    dask_worker_nthreads: 2
  children:
    dask_scheduler:
      hosts:
        s1: {ansible_host: 10.0.0.1}
    dask_workers:
      hosts:
        w1: {ansible_host: 10.0.0.2}
        w2: {ansible_host: 10.0.0.3}
        w3: {ansible_host: 10.0.0.4}
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_cli_bad_set_exits_2_and_leaves_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "inv.yml", _INVENTORY)
    for bad in ("dask_no_such_thing=1", "dask_worker_nworkers=0"):
        result = cli("upgrade", str(path), "--set", bad)
        assert result.returncode == 2, result.stderr
        assert "error: --set" in result.stderr
    result = cli("upgrade", str(path), "--batch", "0")
    assert result.returncode == 2 and "--batch must be" in result.stderr
    assert path.read_text() == _INVENTORY


# --------------------------------------------------------------------------- on real hosts


@dataclass(frozen=True)
class UpgradeLab:
    lab: lab_module.Lab
    inventory: Path

    @property
    def workers(self) -> list[lab_module.LabHost]:
        return list(self.lab.hosts[1:])

    def client(self, inventory: Path | None = None) -> Client:
        return cluster_client(inventory or self.inventory)


@pytest.fixture(scope="module")
def upgrade_lab(lab_factory: LabFactory) -> Iterator[UpgradeLab]:
    """Four lab hosts of their own (a scheduler and three workers), converged by one apply."""
    with lab_factory.boot(4) as (lab, inventory):
        applied = cli("apply", str(inventory))
        assert applied.returncode == 0, applied.stderr[-3000:]
        yield UpgradeLab(lab, inventory)


def _copy(inventory: Path, directory: Path) -> Path:
    """A copy of the inventory with its certificates (found by the file's stem)."""
    target = directory / inventory.name
    shutil.copy(inventory, target)
    pki = inventory.with_name(f"{inventory.stem}-pki")
    shutil.copytree(pki, directory / pki.name)
    return target


def _prefixes(client: Client) -> dict[str, str]:
    """Each worker's runtime: the venv it runs from."""
    return client.run(lambda: __import__("sys").prefix)  # type: ignore[no-any-return]


class _Computing(threading.Thread):
    """Keeps a computation running against the cluster and checks every result."""

    def __init__(self, client: Client, data: list[Any]) -> None:
        super().__init__(daemon=True)
        self.client, self.data = client, data
        self.stop = threading.Event()
        self.rounds = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            offset = self.rounds
            try:
                futures = self.client.map(
                    lambda x, k: (__import__("time").sleep(0.02), x + k)[1],
                    self.data,
                    [offset] * len(self.data),
                    pure=False,
                )
                got = self.client.gather(futures)
            except Exception as exc:  # any failure is the finding
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return
            if got != [x + offset for x in range(len(self.data))]:
                self.errors.append(f"round {offset}: wrong results")
                return
            self.rounds += 1


class _StatusWatcher(threading.Thread):
    """Runs `status --json` round after round while an upgrade goes on."""

    def __init__(self, inventory: Path) -> None:
        super().__init__(daemon=True)
        self.inventory = inventory
        self.stop = threading.Event()
        self.documents: list[dict[str, Any]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            done = cli("status", str(self.inventory), "--json", timeout=60)
            self.documents.append(json.loads(done.stdout))


def _worker_runtimes(document: dict[str, Any]) -> set[str]:
    return {
        unit["runtime"]
        for host in document["hosts"]
        if "worker" in host["roles"]
        for unit in host["units"]
        if unit["unit"] == "dask-worker"
    }


@pytest.mark.lab
def test_rolling_upgrade_keeps_every_held_key_and_a_plain_restart_loses_them(
    upgrade_lab: UpgradeLab,
) -> None:
    inventory = upgrade_lab.inventory
    workers = upgrade_lab.workers
    with upgrade_lab.client() as client:
        wait_for_workers(client, len(workers), timeout=90)
        before = _prefixes(client)
        assert len(set(before.values())) == 1
        data = client.scatter(list(range(300)))
        squares = client.map(lambda x: x * x, data)
        wait(squares)
        held_futures = [*data, *squares]
        held = {f.key for f in held_futures}
        assert {k for k, v in client.who_has(held_futures).items() if v} == held
        status_before = json.loads(cli("status", str(inventory), "--json").stdout)
        assert status_before["ok"] is True, status_before["verdict"]
        assert len(_worker_runtimes(status_before)) == 1
        computing = _Computing(client, data)
        computing.start()
        watcher = _StatusWatcher(inventory)
        watcher.start()
        started = time.monotonic()
        result = cli(
            "upgrade", str(inventory), "--batch", "1",
            "--set", "dask_python_packages=[six]", "--json",
        )  # fmt: skip
        seconds = time.monotonic() - started
        computing.stop.set()
        watcher.stop.set()
        computing.join(timeout=120)
        watcher.join(timeout=120)
        assert result.returncode == 0, result.stderr[-4000:]
        report = json.loads(result.stdout)
        print(f"\nupgrade of {len(workers)} workers in {seconds:.1f} s; per batch:")
        for batch in report["batches"]:
            print(f"  batch {batch['batch']} {batch['hosts']}: {batch['seconds']} s")
        print(f"computation rounds during the upgrade: {computing.rounds}")
        print("\n".join(line for line in result.stderr.splitlines() if line.startswith("==>")))

        # every host was staged before the first retire, in one step timed apart
        staging = report["staging"]
        assert staging["ok"] is True and staging["restart"] == [w.name for w in workers]
        progress = [line for line in result.stderr.splitlines() if line.startswith("==>")]
        staged_at = next(i for i, line in enumerate(progress) if "staged in" in line)
        retired_at = next(i for i, line in enumerate(progress) if "retiring" in line)
        assert staged_at < retired_at
        assert staging["seconds"] > 0
        # each figure is rounded to 0.01 s: their sum may pass the rounded total by that much
        parts = staging["seconds"] + sum(b["seconds"] for b in report["batches"])
        assert report["seconds"] >= parts - 0.01 * (len(report["batches"]) + 2), report
        # every batch went through retire -> restart -> registered, one host each
        assert [b["hosts"] for b in report["batches"]] == [[w.name] for w in workers]
        assert {b["outcome"] for b in report["batches"]} == {"upgraded"}
        assert all(b["retired"] and b["registered"] for b in report["batches"]), report
        assert report["scheduler"] == "staged" and report["ok"] is True
        assert "dask_python_packages: [six]" in inventory.read_text()
        assert "batch 3/3 done" in result.stderr

        # no held key lost, every future right, the computation never broke
        assert not computing.errors, computing.errors
        assert computing.rounds >= 1
        assert all(f.status == "finished" for f in [*data, *squares])
        holders = client.who_has(held_futures)
        assert {k for k, v in holders.items() if v} == held
        assert client.gather(squares) == [x * x for x in range(300)]
        print(f"held keys before: {len(held)}, after: {sum(1 for v in holders.values() if v)}")

        # status saw the rollout: a mixed or unhealthy round while batches moved, then healthy
        # with every worker host on one new runtime
        during = watcher.documents
        mixed = [d for d in during if not d["ok"] or len(_worker_runtimes(d)) > 1]
        assert mixed, [(d["ok"], sorted(_worker_runtimes(d))) for d in during]
        status_after = json.loads(cli("status", str(inventory), "--json").stdout)
        assert status_after["ok"] is True, status_after["verdict"]
        assert len(_worker_runtimes(status_after)) == 1
        assert _worker_runtimes(status_after) != _worker_runtimes(status_before)
        print(f"status rounds during the upgrade: {len(during)}, mixed or unhealthy: {len(mixed)}")

        # every worker runs the new runtime
        after = _prefixes(client)
        assert len(after) == len(workers) and len(set(after.values())) == 1
        assert set(after.values()) != set(before.values())

        # the same held data through a plain `systemctl restart`, host after host: lost
        lost_data = client.scatter(list(range(300)))
        lost_squares = client.map(lambda x: x * x, lost_data)
        wait(lost_squares)
        plain_futures = [*lost_data, *lost_squares]
        for worker in workers:
            ssh(upgrade_lab.lab, worker.name, "systemctl restart dask-worker")
            time.sleep(0.5)
            wait_for_workers(client, len(workers), timeout=90)
        time.sleep(2)
        # the scheduler forgets data it cannot recompute: those futures are no longer finished
        lost = [f for f in plain_futures if f.status != "finished"]
        print(
            f"plain restart: {len(lost)} of {len(plain_futures)} held keys lost "
            f"({sorted({f.status for f in lost})})"
        )
        assert lost

    # the change is recorded: the next apply of the inventory changes nothing
    applied = cli("apply", str(inventory), "--json")
    assert applied.returncode == 0, applied.stderr[-3000:]
    assert json.loads(applied.stdout)["changed"] is False


@pytest.mark.lab
def test_a_staging_failure_retires_nothing_and_every_worker_keeps_serving(
    upgrade_lab: UpgradeLab, tmp_path: Path
) -> None:
    inventory = _copy(upgrade_lab.inventory, tmp_path)
    first = upgrade_lab.workers[0]
    unit_before = ssh(upgrade_lab.lab, first.name, "systemctl cat dask-worker")
    with upgrade_lab.client(inventory) as client:
        wait_for_workers(client, len(upgrade_lab.workers), timeout=90)
        before = _prefixes(client)
        result = cli(
            "upgrade", str(inventory), "--batch", "1", "--json",
            # a package that is not in the wheelhouse, and no download to find it
            "--set", "dask_python_packages=[six, pydask-deploy-no-such-package]",
            "--set", "dask_wheelhouse_download=false",
        )  # fmt: skip
        assert result.returncode == 1, result.stderr[-3000:]
        report = json.loads(result.stdout)
        assert report["ok"] is False
        # staging failed on every worker host before anything was retired: no batch ran
        assert report["batches"] == [] and report["staging"]["ok"] is False
        assert "staging failed" in report["error"] and "nothing was retired" in report["error"]
        assert f"{first.name}: " in report["error"]  # names the host and the cause
        assert "pydask-deploy-no-such-package" in report["error"]
        assert report["pending"] == [w.name for w in upgrade_lab.workers]
        assert "retiring" not in result.stderr
        assert f"resume with `pydask-deploy upgrade {inventory}" in result.stderr
        # nobody was retired or restarted: same workers, same runtime, still computing
        assert _prefixes(client) == before
        futures = client.map(lambda x: x + 1, range(50))
        assert client.gather(futures) == list(range(1, 51))
    assert ssh(upgrade_lab.lab, first.name, "systemctl cat dask-worker") == unit_before


@pytest.mark.lab
def test_a_version_change_needs_restart_scheduler(upgrade_lab: UpgradeLab, tmp_path: Path) -> None:
    inventory = _copy(upgrade_lab.inventory, tmp_path)
    text = inventory.read_text()
    started = time.monotonic()
    result = cli("upgrade", str(inventory), "--set", "dask_version='2026.7.0'")
    assert result.returncode == 2, result.stderr
    assert "the scheduler runs distributed 2026.8.0" in result.stderr
    assert "--restart-scheduler" in result.stderr and "lost" in result.stderr
    assert "PLAY" not in result.stderr and "Converge" not in result.stderr
    assert inventory.read_text() == text
    assert time.monotonic() - started < 30
    assert yaml.safe_load(text)  # still the original, valid YAML


# another distributed release the controller can download into the lab's wheelhouse
OTHER_VERSION = "2026.7.1"


@pytest.mark.lab
def test_restart_scheduler_moves_the_whole_cluster_to_another_release(
    upgrade_lab: UpgradeLab, tmp_path: Path
) -> None:
    """Runs last in this module: the upgrade lab ends on another distributed release."""
    inventory = _copy(upgrade_lab.inventory, tmp_path)
    result = cli(
        "upgrade", str(inventory), "--set", f"dask_version='{OTHER_VERSION}'",
        "--restart-scheduler", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads(result.stdout)
    assert document["ok"] is True and document["scheduler"] == "restarted"
    assert "lost" in result.stderr  # it says what a scheduler restart costs

    status = json.loads(cli("status", str(inventory), "--json").stdout)
    assert status["ok"] is True, status["verdict"]
    versions = {u["distributed"] for h in status["hosts"] for u in h["units"]}
    assert versions == {OTHER_VERSION}
    with upgrade_lab.client(inventory) as client:
        wait_for_workers(client, len(upgrade_lab.workers), timeout=90)
        reported = client.get_versions(check=False)
        assert reported["scheduler"]["packages"]["distributed"] == OTHER_VERSION
        assert client.submit(lambda: 6 * 7).result(timeout=60) == 42
