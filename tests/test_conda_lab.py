"""The conda runtime converged for real: a lab cluster from a real conda channel.

``scripts/conda-channel`` builds the channel (real ``.conda`` packages, indexed); this
module serves it over HTTP on the lab bridge's controller address (only the controller
reaches it: the hosts get the environment the controller staged). One lab of three hosts
serves the whole module, in order: converge from the channel, re-apply and grow the
cluster with the channel switched off, then roll a new environment through the workers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from distributed import Client, wait
from helpers import cli, cluster_client, ssh, wait_for_workers
from lab_factory import LabFactory

from pydask_deploy import lab as lab_module
from pydask_deploy.deploy import conda
from pydask_deploy.inventory import load_inventory
from pydask_deploy.resources import playbook_path, roles_path

ROOT = Path(__file__).resolve().parent.parent


def _free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


@dataclass
class Channel:
    """The channel directory and the HTTP server this module starts and stops by its PID."""

    directory: Path
    address: str  # the controller's address on the lab bridge
    port: int
    pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/"

    def start(self) -> None:
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(self.port), "--bind", self.address,
             "--directory", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.pid = server.pid
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection((self.address, self.port), timeout=1):
                    return
            except OSError:
                assert time.monotonic() < deadline, "the channel's HTTP server did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGTERM)
            os.waitpid(self.pid, 0)
            self.pid = None


@dataclass
class CondaLab:
    lab: lab_module.Lab
    lab_inventory: Path  # as `lab up` wrote it
    inventory: Path
    environment: Path
    channel: Channel
    figures: dict[str, Any] = field(default_factory=dict)

    def client(self) -> Client:
        return cluster_client(self.inventory)

    def write_inventory(self, hosts: list[str]) -> None:
        """The lab's inventory as a conda cluster: h1 schedules and works, ``hosts`` work."""
        data = yaml.safe_load(self.lab_inventory.read_text())
        every = {**data["all"]["children"]["dask_workers"]["hosts"]}
        every.update(data["all"]["children"]["dask_scheduler"]["hosts"])
        data["all"]["children"]["dask_workers"]["hosts"] = {h: every[h] for h in hosts}
        data["all"]["vars"].update(
            {
                "dask_runtime": "conda",
                "dask_conda_environment_file": self.environment.name,
                "dask_conda_cache_dir": str(self.inventory.parent / "conda-cache"),
            }
        )
        self.inventory.write_text(yaml.safe_dump(data, sort_keys=False))

    def write_environment(self, dependencies: list[str]) -> None:
        self.environment.write_text(
            yaml.safe_dump({"channels": [self.channel.url], "dependencies": dependencies})
        )


@pytest.fixture(scope="module")
def conda_lab(
    lab_factory: LabFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CondaLab]:
    """Three lab hosts for the module, the channel built and served on the lab's bridge."""
    directory = tmp_path_factory.mktemp("conda-lab")
    started = time.monotonic()
    built = subprocess.run(
        [str(ROOT / "scripts" / "conda-channel"), str(directory / "channel")],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    channel_seconds = time.monotonic() - started
    with lab_factory.boot(3) as (lab, lab_inventory):
        address = lab.config.gateway
        channel = Channel(directory / "channel", address, _free_port(address))
        channel.start()
        try:
            result = CondaLab(
                lab,
                lab_inventory,
                directory / "cluster.yml",
                directory / "environment.yml",
                channel,
            )
            result.figures["channel"] = round(channel_seconds, 1)
            result.write_environment(["distributed"])
            result.write_inventory(["h1", "h2"])
            yield result
        finally:
            channel.stop()


def _environment_on(lab: CondaLab, host: str) -> list[tuple[str, str, str, str]]:
    """The packages of the env the host's units run, from its ``conda-meta`` records."""
    script = (
        "import glob, json; print(json.dumps(sorted([(r['name'], r['version'], r['build'], "
        "r['sha256']) for r in (json.load(open(f)) for f in "
        "glob.glob('/opt/dask/envs/current/conda-meta/*.json'))])))"
    )
    return [tuple(p) for p in json.loads(ssh(lab.lab, host, f'python3 -c "{script}"'))]


def _locked(lab: CondaLab) -> tuple[str, list[tuple[str, str, str, str]]]:
    lock = yaml.safe_load(conda.lock_path(load_inventory(lab.inventory)).read_text())
    platform = lock["platforms"]["linux-64"]
    packages = sorted(
        (p["name"], p["version"], p["build"], p["sha256"]) for p in platform["packages"]
    )
    return platform["id"], packages


def _conda_line(stderr: str) -> str:
    return next((line for line in stderr.splitlines() if "conda: " in line), "")


@pytest.mark.lab
def test_a_conda_cluster_converges_from_the_channel(conda_lab: CondaLab) -> None:
    inventory = str(conda_lab.inventory)
    started = time.monotonic()
    applied = cli("apply", inventory, "--json")
    seconds = time.monotonic() - started
    assert applied.returncode == 0, applied.stderr[-4000:]
    document = json.loads(applied.stdout)
    print(f"\ncold apply, 2 hosts: {seconds:.1f} s; {_conda_line(applied.stderr)}")
    print(f"conda step: {document['conda']['seconds']}; channel built in "
          f"{conda_lab.figures['channel']} s")  # fmt: skip
    assert document["conda"]["solved"] == ["linux-64"] and document["conda"]["lock_written"]
    env_id, locked = _locked(conda_lab)
    final = f"/opt/dask/envs/{env_id}"

    # every host's environment holds exactly the locked builds
    for host in ("h1", "h2"):
        assert _environment_on(conda_lab, host) == locked, host
        assert ssh(conda_lab.lab, host, "readlink /opt/dask/envs/current").strip() == final
        assert f"{final}/bin/dask" in ssh(conda_lab.lab, host, "systemctl cat dask-worker")
        # no conda installer and no channel were needed on the host
        assert ssh(conda_lab.lab, host, "ls /opt/dask").split() == ["envs"]

    with conda_lab.client() as client:
        wait_for_workers(client, 2)
    verified = cli("verify", inventory)
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-2000:]
    with conda_lab.client() as client:
        prefixes = client.run(lambda: __import__("sys").prefix)
        assert set(prefixes.values()) == {final} and len(prefixes) == 2
        futures = client.map(lambda x: x * x, range(100))
        assert sum(client.gather(futures)) == sum(x * x for x in range(100))

    # a second apply --full changes nothing
    started = time.monotonic()
    again = cli("apply", inventory, "--full", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    print(f"apply --full: {time.monotonic() - started:.1f} s; {_conda_line(again.stderr)}")
    assert json.loads(again.stdout)["changed"] is False
    assert json.loads(again.stdout)["conda"]["solved"] == []

    # a plain ansible-playbook run works from the lock and the staged env apply made (one
    # host is enough to show it: the tasks are the same on each) ...
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(roles_path()),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_NOCOLOR": "True",
    }
    site = str(playbook_path("site.yml"))
    playbook = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", inventory, site]
    plain = subprocess.run(
        [*playbook, "--limit", "h2"], capture_output=True, text=True, env=env, timeout=600
    )
    assert plain.returncode == 0, plain.stdout[-4000:]
    assert "changed=0" in plain.stdout and "failed=0" in plain.stdout
    # ... and says to run apply when they are not there
    lock_file = conda.lock_path(load_inventory(conda_lab.inventory))
    moved = lock_file.with_name("moved-aside.yml")
    lock_file.rename(moved)
    try:
        plain = subprocess.run(
            [*playbook, "--limit", "h2"], capture_output=True, text=True, env=env, timeout=600
        )
    finally:
        moved.rename(lock_file)
    assert plain.returncode != 0
    assert "run `pydask-deploy apply" in plain.stdout, plain.stdout[-3000:]


