"""The docker runtime on --docker lab hosts, with the image served by the lab's registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import cli, cluster_client, ssh

from pydask_deploy import lab as lab_module
from pydask_deploy.inventory import load_inventory
from pydask_deploy.observe import connection

pytestmark = pytest.mark.lab

DASK_VERSION = "2026.8.0"


def build_dask_image(lab: lab_module.Lab, workdir: Path) -> str:
    """Make a real image with distributed in it and push it to the lab registry.

    No base image can be pulled here, so the image is the host's own Python plus a venv
    built from wheels this machine downloads (the hosts have no index).
    """
    wheels = workdir / "wheels"
    download = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "-d",
            str(wheels),
            f"distributed=={DASK_VERSION}",
            "bokeh",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert download.returncode == 0, download.stderr[-2000:]
    tarball = workdir / "wheels.tar"
    subprocess.run(["tar", "-C", str(wheels), "-cf", str(tarball), "."], check=True)
    image = f"{lab.registry}/dask:{DASK_VERSION}"
    builder = lab.hosts[0].name
    ssh(
        lab,
        builder,
        "rm -rf /tmp/wheels && mkdir /tmp/wheels && tar -C /tmp/wheels -xf -",
        stdin=tarball,
        timeout=600,
    )
    ssh(
        lab,
        builder,
        "set -e; python3 -m venv /opt/image-env; "
        "/opt/image-env/bin/pip install -q --no-index --find-links /tmp/wheels "
        f"distributed=={DASK_VERSION} bokeh; cd /; "
        "tar -c bin lib lib64 etc usr/bin/python3 usr/bin/python3.11 usr/lib/python3.11 "
        "usr/lib/x86_64-linux-gnu usr/lib64 opt/image-env --no-recursion tmp var/tmp "
        "| docker import --change 'ENV PATH=/opt/image-env/bin:/usr/bin:/bin' "
        f"- {image} >/dev/null; docker push -q {image} >/dev/null; "
        f"docker rmi {image} >/dev/null; rm -rf /opt/image-env /tmp/wheels",
        timeout=600,
    )
    return image


def test_docker_runtime_converges_verifies_and_computes(
    docker_lab: lab_module.Lab, docker_lab_inventory: Path, tmp_path: Path
) -> None:
    image = build_dask_image(docker_lab, tmp_path)
    data = yaml.safe_load(docker_lab_inventory.read_text())
    data["all"]["vars"].update(dask_runtime="docker", dask_docker_image=image)
    inventory = tmp_path / "docker.yml"
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    applied = cli("apply", str(inventory), "--json")
    assert applied.returncode == 0, applied.stderr[-3000:]
    assert json.loads(applied.stdout)["changed"] is True

    verified = cli("verify", str(inventory))
    assert verified.returncode == 0, verified.stdout + verified.stderr

    worker = docker_lab.hosts[1]
    out = ssh(docker_lab, worker.name, "docker ps --format '{{.Names}} {{.Image}}'")
    assert out.split()[0] == "dask-worker"
    converged = load_inventory(inventory)
    address = connection.cluster_address(converged)
    assert address == f"tls://{docker_lab.hosts[0].address}:8786"
    with cluster_client(inventory) as client:
        assert client.submit(lambda x: x + 1, 41).result(timeout=30) == 42

    again = cli("apply", str(inventory), "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["totals"]["changed"] == 0
