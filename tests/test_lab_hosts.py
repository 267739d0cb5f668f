"""The lab against real hosts: systemd + sshd in nspawn, units answering, Ansible reaching them."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ansible_runner
import pytest
from helpers import cli, lab_env, ssh
from lab_factory import LabFactory

from pydask_deploy import lab as lab_module
from pydask_deploy.resources import path_with_ansible

pytestmark = pytest.mark.lab


def test_every_host_runs_systemd(lab: lab_module.Lab) -> None:
    assert [h.state for h in lab.hosts] == ["running"] * len(lab.hosts)
    for host in lab.hosts:
        assert ssh(lab.config, host.name, "systemctl is-system-running").strip() == "running"
        assert ssh(lab.config, host.name, "hostname").strip() == host.name
    statuses = lab_module.lab_status(lab.config)
    assert [(h.name, h.state) for h in statuses] == [(h.name, "running") for h in lab.hosts]


def test_hosts_resolve_each_other_by_name(lab: lab_module.Lab) -> None:
    last = lab.hosts[-1]
    out = ssh(lab.config, lab.hosts[0].name, f"getent hosts {last.name}")
    assert out.split()[0] == last.address


def test_a_unit_started_on_a_host_answers_from_the_controller(lab: lab_module.Lab) -> None:
    for host in lab.hosts:
        ssh(
            lab.config,
            host.name,
            "mkdir -p /tmp/probe && hostname > /tmp/probe/who && "
            "systemd-run --unit=lab-probe python3 -m http.server 8099 --directory /tmp/probe "
            "&& for i in $(seq 50); do ss -ltn | grep -q :8099 && break; sleep 0.1; done",
        )
    try:
        for host in lab.hosts:
            with urllib.request.urlopen(f"http://{host.address}:8099/who", timeout=5) as reply:
                assert reply.read().decode().strip() == host.name
    finally:
        for host in lab.hosts:
            ssh(lab.config, host.name, "systemctl stop lab-probe || true")


def test_written_inventory_works_with_ansible_ping(
    lab: lab_module.Lab, lab_inventory: Path, tmp_path: Path
) -> None:
    result = ansible_runner.run(
        private_data_dir=str(tmp_path),
        inventory=str(lab_inventory),
        host_pattern="all",
        module="ping",
        quiet=True,
        envvars={"PATH": path_with_ansible()},
    )
    assert result.status == "successful", result.stdout.read()
    assert sorted(result.stats["ok"]) == sorted(h.name for h in lab.hosts)
    assert not result.stats["dark"]


def test_lab_up_again_is_a_no_op_and_a_new_size_is_refused(
    lab: lab_module.Lab, lab_inventory: Path
) -> None:
    env = lab_env(lab.config)
    same = cli("lab", "up", "--hosts", str(len(lab.hosts)), "-o", str(lab_inventory), env=env)
    assert same.returncode == 0, same.stderr
    assert "already up" in same.stderr
    pids = [h.pid for h in lab_module.read_lab(lab.config).hosts]  # type: ignore[union-attr]
    assert pids == [h.pid for h in lab.hosts]
    other = cli("lab", "up", "--hosts", str(len(lab.hosts) + 1), "-o", "/dev/null", env=env)
    assert other.returncode == 2
    assert f"a lab of {len(lab.hosts)} hosts is already up" in other.stderr
    assert "lab down" in other.stderr


# ------------------------------------------------------------------ labs of their own


@pytest.fixture
def spare_lab(lab_factory: LabFactory) -> Iterator[lab_module.LabConfig]:
    """A second lab configuration beside the session's, cleaned up whatever happens."""
    with lab_factory.claim() as config:
        yield config


def test_up_down_up_down(spare_lab: lab_module.LabConfig, tmp_path: Path) -> None:
    env = lab_env(spare_lab)
    inventory = tmp_path / "spare.yml"
    for _ in range(2):
        up = cli("lab", "up", "--hosts", "3", "-o", str(inventory), "--json", env=env)
        assert up.returncode == 0, up.stderr
        report = json.loads(up.stdout)
        assert [h["state"] for h in report["hosts"]] == ["running"] * 3
        first = spare_lab.subnet.network_address
        assert [h["address"] for h in report["hosts"]] == [str(first + i) for i in (11, 12, 13)]
        down = cli("lab", "down", env=env)
        assert down.returncode == 0, down.stderr
        assert "3 host(s) stopped" in down.stdout
        assert not lab_module._mounts_under(spare_lab.state_dir)
        assert subprocess.run(
            ["ip", "link", "show", spare_lab.bridge], capture_output=True
        ).returncode
    again = cli("lab", "down", env=env)
    assert again.returncode == 0
    assert "no lab is up" in again.stdout