@pytest.mark.lab
def test_without_the_channel_the_lock_and_the_cache_are_enough(conda_lab: CondaLab) -> None:
    inventory = str(conda_lab.inventory)
    _, locked = _locked(conda_lab)
    conda_lab.channel.stop()
    try:
        again = cli("apply", inventory, "--full", "--json")
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads(again.stdout)["changed"] is False
        # a fresh host joins: it gets the same environment from the controller's cache
        conda_lab.write_inventory(["h1", "h2", "h3"])
        started = time.monotonic()
        grown = cli("apply", inventory, "--limit", "h3", "--json")
        print(f"\nh3 joins without the channel: {time.monotonic() - started:.1f} s; "
              f"{_conda_line(grown.stderr)}")  # fmt: skip
        assert grown.returncode == 0, grown.stderr[-3000:]
        assert json.loads(grown.stdout)["conda"]["fetched"] == 0
        assert _environment_on(conda_lab, "h3") == locked
        with conda_lab.client() as client:
            wait_for_workers(client, 3)
        verified = cli("verify", inventory)
        assert verified.returncode == 0, verified.stdout[-3000:]
    finally:
        conda_lab.channel.start()


@pytest.mark.lab
def test_upgrade_rolls_a_new_environment_through_the_workers(conda_lab: CondaLab) -> None:
    inventory = str(conda_lab.inventory)
    old_id, old_packages = _locked(conda_lab)
    lock_file = conda.lock_path(load_inventory(conda_lab.inventory))
    lock_before = lock_file.read_text()
    with conda_lab.client() as client:
        data = client.scatter(list(range(200)))
        doubled = client.map(lambda x: 2 * x, data)
        wait(doubled)
        held = [*data, *doubled]
        conda_lab.write_environment(["distributed", "numpy"])
        started = time.monotonic()
        upgraded = cli("upgrade", inventory, "--batch", "2", "--json")
        seconds = time.monotonic() - started
        assert upgraded.returncode == 0, upgraded.stderr[-4000:]
        report = json.loads(upgraded.stdout)
        print(f"\nupgrade adding numpy, 3 worker hosts, --batch 2: {seconds:.1f} s; "
              f"{_conda_line(upgraded.stderr)}")  # fmt: skip
        for batch in report["batches"]:
            print(f"  batch {batch['batch']} {batch['hosts']}: {batch['seconds']} s")
        assert {b["outcome"] for b in report["batches"]} == {"upgraded"}
        # the held data moved to the other workers as each batch retired: nothing lost
        holders = client.who_has(held)
        assert all(holders.values()), [k for k, v in holders.items() if not v]
        assert client.gather(doubled) == [2 * x for x in range(200)]
        new_id, new_packages = _locked(conda_lab)
        assert new_id != old_id and lock_file.read_text() != lock_before
        assert "numpy" in {p[0] for p in new_packages} - {p[0] for p in old_packages}
        prefixes = client.run(lambda: __import__("sys").prefix)
        assert set(prefixes.values()) == {f"/opt/dask/envs/{new_id}"}
        assert set(client.run(lambda: __import__("numpy").__version__).values()) == {
            next(p[1] for p in new_packages if p[0] == "numpy")
        }
    for host in ("h1", "h2", "h3"):
        assert _environment_on(conda_lab, host) == new_packages, host
    # recorded: the next apply changes nothing
    again = cli("apply", inventory, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False
