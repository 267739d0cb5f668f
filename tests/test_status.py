"""Tests for pydask_deploy.status, remote's SSH settings and `pydask-deploy status`.

The parsers are pure and tested on real probe output captured from lab hosts
(tests/data/status/*.txt). The tests marked ``lab`` run status against the session's
deployed cluster: healthy, a stopped worker, an unreachable host, --watch.
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from helpers import Cluster, cli, ssh, with_unreachable_host

from pydask_deploy.cli import main, render
from pydask_deploy.inventory import Host, Inventory, load_inventory
from pydask_deploy.observe import remote
from pydask_deploy.observe.status import (
    HostProbe,
    SchedulerView,
    UnitState,
    WorkerView,
    assess,
    parse_probe,
    probe_command,
    version_skew,
)

DATA = Path(__file__).parent / "data" / "status"
BAD_INVENTORY = Path(__file__).parent / "data" / "inventories" / "bad" / "empty.yml"


def probe(name: str) -> HostProbe:
    return parse_probe((DATA / name).read_text())


# --------------------------------------------------------------------------- parse_probe


def test_parse_a_running_worker() -> None:
    found = probe("worker.txt")
    unit = found.units["dask-worker"]
    assert unit.installed and unit.active and unit.state == "active (running)"
    assert unit.since == 1795356924.0
    assert unit.restarts == 0
    assert unit.runtime == "b28e9268f4b0"
    assert unit.distributed == "2026.8.0"
    assert unit.exec_path == "/opt/dask/envs/b28e9268f4b0/bin/dask"
    assert unit.pids == {230, 233, 236}
    assert found.addresses == ("10.241.0.12",)
    # the nanny, the worker and its dashboard; not sshd
    assert found.ports_of(unit) == (33401, 37205, 45459)


def test_parse_the_scheduler() -> None:
    found = probe("scheduler.txt")
    unit = found.units["dask-scheduler"]
    assert unit.state == "active (running)"
    assert found.ports_of(unit) == (8786, 8787)


def test_parse_a_stopped_worker_and_a_missing_unit() -> None:
    stopped = probe("worker_stopped.txt").units["dask-worker"]
    assert stopped.installed and not stopped.active
    assert stopped.state == "inactive (dead)"
    assert probe("worker_stopped.txt").ports_of(stopped) == ()
    missing = probe("worker_no_scheduler_unit.txt").units["dask-scheduler"]
    assert not missing.installed and missing.state == "not installed"
    assert missing.since is None and missing.runtime is None


def test_parse_old_systemd_timestamps_and_no_process_info() -> None:
    text = "\n".join(
        [
            "@@unit dask-worker",
            "LoadState=loaded",
            "ActiveState=active",
            "SubState=running",
            "ActiveEnterTimestamp=Sun 2026-11-22 14:15:20 UTC",
            "NRestarts=3",
            "@@addresses",
            "10.0.0.5 fd00::5",
            "@@listening",
            "State Recv-Q Send-Q Local Address:Port Peer Address:Port",  # ss without -H
            "LISTEN 0 128 0.0.0.0:22 0.0.0.0:*",
            "LISTEN 0 2048 [::]:40000 [::]:*",
            "@@end",
        ]
    )
    found = parse_probe(text)
    unit = found.units["dask-worker"]
    assert unit.since == 1795356920.0
    assert unit.restarts == 3
    assert found.addresses == ("10.0.0.5", "fd00::5")
    assert [(s.address, s.port) for s in found.listeners] == [("0.0.0.0", 22), ("::", 40000)]
    assert found.ports_of(unit) == ()  # no process info: nothing is attributed to the unit


@pytest.mark.parametrize("text", ["", "garbage\n@@unit\n=\n@@listening\nLISTEN x\n", "@@@"])
def test_parse_never_raises(text: str) -> None:
    assert isinstance(parse_probe(text), HostProbe)


def test_probe_command_is_valid_sh() -> None:
    argv = shlex.split(probe_command(["dask-scheduler", "dask-worker"]))
    assert argv[:2] == ["sh", "-c"]
    checked = subprocess.run(["sh", "-n", "-c", argv[2]], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


# --------------------------------------------------------------------------- versions


def _versions(**workers: dict[str, str | None]) -> dict[str, object]:
    base = {
        "python": "3.11.2.final.0",
        "dask": "2026.8.0",
        "distributed": "2026.8.0",
        "msgpack": "1.2.4",
        "numpy": "2.4.6",
    }
    return {
        "scheduler": {"packages": base},
        "workers": {addr: {"packages": {**base, **pkgs}} for addr, pkgs in workers.items()},
        "client": {"packages": {**base, "python": "3.11.7.final.0", "numpy": None}},
    }


def test_no_skew_ignores_python_patch_level_and_client_numpy() -> None:
    skew, client = version_skew(_versions(w1={}, w2={"python": "3.11.9.final.0"}))
    assert skew == [] and client == []


def test_skew_names_the_hosts() -> None:
    versions = _versions(w1={}, w2={"distributed": "2026.7.0"}, w3={"distributed": "2026.7.0"})
    skew, _ = version_skew(versions, {"w2": "h2", "w3": "h3"})
    assert skew == ["distributed 2026.8.0 on the scheduler, 2026.7.0 on h2, h3"]


def test_client_skew_is_only_dask_and_distributed() -> None:
    versions = _versions(w1={})
    versions["client"] = {"packages": {"dask": "2026.8.0", "distributed": "2026.9.0"}}
    skew, client = version_skew(versions)
    assert skew == []
    assert client == ["distributed 2026.9.0 here, 2026.8.0 on the scheduler"]


# --------------------------------------------------------------------------- assess


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    path = tmp_path / "cluster.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": {"ansible_user": "root"},
                    "children": {
                        "dask_scheduler": {"hosts": {"s1": {"ansible_host": "10.0.0.1"}}},
                        "dask_workers": {
                            "hosts": {
                                "w1": {"ansible_host": "10.0.0.2"},
                                "w2": {"ansible_host": "w2.example", "dask_worker_nworkers": 2},
                            }
                        },
                    },
                }
            }
        )
    )
    return load_inventory(path)


def _up(unit: str, *addresses: str) -> HostProbe:
    state = UnitState(unit, "loaded", "active", "running", since=1.0, restarts=0, runtime="r1")
    return HostProbe({unit: state}, addresses)


def _worker(address: str, host: str) -> WorkerView:
    return WorkerView(address, host, address, 100, 1000, 1, 3)


def _healthy_parts() -> tuple[dict[str, HostProbe | remote.Unreachable], SchedulerView]:
    probes: dict[str, HostProbe | remote.Unreachable] = {
        "s1": _up("dask-scheduler", "10.0.0.1"),
        "w1": _up("dask-worker", "10.0.0.2"),
        "w2": _up("dask-worker", "10.0.0.3"),  # matched through `hostname -I`
    }
    workers = (
        _worker("tcp://10.0.0.2:1", "10.0.0.2"),
        _worker("tcp://10.0.0.3:1", "10.0.0.3"),
        _worker("tcp://10.0.0.3:2", "10.0.0.3"),
    )
    return probes, SchedulerView("tcp://10.0.0.1:8786", workers=workers)


def test_assess_healthy(inventory: Inventory) -> None:
    probes, view = _healthy_parts()
    status = assess(inventory, probes, view)
    assert status.healthy and status.problems == ()
    assert status.verdict == "healthy: 3 worker(s) on 2 host(s) registered"
    by_name = {h.name: h for h in status.hosts}
    assert [len(by_name[n].workers) for n in ("s1", "w1", "w2")] == [0, 1, 2]
    assert by_name["w2"].expected == 2
    doc = status.to_json()
    assert doc["ok"] is True
    assert doc["hosts"][2]["workers"]["registered"] == 2
    assert doc["hosts"][2]["workers"]["memory_limit"] == 2000
    json.dumps(doc)  # serialisable


def test_assess_missing_worker_names_the_host_and_the_next_step(inventory: Inventory) -> None:
    probes, view = _healthy_parts()
    view = SchedulerView(view.address, workers=view.workers[:2])
    status = assess(inventory, probes, view)
    assert not status.healthy
    assert [p.text for p in status.problems] == ["w2: 1 of 2 workers registered"]
    assert f"pydask-deploy logs {inventory.path} w2" in status.verdict


def test_assess_stopped_unit_is_one_problem(inventory: Inventory) -> None:
    probes, view = _healthy_parts()
    stopped = UnitState("dask-worker", "loaded", "failed", "failed")
    probes["w1"] = HostProbe({"dask-worker": stopped}, ("10.0.0.2",))
    view = SchedulerView(view.address, workers=view.workers[1:])
    status = assess(inventory, probes, view)
    assert [p.text for p in status.problems] == ["w1: dask-worker is failed (failed)"]


def test_assess_unreachable_host_and_silent_scheduler(inventory: Inventory) -> None:
    probes, _ = _healthy_parts()
    probes["w1"] = remote.Unreachable("no answer within 5 s")
    view = SchedulerView("tcp://10.0.0.1:8786", error="Timed out trying to connect")
    status = assess(inventory, probes, view)
    texts = [p.text for p in status.problems]
    assert texts[0] == "w1: unreachable (no answer within 5 s)"
    assert any("does not answer" in t for t in texts)
    rows = render.table_rows(status)
    assert ["w1", "worker", "unreachable (no answer within 5 s)"] in rows
    lines = render.render_table(rows)
    assert lines[0].split()[:3] == ["HOST", "ROLE", "UNIT"]


def test_assess_stopped_scheduler_is_the_one_problem(inventory: Inventory) -> None:
    probes, _ = _healthy_parts()
    probes["s1"] = HostProbe({"dask-scheduler": UnitState("dask-scheduler", "loaded", "failed")})
    view = SchedulerView("tcp://10.0.0.1:8786", error="Timed out trying to connect")
    status = assess(inventory, probes, view)
    assert [p.text for p in status.problems] == ["s1: dask-scheduler is failed"]
    assert f"pydask-deploy logs {inventory.path} s1" in status.verdict


def test_assess_reports_skew_and_strangers(inventory: Inventory) -> None:
    probes, view = _healthy_parts()
    stranger = _worker("tcp://10.9.9.9:1", "10.9.9.9")
    versions = _versions(**{"tcp://10.0.0.2:1": {"dask": "2026.1.0"}})
    view = SchedulerView(view.address, workers=(*view.workers, stranger), versions=versions)
    status = assess(inventory, probes, view)
    assert status.strangers == (stranger,)
    assert [p.text for p in status.problems] == [
        "version skew: dask 2026.8.0 on the scheduler, 2026.1.0 on w1"
    ]


# --------------------------------------------------------------------------- SSH settings


def _host(**host_vars: object) -> Host:
    return Host("h", "10.0.0.9", 2222, "admin", host_vars)


def test_ssh_target_reads_ansible_variables() -> None:
    target = remote.ssh_target(
        _host(
            ansible_ssh_private_key_file="~/keys/id_lab",
            ansible_ssh_common_args="-o StrictHostKeyChecking=no -o ConnectTimeout=3 -J jump:22",
        )
    )
    assert (target.address, target.port, target.user) == ("10.0.0.9", 2222, "admin")
    assert target.key_file == str(Path("~/keys/id_lab").expanduser())
    assert target.check_host_keys is False
    assert target.connect_timeout == 3.0
    assert target.jump == remote.SSHTarget("jump", 22, connect_timeout=3.0)


def test_ssh_target_checks_host_keys_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANSIBLE_HOST_KEY_CHECKING", raising=False)
    assert remote.ssh_target(_host()).check_host_keys is True
    assert remote.ssh_target(_host()).connect_timeout == 5.0
    no_file = _host(ansible_ssh_common_args="-o UserKnownHostsFile=/dev/null")
    assert remote.ssh_target(no_file).check_host_keys is False
    assert remote.ssh_target(_host(ansible_host_key_checking=False)).check_host_keys is False
    monkeypatch.setenv("ANSIBLE_HOST_KEY_CHECKING", "False")
    assert remote.ssh_target(_host()).check_host_keys is False


def test_ssh_options_forms() -> None:
    found = remote.ssh_options("-oProxyJump=a -o 'ConnectTimeout 9' -i key -p 2200 -o ProxyJump=b")
    assert found == {"proxyjump": "a", "connecttimeout": "9", "identityfile": "key", "port": "2200"}
    assert remote.ssh_options("-o 'unbalanced") == {"'unbalanced": ""}


# --------------------------------------------------------------------------- CLI without hosts


def test_status_of_a_bad_inventory_exits_2_before_any_ssh() -> None:
    result = CliRunner().invoke(main, ["status", str(BAD_INVENTORY)])
    assert result.exit_code == 2
    assert str(BAD_INVENTORY) in result.output


# --------------------------------------------------------------------------- real hosts


def _default_sigint() -> None:
    """Let Ctrl-C reach the child even when this test runs where SIGINT is ignored (a
    background job): Python then would not turn SIGINT into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _status(inventory: Path) -> tuple[int, dict[str, object]]:
    result = cli("status", str(inventory), "--json", timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def _wait_healthy(inventory: Path, timeout: float = 90) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        code, doc = _status(inventory)
        if code == 0:
            return doc
        assert time.monotonic() < deadline, f"not healthy in {timeout} s: {doc['verdict']}"
        time.sleep(1)


@pytest.mark.lab
def test_status_of_the_deployed_cluster_is_healthy(cluster: Cluster) -> None:
    doc = _wait_healthy(cluster.inventory)
    assert doc["ok"] is True and doc["problems"] == [] and doc["version_skew"] == []
    assert doc["scheduler"]["answered"] is True
    hosts = {h["name"]: h for h in doc["hosts"]}  # type: ignore[attr-defined]
    assert list(hosts) == [h.name for h in cluster.lab.hosts]
    scheduler, *workers = cluster.lab.hosts
    units = hosts[scheduler.name]["units"]
    assert [u["unit"] for u in units] == ["dask-scheduler"]
    assert units[0]["active_state"] == "active" and {8786, 8787} <= set(units[0]["ports"])
    assert units[0]["runtime"] and units[0]["distributed"]
    for worker in workers:
        entry = hosts[worker.name]
        assert entry["reachable"] is True and entry["addresses"]
        assert entry["workers"]["registered"] == entry["workers"]["expected"] == 1
        assert entry["workers"]["list"][0]["host"] == worker.address
        assert entry["units"][0]["active_state"] == "active"
    human = cli("status", str(cluster.inventory), timeout=60)
    assert human.returncode == 0, human.stdout + human.stderr
    header = human.stdout.splitlines()[0].split()
    assert header[:3] == ["HOST", "ROLE", "UNIT"] and header[-1] == "TASKS"
    assert human.stdout.strip().splitlines()[-1].startswith("healthy:")


@pytest.mark.lab
def test_status_names_a_host_whose_worker_is_stopped(cluster: Cluster) -> None:
    _wait_healthy(cluster.inventory)
    victim = cluster.lab.hosts[-1].name
    ssh(cluster.lab, victim, "systemctl stop dask-worker")
    try:
        code, doc = _status(cluster.inventory)
        assert code == 1
        assert doc["ok"] is False
        assert [p["host"] for p in doc["problems"]] == [victim]  # type: ignore[attr-defined]
        assert "dask-worker is inactive" in str(doc["verdict"])
        assert f"pydask-deploy logs {cluster.inventory} {victim}" in str(doc["verdict"])
        human = cli("status", str(cluster.inventory), timeout=60)
        assert human.returncode == 1
        assert human.stdout.strip().splitlines()[-1].startswith(f"unhealthy: {victim}: ")
    finally:
        ssh(cluster.lab, victim, "systemctl start dask-worker")
    _wait_healthy(cluster.inventory)


@pytest.mark.lab
def test_an_unreachable_host_is_a_row_not_a_traceback(cluster: Cluster, tmp_path: Path) -> None:
    unused = str(cluster.lab.config.subnet.network_address + 200)  # no lab host there
    inventory = with_unreachable_host(cluster.inventory, tmp_path / "ghost.yml", unused)
    # the client certificate lives beside an inventory (<stem>-pki): this one shares the cluster's
    pki = cluster.inventory.parent / f"{cluster.inventory.stem}-pki"
    if pki.is_dir():
        shutil.copytree(pki, tmp_path / "ghost-pki")
    started = time.monotonic()
    code, doc = _status(inventory)
    assert time.monotonic() - started < 20
    assert code == 1
    ghost = next(h for h in doc["hosts"] if h["name"] == "ghost")  # type: ignore[attr-defined]
    assert ghost["reachable"] is False and ghost["error"]
    assert [p["host"] for p in doc["problems"]] == ["ghost"], doc["problems"]  # type: ignore[attr-defined]
    human = cli("status", str(inventory), timeout=60)
    assert human.returncode == 1 and "Traceback" not in human.stderr
    row = next(line for line in human.stdout.splitlines() if line.startswith("ghost"))
    assert "unreachable (" in row
    assert "unhealthy: ghost: unreachable (" in human.stdout


@pytest.mark.lab
def test_status_watch_redraws_until_ctrl_c(cluster: Cluster) -> None:
    _wait_healthy(cluster.inventory)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pydask_deploy",
            "status",
            str(cluster.inventory),
            "--watch",
            "--interval",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(process.stdout or ()), daemon=True)
    reader.start()

    def frames() -> int:
        return sum(line.startswith("every 1 s: pydask-deploy status") for line in seen)

    deadline = time.monotonic() + 60
    while frames() < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    reader.join(timeout=10)
    err = process.stderr.read() if process.stderr else ""
    out = "".join(seen)
    assert frames() >= 3, out + err
    assert process.returncode == 0, out[-2000:] + err
    assert "Traceback" not in err
    assert out.rstrip().splitlines()[-1].startswith("healthy:")
    assert "\x1b[2J" not in out  # not a terminal: no screen clearing


def _imported(stderr: str) -> set[str]:
    """The top-level packages a ``python -X importtime`` run imported."""
    return {
        line.split("|")[-1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:")
    }


HEAVY = {"distributed", "ansible_runner", "testinfra"}


def test_help_imports_neither_distributed_nor_ansible_runner_nor_testinfra() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pydask_deploy", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert not _imported(done.stderr) & HEAVY


@pytest.mark.lab
def test_status_reads_the_scheduler_on_its_own_host_without_a_client(cluster: Cluster) -> None:
    _wait_healthy(cluster.inventory)
    argv = [sys.executable, "-X", "importtime", "-m", "pydask_deploy", "status"]
    done = subprocess.run(
        [*argv, str(cluster.inventory), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert doc["scheduler"]["source"] == "dashboard" and doc["ok"] is True
    assert not _imported(done.stderr) & HEAVY
    # the versions came from the hosts' runtimes: the same on every host, so no skew
    assert doc["version_skew"] == [] and doc["client_skew"] == []
