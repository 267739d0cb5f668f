"""apply and verify against real lab hosts: a cluster that computes, idempotently."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import get_task_stream
from helpers import Cluster, cli, edit_inventory, ssh, wait_for_workers, with_unreachable_host

pytestmark = pytest.mark.lab


def test_cold_apply_changes_every_host(cluster: Cluster) -> None:
    report = cluster.first_apply
    assert report["ok"] is True and report["changed"] is True
    assert sorted(report["hosts"]) == sorted(h.name for h in cluster.lab.hosts)
    for name, counts in report["hosts"].items():
        assert counts["changed"] > 0, name
        assert counts["failed"] == counts["unreachable"] == 0, name


def test_verify_passes(cluster: Cluster) -> None:
    result = cli("verify", str(cluster.inventory), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    registered = [c for c in report["checks"] if c["check"].startswith("workers registered")]
    assert [c["host"] for c in registered] == [h.name for h in cluster.lab.hosts[1:]]


def test_a_client_computes_on_the_cluster(cluster: Cluster) -> None:
    with cluster.client() as client:
        wait_for_workers(client, len(cluster.lab.hosts) - 1)
        futures = client.map(lambda x: x * x, range(100))
        assert sum(client.gather(futures)) == sum(x * x for x in range(100))
        ran_on = {w.split("://")[1].rsplit(":", 1)[0] for w in client.has_what()}
        assert ran_on == {h.address for h in cluster.lab.hosts[1:]}


def test_grid_search_on_the_cluster_matches_a_local_fit(cluster: Cluster) -> None:
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    digits = load_digits()
    grid = {"C": [1e-4, 1, 1e4], "gamma": [1e-3, 1, 1e3], "class_weight": [None, "balanced"]}

    def fit() -> GridSearchCV:
        return GridSearchCV(SVC(kernel="rbf"), grid, cv=3).fit(digits.data, digits.target)

    local = fit()
    with cluster.client() as client, joblib.parallel_backend("dask"):
        wait_for_workers(client, len(cluster.lab.hosts) - 1)
        with get_task_stream(client) as stream:
            remote = fit()
    assert remote.best_params_ == local.best_params_
    # the fits really ran on the lab's workers, not here
    ran_on = {t["worker"].split("://")[1].rsplit(":", 1)[0] for t in stream.data}
    assert len(stream.data) >= 18 * 3
    assert ran_on == {h.address for h in cluster.lab.hosts[1:]}


def test_second_apply_changes_nothing(cluster: Cluster) -> None:
    result = cli("apply", str(cluster.inventory), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["changed"] is False
    assert {n: c["changed"] for n, c in report["hosts"].items()} == {
        h.name: 0 for h in cluster.lab.hosts
    }
    # the roles themselves converge: every task runs on every host and changes nothing
    full = cli("apply", str(cluster.inventory), "--full", "--json")
    assert full.returncode == 0, full.stderr[-3000:]
    report = json.loads(full.stdout)
    assert report["ansible_started"] is True and report["in_sync_hosts"] == []
    assert {n: (c["changed"], c["ok"] > 0) for n, c in report["hosts"].items()} == {
        h.name: (0, True) for h in cluster.lab.hosts
    }


def test_check_mode_reports_a_change_and_changes_nothing(cluster: Cluster, tmp_path: Path) -> None:
    edited = edit_inventory(cluster.inventory, tmp_path / "edited.yml", dask_worker_nthreads=3)
    worker = cluster.lab.hosts[1].name
    unit_before = ssh(cluster.lab, worker, "systemctl cat dask-worker")
    pid_before = ssh(cluster.lab, worker, "systemctl show -p MainPID --value dask-worker")
    result = cli("apply", str(edited), "--check", "--diff", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["check"] is True and report["changed"] is True
    # --diff shows, per host, the unified diff of the unit that would change
    assert f"{worker}: Install the dask-worker unit." in result.stderr
    assert "+++ /etc/systemd/system/dask-worker.service (after)" in result.stderr
    assert "\n+    --nthreads 3 \\\n" in result.stderr, result.stderr[-3000:]
    assert report["hosts"][worker]["changed"] > 0
    assert report["hosts"][cluster.lab.hosts[0].name]["changed"] == 0
    assert ssh(cluster.lab, worker, "systemctl cat dask-worker") == unit_before
    assert "--nthreads 3" not in unit_before
    assert ssh(cluster.lab, worker, "systemctl show -p MainPID --value dask-worker") == pid_before


@pytest.mark.parametrize(
    "how", ["systemctl restart dask-worker", "pkill -KILL -u dask -f 'dask worker'"]
)
def test_a_restarted_or_killed_worker_comes_back(cluster: Cluster, how: str) -> None:
    worker = cluster.lab.hosts[-1]
    with cluster.client() as client:
        wait_for_workers(client, len(cluster.lab.hosts) - 1)
        before = {
            a for a, w in client.scheduler_info()["workers"].items() if w["host"] == worker.address
        }
        ssh(cluster.lab, worker.name, how + " || true")
        deadline = time.monotonic() + 60
        while True:
            now = {
                a
                for a, w in client.scheduler_info()["workers"].items()
                if w["host"] == worker.address
            }
            if now and now != before:
                break
            assert time.monotonic() < deadline, f"worker on {worker.name} did not come back"
            time.sleep(0.25)
        assert client.submit(lambda: 1 + 1, workers=list(now)).result(timeout=30) == 2


def test_an_unreachable_host_is_reported_and_the_others_converge(
    cluster: Cluster, tmp_path: Path
) -> None:
    unused = str(cluster.lab.config.subnet.network_address + 200)  # no lab host there
    inventory = with_unreachable_host(cluster.inventory, tmp_path / "ghost.yml", unused)
    result = cli("apply", str(inventory), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["hosts"]["ghost"]["unreachable"] == 1
    assert report["hosts"]["ghost"]["errors"]
    for host in cluster.lab.hosts:
        counts = report["hosts"][host.name]
        assert counts["failed"] == counts["unreachable"] == 0, host.name
    human = cli("apply", str(inventory))
    assert human.returncode == 1
    assert "ghost" in human.stdout and "unreachable" in human.stderr
    assert "run `pydask-deploy apply" in human.stderr


def test_bad_inventory_stops_apply_before_any_ssh(cluster: Cluster, tmp_path: Path) -> None:
    bad = edit_inventory(cluster.inventory, tmp_path / "bad.yml", dask_worker_nthreads="eight")
    started = time.monotonic()
    result = cli("apply", str(bad))
    assert result.returncode == 2
    assert "`dask_worker_nthreads` must be" in result.stderr and "'eight'" in result.stderr
    assert str(bad) in result.stderr
    assert "PLAY" not in result.stderr and time.monotonic() - started < 20


def _running_ansible(inventory: Path) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [
        line
        for line in ps.splitlines()
        if "ansible-playbook" in line and f"-i {inventory} " in line
    ]


def test_ctrl_c_stops_ansible_says_what_was_done_and_a_rerun_finishes(
    cluster: Cluster, tmp_path: Path
) -> None:
    edited = edit_inventory(cluster.inventory, tmp_path / "edited.yml", dask_worker_nthreads=2)
    worker = cluster.lab.hosts[1].name
    process = subprocess.Popen(
        [sys.executable, "-m", "pydask_deploy", "apply", str(edited)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    assert process.stderr is not None
    for line in process.stderr:  # mid-run: Ansible is three tasks in
        seen.append(line)
        if "[ 3]" in line:
            break
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    err = "".join(seen) + rest
    assert process.returncode == 130, err[-3000:]
    assert "interrupted (SIGINT): Ansible was stopped" in err
    assert "in progress: " in err and worker in err.split("in progress: ")[1]
    assert f"run `pydask-deploy apply {edited}` again to complete the job" in err
    assert "the other hosts converged" not in err and "Traceback" not in err
    deadline = time.monotonic() + 10  # ansible-playbook's forks notice their parent is gone
    while _running_ansible(edited) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _running_ansible(edited) == []
    # running the same command again completes the job
    again = cli("apply", str(edited), "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "--nthreads 2" in ssh(cluster.lab, worker, "systemctl cat dask-worker")
    restored = cli("apply", str(cluster.inventory), "--json")
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert "--nthreads" not in ssh(cluster.lab, worker, "systemctl cat dask-worker")