def test_leftovers_of_a_crashed_lab_are_cleaned(
    spare_lab: lab_module.LabConfig, tmp_path: Path
) -> None:
    env = lab_env(spare_lab)
    assert cli("lab", "up", "--hosts", "2", "-o", str(tmp_path / "i.yml"), env=env).returncode == 0
    crashed = lab_module.read_lab(spare_lab)
    assert crashed is not None
    for host in crashed.hosts:  # nspawn dies hard; the hosts' init processes are orphaned
        os.kill(host.pid, 9)
    up = cli("lab", "up", "--hosts", "2", "-o", str(tmp_path / "i.yml"), env=env)
    assert up.returncode == 0, up.stderr
    assert "did not shut down cleanly" in up.stderr
    fresh = lab_module.read_lab(spare_lab)
    assert fresh is not None
    assert [h.state for h in fresh.hosts] == ["running", "running"]
    assert {h.pid for h in fresh.hosts}.isdisjoint(h.pid for h in crashed.hosts)


@dataclass(frozen=True)
class BusySubnet:
    """A subnet that another network (``user``) holds, and a lab of ours pointed at it."""

    subnet: str
    user: str
    lab: lab_module.LabConfig


@pytest.fixture
def busy_subnet(lab_factory: LabFactory) -> Iterator[BusySubnet]:
    """A bare bridge holding an address in a subnet of its own, as if another network used it."""
    with lab_factory.claim() as other, lab_factory.claim() as mine:
        subprocess.run(["ip", "link", "add", other.bridge, "type", "bridge"], check=True)
        try:
            address = f"{other.subnet.network_address + 5}/{other.subnet.prefixlen}"
            subprocess.run(["ip", "addr", "add", address, "dev", other.bridge], check=True)
            yield BusySubnet(str(other.subnet), other.bridge, mine)
        finally:
            subprocess.run(["ip", "link", "del", other.bridge], check=False)


def test_a_subnet_used_by_something_else_is_refused(
    busy_subnet: BusySubnet, tmp_path: Path
) -> None:
    busy = busy_subnet
    env = {**lab_env(busy.lab), "PYDASK_LAB_SUBNET": busy.subnet}
    result = cli("lab", "up", "--hosts", "1", "-o", str(tmp_path / "i.yml"), env=env)
    assert result.returncode == 2
    assert f"the lab subnet {busy.subnet} is already used by {busy.user}" in result.stderr
    assert not (tmp_path / "i.yml").exists()
    assert subprocess.run(["ip", "link", "show", busy.lab.bridge], capture_output=True).returncode


def test_docker_hosts_run_containers_from_the_lab_registry(docker_lab: lab_module.Lab) -> None:
    config, host = docker_lab.config, docker_lab.hosts[-1].name
    registry = docker_lab.registry
    assert registry == f"{config.gateway}:{lab_module.REGISTRY_PORT}"
    image = f"{registry}/lab-probe:1"
    assert ssh(config, host, "systemctl is-active docker").strip() == "active"
    # No base image can be pulled here: make one from the host's own files, push it to the
    # lab registry, drop it locally, and run it again from the registry.
    ssh(
        config,
        host,
        "cd / && tar -c bin lib lib64 etc usr/bin/python3 "
        "usr/bin/python3.11 usr/lib/python3.11 usr/lib/x86_64-linux-gnu usr/lib64 "
        f"| docker import - {image} >/dev/null && "
        f"docker push -q {image} >/dev/null && docker rmi -f {image} >/dev/null && "
        f"docker pull -q {image} >/dev/null",
        timeout=300,
    )
    out = ssh(config, host, f"docker run --rm --network host {image} python3 -c 'print(6 * 7)'")
    assert out.strip() == "42"
    with urllib.request.urlopen(f"http://{registry}/v2/lab-probe/tags/list", timeout=5) as r:
        assert "1" in json.load(r)["tags"]
