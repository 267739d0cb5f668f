"""Tests for pydask_deploy.logs and `pydask-deploy logs`.

The merge is pure and tested on journal text; the tests marked ``lab`` read the real
journal of the session's deployed cluster.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import Cluster, cli, ssh, with_unreachable_host

from pydask_deploy.cli import main
from pydask_deploy.errors import UsageError
from pydask_deploy.inventory import load_inventory
from pydask_deploy.observe.logs import (
    journal_command,
    journal_line,
    merge_journals,
    parse_timestamp,
    select_hosts,
)

GOOD = Path(__file__).parent / "data" / "inventories" / "good" / "both_groups.yml"


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("2026-11-22T14:15:28+0000 h2 dask[236]: hi", "2026-11-22T14:15:28+00:00"),
        ("2026-11-22T14:15:28.731000+0000 h2 x: y", "2026-11-22T14:15:28.731000+00:00"),
        ("2026-11-22T15:15:28.5+01:00 h2 x: y", "2026-11-22T14:15:28.500000+00:00"),
        ("2026-11-22T14:15:28Z h2 x: y", "2026-11-22T14:15:28+00:00"),
    ],
)
def test_parse_timestamp(line: str, expected: str) -> None:
    found = parse_timestamp(line)
    assert found is not None
    assert found.astimezone(dt.UTC).isoformat() == expected


@pytest.mark.parametrize("line", ["", "    continued", "-- No entries --", "2026-13-40T99:00:00 x"])
def test_no_timestamp(line: str) -> None:
    assert parse_timestamp(line) is None


def test_merge_orders_hosts_by_time_across_zones() -> None:
    outputs = {
        "h1": "\n".join(
            [
                "2026-11-22T14:00:00.100000+0000 h1 a: one",
                "   a continuation line",
                "2026-11-22T14:00:02.000000+0000 h1 a: three",
            ]
        ),
        # an hour ahead in its own zone: 14:00:01 UTC
        "h2": "-- No entries --\n2026-11-22T15:00:01.000000+0100 h2 b: two\n",
        "h3": "-- No entries --\n",
    }
    merged = merge_journals(outputs)
    assert [(line.host, line.text.split()[-1]) for line in merged] == [
        ("h1", "one"),
        ("h1", "line"),
        ("h2", "two"),
        ("h1", "three"),
    ]
    assert [line.text.split()[-1] for line in merge_journals(outputs, last=2)] == ["two", "three"]


def test_a_journal_entry_shows_its_time_and_unit_once() -> None:
    entry = {
        "__REALTIME_TIMESTAMP": "1795356928731000",
        "_SYSTEMD_UNIT": "dask-worker.service",
        "MESSAGE": "2026-11-22 14:15:28,730 - distributed.worker - INFO - Start worker",
    }
    line = journal_line("h2", json.dumps(entry))
    assert line is not None and line.host == "h2"
    _stamp, rest = line.text.split(" ", 1)
    assert rest == "dask-worker: distributed.worker - INFO - Start worker"
    assert parse_timestamp(line.text) == line.when
    assert line.when is not None
    assert line.when.astimezone(dt.UTC).isoformat() == "2026-11-22T14:15:28.731000+00:00"
    binary = {**entry, "MESSAGE": list(b"caf\xc3\xa9 \xff")}
    shown = journal_line("h2", json.dumps(binary))
    assert shown is not None and shown.text.endswith("dask-worker: caf\u00e9 \ufffd")
    assert journal_line("h2", "-- No entries --") is None


def test_journal_command_quotes_its_arguments() -> None:
    argv = shlex.split(journal_command(since="2026-01-31 12:00", lines=5, follow=True))
    assert argv[:5] == ["journalctl", "-u", "dask-scheduler", "-u", "dask-worker"]
    assert argv[argv.index("--since") + 1] == "2026-01-31 12:00"
    assert argv[argv.index("-n") + 1] == "5"
    assert "-f" in argv and "--no-pager" in argv
    assert "-f" not in shlex.split(journal_command())


def test_select_hosts() -> None:
    inventory = load_inventory(GOOD)
    assert [h.name for h in select_hosts(inventory, [])] == ["alpha", "beta"]
    assert [h.name for h in select_hosts(inventory, ["beta", "beta"])] == ["beta"]
    with pytest.raises(UsageError, match=r"no host 'gamma' .* its hosts are alpha, beta"):
        select_hosts(inventory, ["beta", "gamma"])


def test_logs_for_an_unknown_host_exits_2_before_any_ssh() -> None:
    result = CliRunner().invoke(main, ["logs", str(GOOD), "nosuchhost"])
    assert result.exit_code == 2
    assert "'nosuchhost'" in result.output and "alpha, beta" in result.output


# --------------------------------------------------------------------------- real hosts


@pytest.mark.lab
def test_logs_show_worker_registration_on_the_scheduler(cluster: Cluster) -> None:
    scheduler = cluster.lab.hosts[0].name
    result = cli("logs", str(cluster.inventory), "-n", "2000", timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    registered = [line for line in lines if "Register worker" in line]
    assert registered, result.stdout[-3000:]
    assert all(line.startswith(f"{scheduler} ") for line in registered)
    hosts = {line.split()[0] for line in lines}
    assert hosts == {h.name for h in cluster.lab.hosts}
    stamps = [parse_timestamp(line.split(" | ", 1)[1]) for line in lines]
    known = [s for s in stamps if s is not None]
    assert known and known == sorted(known)
    # each line names its host and its time once: "h1 | TIME UNIT: MESSAGE"
    for line in registered:
        host, text = line.split(" | ", 1)
        assert text.split()[1] == "dask-scheduler:"
        assert f" {host} " not in text and not re.search(r" \d\d:\d\d:\d\d,\d{3} ", text)


@pytest.mark.lab
def test_logs_of_one_host(cluster: Cluster) -> None:
    worker = cluster.lab.hosts[1].name
    result = cli("logs", str(cluster.inventory), worker, "-n", "5", timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5 and all(line.startswith(f"{worker} ") for line in lines)
    missing = cli("logs", str(cluster.inventory), "nosuchhost", timeout=60)
    assert missing.returncode == 2
    assert "nosuchhost" in missing.stderr and cluster.lab.hosts[0].name in missing.stderr


@pytest.mark.lab
def test_follow_shows_a_worker_registering_as_it_happens(cluster: Cluster) -> None:
    scheduler, *_, worker = cluster.lab.hosts
    process = subprocess.Popen(
        [sys.executable, "-m", "pydask_deploy", "logs", str(cluster.inventory), "-f", "-n", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a Ctrl-C reaches it
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(process.stdout or ()), daemon=True)
    reader.start()

    def registered() -> bool:
        return any(
            line.startswith(f"{scheduler.name} ") and "Register worker" in line for line in seen
        )

    try:
        time.sleep(3)  # let every host's journalctl -f start
        ssh(cluster.lab, worker.name, "systemctl restart dask-worker")
        deadline = time.monotonic() + 90
        while not registered() and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        reader.join(timeout=10)
    err = process.stderr.read() if process.stderr else ""
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert registered(), "".join(seen)[-3000:]
    assert any(line.startswith(f"{worker.name} ") for line in seen)


@pytest.mark.lab
def test_an_unreachable_host_is_named_on_stderr(cluster: Cluster, tmp_path: Path) -> None:
    unused = str(cluster.lab.config.subnet.network_address + 201)  # no lab host there
    inventory = with_unreachable_host(cluster.inventory, tmp_path / "ghost.yml", unused)
    result = cli("logs", str(inventory), "-n", "20", timeout=60)
    assert result.returncode == 1
    assert "ghost: unreachable (" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stdout.splitlines()) == 20  # the other hosts still answered
