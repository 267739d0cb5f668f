"""Reboots: a deployed cluster comes back by itself when its hosts reboot, with no `apply`.

The reason to run Dask as systemd units rather than `dask ssh`: a worker host rebooting, the
scheduler host rebooting (its workers re-register: they exit when it goes and their units
have Restart=always) and the whole lab power-cycled at once. Each case is timed from the
`lab reboot` command to `status` healthy; run with `-s` to see the figures.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import Cluster, cli, lab_env, ssh
from lab_factory import LabFactory

from pydask_deploy import lab as lab_module

pytestmark = pytest.mark.lab

# /run is a tmpfs a reboot empties; /var/lib is on the host's disk, which a reboot keeps
_MARK = "echo {0} > /run/reboot-probe && echo {0} > /var/lib/reboot-probe"
_READ = (
    "cat /run/reboot-probe 2>/dev/null || echo gone; cat /var/lib/reboot-probe; "
    "cat /etc/ssh/ssh_host_ed25519_key.pub"
)


@pytest.fixture(scope="module")
def reboot_cluster(lab_factory: LabFactory) -> Iterator[Cluster]:
    """Three hosts (h1 the scheduler, h2 and h3 workers) converged once by apply."""
    with lab_factory.boot(3) as (lab, inventory):
        applied = cli("apply", str(inventory), "--json")
        assert applied.returncode == 0, applied.stderr[-3000:]
        yield Cluster(lab, inventory, json.loads(applied.stdout))


def _status(cluster: Cluster) -> dict[str, Any]:
    done = cli("status", str(cluster.inventory), "--json", timeout=120)
    report: dict[str, Any] = json.loads(done.stdout)
    assert (done.returncode == 0) == report["ok"], done.stderr[-2000:]
    return report


def _workers(report: dict[str, Any], host: str | None = None) -> set[str]:
    """The addresses of the workers the scheduler has registered (on ``host``, or all)."""
    return {
        w["address"]
        for h in report["hosts"]
        if host in (None, h["name"])
        for w in h["workers"]["list"]
    }


def _wait_healthy(cluster: Cluster, workers: int, since: float, timeout: float = 180) -> float:
    """Seconds from ``since`` until `status` says healthy with ``workers`` registered."""
    while True:
        report = _status(cluster)
        if report["ok"] and len(_workers(report)) == workers:
            return time.monotonic() - since
        waited = time.monotonic() - since
        assert waited < timeout, f"not healthy in {timeout} s: {report['verdict']}"
        time.sleep(0.5)


def _reboot(cluster: Cluster, hosts: list[str], case: str) -> dict[str, Any]:
    """Reboot ``hosts`` at once with `lab reboot`, prove that they rebooted on their own
    disks, wait until the cluster is healthy again and print how long that took."""
    config = cluster.lab.config
    before = _status(cluster)
    assert before["ok"], before["verdict"]
    keys = {}
    for host in hosts:
        ssh(config, host, _MARK.format(case))
        keys[host] = ssh(config, host, "cat /etc/ssh/ssh_host_ed25519_key.pub")
    pids = {h.name: h.pid for h in lab_module.read_lab(config).hosts}  # type: ignore[union-attr]

    started = time.monotonic()
    done = cli("lab", "reboot", *hosts, "--json", env=lab_env(config), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rebooted = {h["name"]: h for h in json.loads(done.stdout)["hosts"]}
    seconds = _wait_healthy(cluster, len(_workers(before)), started)

    assert sorted(rebooted) == sorted(hosts)
    after = lab_module.read_lab(config)
    assert after is not None
    for host in after.hosts:
        # a new nspawn for each rebooted host, the same one for the others
        assert (host.pid != pids[host.name]) == (host.name in hosts), host.name
    for host in hosts:
        run, disk, key = ssh(config, host, _READ).splitlines()
        assert (run, disk, key) == ("gone", case, keys[host].strip()), host
    report = _status(cluster)
    hosts_back = ", ".join(
        f"{h['name']} {h['seconds']:.1f} s (down {h['down_seconds']:.1f}, "
        f"boot {h['boot_seconds']:.1f})"
        for h in rebooted.values()
    )
    print(
        f"\nreboot figure: {case}: status healthy {seconds:.1f} s after "
        f"`lab reboot {' '.join(hosts)}` ({len(_workers(report))} workers); hosts booted: "
        f"{hosts_back}"
    )
    return {"before": before, "after": report}


def test_a_worker_host_reboots_and_its_workers_come_back(reboot_cluster: Cluster) -> None:
    reports = _reboot(reboot_cluster, ["h3"], "worker host h3")
    before, after = reports["before"], reports["after"]
    # h3's workers are new processes that registered by themselves; h2's never left
    assert _workers(after, "h3") and _workers(after, "h3").isdisjoint(_workers(before, "h3"))
    assert _workers(after, "h2") == _workers(before, "h2")
    assert len(_workers(after)) == len(_workers(before))


def test_the_scheduler_host_reboots_and_the_workers_re_register(
    reboot_cluster: Cluster,
) -> None:
    reports = _reboot(reboot_cluster, ["h1"], "scheduler host h1")
    before, after = reports["before"], reports["after"]
    # every worker left with the scheduler and registered again with the new one
    assert _workers(after).isdisjoint(_workers(before))
    assert len(_workers(after)) == len(_workers(before))
    units = {h["name"]: h["units"] for h in after["hosts"]}
    assert all(u["restarts"] >= 1 for h in ("h2", "h3") for u in units[h]), units


def test_every_host_power_cycles_at_once_and_verify_passes(reboot_cluster: Cluster) -> None:
    reports = _reboot(reboot_cluster, ["h1", "h2", "h3"], "every host at once")
    assert _workers(reports["after"]).isdisjoint(_workers(reports["before"]))
    verified = cli("verify", str(reboot_cluster.inventory))
    assert verified.returncode == 0, verified.stdout + verified.stderr
