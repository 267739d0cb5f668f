"""The read side (pydask_deploy/observe/cluster.py): parsing one round's output, matching
workers to hosts, and where the scheduler's view comes from. Pure logic; the lab tests of
status, verify and upgrade run it against real hosts."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from pydask_deploy.inventory import Inventory, load_inventory
from pydask_deploy.observe import cluster, remote
from pydask_deploy.observe.scheduler import SchedulerView, WorkerView

IDENTITY = {
    "type": "Scheduler",
    "workers": {
        "tls://10.0.0.2:40001": {
            "host": "10.0.0.2",
            "name": "w1",
            "memory_limit": 1000,
            "nanny": "tls://10.0.0.2:39001",
            "status": "running",
            "metrics": {"memory": 100, "task_counts": {"executing": 1, "waiting": 2}},
        }
    },
}


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    path = tmp_path / "cluster.yml"
    hosts = {"s1": {"ansible_host": "10.0.0.1"}}
    workers = {"w1": {"ansible_host": "10.0.0.2"}, "w2": {"ansible_host": "10.0.0.3"}}
    path.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "dask_scheduler": {"hosts": hosts},
                        "dask_workers": {"hosts": workers},
                    }
                }
            }
        )
    )
    return load_inventory(path)


def _answer(stdout: str) -> remote.CommandResult:
    return remote.CommandResult(stdout, "", 0, 0.1)


def test_round_command_is_valid_sh_with_every_part() -> None:
    script = cluster.packages_script(["dask-scheduler", "dask-worker"])
    script += cluster.dashboard_script("http://10.0.0.1:8787")
    argv = shlex.split(cluster.round_command(script))
    checked = subprocess.run(["sh", "-n", "-c", argv[2]], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_the_dashboard_reader_reads_a_real_http_server(tmp_path: Path) -> None:
    """The scheduler host's script, run here against a local HTTP server serving the
    two paths, prints what ``dashboard_in`` reads back."""
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "identity.json").write_text(json.dumps(IDENTITY, indent=2))
    (tmp_path / "health").write_text("ok")
    server = subprocess.Popen(
        ["python3", "-m", "http.server", "0", "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().split(" port ")[1].split()[0]
        script = cluster.dashboard_script(f"http://127.0.0.1:{port}")
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=10)
    identity, why = cluster.dashboard_in(done.stdout)
    assert why == "" and identity == IDENTITY


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        ([], "did not read its dashboard"),
        (["/json/identity.json ERROR URLError <urlopen error refused>"], "URLError"),
        (["/json/identity.json {not json", "/health ok"], "not JSON"),
        (["/json/identity.json {}", "/health ERROR HTTPError 500"], "/health says"),
    ],
)
def test_a_dashboard_that_did_not_answer_says_why(lines: list[str], why: str) -> None:
    identity, reason = cluster.dashboard_in("\n".join(["@@dashboard", *lines, "@@end"]))
    assert identity is None and why in reason


def test_packages_of_a_venv_and_of_a_container() -> None:
    stdout = "\n".join(
        [
            "@@packages dask-worker",
            "/opt/dask/envs/ab12/lib/python3.11/site-packages/dask-2026.8.0.dist-info",
            "/opt/dask/envs/ab12/lib/python3.11/site-packages/distributed-2026.8.0.dist-info",
            "/opt/dask/envs/ab12/lib/python3.11/site-packages/msgpack-1.1.1.dist-info",
            "@@packages dask-scheduler",
            "python 3.12.4",
            "distributed 2026.7.1",
            "@@addresses",
            "10.0.0.2",
        ]
    )
    assert cluster.packages_in(stdout) == {
        "dask-worker": {
            "python": "3.11",
            "dask": "2026.8.0",
            "distributed": "2026.8.0",
            "msgpack": "1.1.1",
        },
        "dask-scheduler": {"python": "3.12.4", "distributed": "2026.7.1"},
    }


def test_workers_go_to_the_host_they_registered_from() -> None:
    w1 = WorkerView("tls://10.0.0.2:1", "10.0.0.2", "w1", 0, 0, 0, 0)
    w2 = WorkerView("tls://192.168.5.3:1", "192.168.5.3", "w2", 0, 0, 0, 0)  # a 2nd interface
    stranger = WorkerView("tls://10.9.9.9:1", "10.9.9.9", "x", 0, 0, 0, 0)
    mine, strangers = cluster.assign_workers(
        [w1, w2, stranger], {"w1": {"10.0.0.2"}, "w2": {"10.0.0.3", "192.168.5.3"}}
    )
    assert mine == {"w1": (w1,), "w2": (w2,)}
    assert strangers == (stranger,)


class _Link:
    """A client that records being asked (the fallback path)."""

    def __init__(self) -> None:
        self.asked = 0

    async def view(self) -> SchedulerView:
        self.asked += 1
        return SchedulerView("tls://10.0.0.1:8786", source="client")


def _view(inventory: Inventory, scheduler_stdout: str, link: _Link) -> SchedulerView:
    answers: dict[str, remote.CommandResult | remote.Unreachable] = {
        "s1": _answer(scheduler_stdout),
        "w1": _answer("@@packages dask-worker\ndistributed 2026.7.0\npython 3.11.2\n@@end"),
        "w2": remote.Unreachable("no answer"),
    }
    addresses = {"s1": frozenset({"10.0.0.1"}), "w1": frozenset({"10.0.0.2"}), "w2": frozenset()}
    return asyncio.run(
        cluster._scheduler_view(inventory, "dashboard", link, answers, addresses)  # type: ignore[arg-type]
    )


def test_the_view_comes_from_the_scheduler_hosts_dashboard(inventory: Inventory) -> None:
    stdout = "\n".join(
        [
            "@@packages dask-scheduler",
            "distributed 2026.8.0",
            "python 3.11.2",
            "@@dashboard",
            f"/json/identity.json {json.dumps(IDENTITY)}",
            "/health ok",
            "@@end",
        ]
    )
    link = _Link()
    view = _view(inventory, stdout, link)
    assert link.asked == 0
    assert view.source == "dashboard" and view.answered
    assert [w.name for w in view.workers] == ["w1"]
    assert view.workers[0].running == 1 and view.workers[0].processing == 3
    assert view.versions["scheduler"]["packages"]["distributed"] == "2026.8.0"
    assert view.versions["workers"]["tls://10.0.0.2:40001"]["packages"]["distributed"] == (
        "2026.7.0"
    )


def test_a_client_is_asked_when_the_dashboard_cannot_be_read(inventory: Inventory) -> None:
    link = _Link()
    view = _view(inventory, "@@dashboard\n/json/identity.json ERROR URLError refused\n@@end", link)
    assert link.asked == 1 and view.source == "client"
