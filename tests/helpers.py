"""What many test modules do alike: run the CLI, run a command on a lab host, wait for
workers, connect a client, write inventories derived from a lab's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from distributed import Client, Security

from pydask_deploy import lab as lab_module
from pydask_deploy.cli import main
from pydask_deploy.deploy import pki
from pydask_deploy.inventory import load_inventory
from pydask_deploy.observe import connection, scheduler


def cli(
    *args: str, timeout: float = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``pydask-deploy ARGS`` as a user would (this interpreter), with extra ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "pydask_deploy", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env} if env else None,
        timeout=timeout,
    )


def invoke(*args: str) -> tuple[int, str, str]:
    """Run ``pydask-deploy ARGS`` in this process (click's runner): exit code, stdout, stderr.
    An exception the CLI does not turn into an exit code is raised, with its traceback."""
    result = CliRunner().invoke(main, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def ssh(
    lab: lab_module.Lab | lab_module.LabConfig,
    host: str,
    command: str,
    *,
    timeout: float = 120,
    stdin: Path | None = None,
) -> str:
    """Run ``command`` on a lab host as root and return its stdout; fail the test if it fails."""
    config = lab.config if isinstance(lab, lab_module.Lab) else lab
    argv = lab_module.ssh_command(config, host, [command])
    with open(stdin or os.devnull, "rb") as source:
        done = subprocess.run(argv, stdin=source, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command!r} on {host}: {done.stderr[-2000:]}"
    return done.stdout


def lab_env(config: lab_module.LabConfig) -> dict[str, str]:
    """The environment that points `pydask-deploy lab ...` at this lab."""
    return {
        "PYDASK_LAB_DIR": str(config.state_dir),
        "PYDASK_LAB_CACHE": str(config.cache_dir),
        "PYDASK_LAB_BRIDGE": config.bridge,
        "PYDASK_LAB_SUBNET": str(config.subnet),
    }


def cluster_client(inventory: Path) -> Client:
    """A client of the cluster an inventory describes, with the certificate apply made."""
    loaded = load_inventory(inventory)
    return Client(  # type: ignore[no-untyped-call]
        connection.cluster_address(loaded),
        security=scheduler.client_security(loaded),
        timeout=30,
    )


def wait_for_workers(client: Client, count: int, timeout: float = 60) -> None:
    """Wait until exactly ``count`` workers are registered with the scheduler."""
    deadline = time.monotonic() + timeout
    while len(client.scheduler_info()["workers"]) != count:
        assert time.monotonic() < deadline, f"{count} workers not registered in {timeout} s"
        time.sleep(0.25)


def edit_inventory(source: Path, target: Path, **all_vars: Any) -> Path:
    """A copy of ``source`` with some ``all`` vars changed: the same cluster, same certificates."""
    data = yaml.safe_load(source.read_text())
    data["all"]["vars"].setdefault("dask_tls_pki_dir", str(pki.pki_dir(load_inventory(source))))
    data["all"]["vars"].update(all_vars)
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


def with_unreachable_host(source: Path, target: Path, address: str) -> Path:
    """A copy of ``source`` with one more worker, ``ghost`` at ``address`` where no host
    answers, and a short SSH connect timeout so that finding it out takes seconds."""
    data = yaml.safe_load(source.read_text())
    data["all"]["children"]["dask_workers"]["hosts"]["ghost"] = {"ansible_host": address}
    data["all"]["vars"]["ansible_ssh_common_args"] += " -o ConnectTimeout=3"
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


@dataclass(frozen=True)
class Cluster:
    """A lab converged by apply: its hosts, its inventory, and what the first apply said."""

    lab: lab_module.Lab
    inventory: Path
    first_apply: dict[str, Any]

    @property
    def address(self) -> str:
        """The scheduler's address, ``tls://`` as the cluster runs with mutual TLS."""
        return connection.cluster_address(load_inventory(self.inventory))

    def security(self) -> Security | None:
        """The client certificate apply made (None for a ``dask_tls: false`` cluster)."""
        return scheduler.client_security(load_inventory(self.inventory))

    def client(self) -> Client:
        return cluster_client(self.inventory)
