"""How runs are drawn (pydask_deploy/cli/render.py): one line per task with counts, failures
named as they happen, grouped rows past a screenful."""

from __future__ import annotations

import pytest

from pydask_deploy.cli.render import SCREENFUL, ProgressPrinter, print_run
from pydask_deploy.deploy.run import HostResult, Progress, RunResult, unified_diff


def _run_tasks(printer: ProgressPrinter, hosts: int) -> None:
    printer(Progress("play", task="Converge the Dask cluster."))
    printer(Progress("task", task="Install the venv."))
    for i in range(hosts):
        printer(Progress("changed" if i % 6 == 0 else "ok", task="Install the venv.", host=f"h{i}"))
    printer(Progress("task", task="Install the dask-worker unit."))
    printer(
        Progress("unreachable", task="Install the dask-worker unit.", host="h7", message="no route")
    )
    for i in range(hosts - 1):
        printer(Progress("ok", task="Install the dask-worker unit.", host=f"h{i}"))
    printer(Progress("done"))


def test_one_line_per_task_with_counts_and_failures_as_they_happen(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _run_tasks(ProgressPrinter(live=False), hosts=24)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "",
        "Converge the Dask cluster.",
        "  [ 1] Install the venv.  ok 20  changed 4",
        "         h7: unreachable: no route",
        "  [ 2] Install the dask-worker unit.  ok 23  unreachable 1",
    ]


def test_verbose_shows_every_host(capsys: pytest.CaptureFixture[str]) -> None:
    _run_tasks(ProgressPrinter(live=False, verbose=True), hosts=3)
    err = capsys.readouterr().err
    assert "         h0: changed\n" in err and "         h1: ok\n" in err


def test_on_a_terminal_the_task_line_is_redrawn_in_place(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _run_tasks(ProgressPrinter(live=True), hosts=3)
    err = capsys.readouterr().err
    assert err.count("\r") >= 12  # cleared and redrawn as each host reports
    assert err.endswith("  [ 2] Install the dask-worker unit.  ok 2  unreachable 1\n")


def test_the_table_groups_identical_rows_past_a_screenful(
    capsys: pytest.CaptureFixture[str],
) -> None:
    hosts = [HostResult(f"h{i}", ok=31) for i in range(1, SCREENFUL + 5)]
    hosts[9] = HostResult("h10", ok=12, failed=1, errors=("Install the venv.: boom",))
    print_run(RunResult(tuple(hosts), "failed", 2, 1.0))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["h1..h9", "h10", "h11..h24", "h10:"]
    assert lines[2].split()[1:] == ["(9)", "31", "0", "0", "0"]
    few = [HostResult(f"h{i}", ok=31) for i in range(1, 4)]
    print_run(RunResult(tuple(few), "successful", 0, 1.0))
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]] == [
        "h1",
        "h2",
        "h3",
    ]


def test_the_diff_of_a_template_is_a_unified_diff() -> None:
    before = "[Service]\nExecStart=dask worker \\\n    --nworkers 1\n"
    after = "[Service]\nExecStart=dask worker \\\n    --nworkers 1 \\\n    --nthreads 2\n"
    diff = unified_diff([{"before": before, "after": after, "before_header": "/etc/x.service"}])
    assert diff.startswith("--- /etc/x.service (before)\n+++ /etc/x.service (after)\n")
    assert "+    --nthreads 2\n" in diff
    assert unified_diff({"before": "", "after": {"state": "directory"}}) == ""
    assert unified_diff(None) == ""
