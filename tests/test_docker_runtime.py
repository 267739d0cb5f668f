"""The docker runtime on --docker lab hosts, with the images served by the lab's registry:
converge, upgrade to a new tag without losing held data, destroy."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from distributed import wait
from helpers import cli, cluster_client, ssh, wait_for_workers

from pydask_deploy import lab as lab_module
from pydask_deploy.inventory import load_inventory
from pydask_deploy.observe import connection

pytestmark = pytest.mark.lab

DASK_VERSION = "2026.8.0"
# The tag an upgrade moves to: the same files, another image (its own ID).
NEW_TAG = f"{DASK_VERSION}-rebuilt"


def build_dask_images(lab: lab_module.Lab, workdir: Path) -> tuple[str, str]:
    """Make two real images with distributed in them and push them to the lab registry: the
    first, and one of the same files under another tag and ID (what an upgrade moves to).

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
    rebuilt = f"{lab.registry}/dask:{NEW_TAG}"
    builder = lab.hosts[0].name
    ssh(
        lab,
        builder,
        "rm -rf /tmp/wheels && mkdir /tmp/wheels && tar -C /tmp/wheels -xf -",
        stdin=tarball,
        timeout=600,
    )
    env = "--change 'ENV PATH=/opt/image-env/bin:/usr/bin:/bin'"
    ssh(
        lab,
        builder,
        "set -e; python3 -m venv /opt/image-env; "
        "/opt/image-env/bin/pip install -q --no-index --find-links /tmp/wheels "
        f"distributed=={DASK_VERSION} bokeh; cd /; "
        "tar -c bin lib lib64 etc usr/bin/python3 usr/bin/python3.11 usr/lib/python3.11 "
        "usr/lib/x86_64-linux-gnu usr/lib64 opt/image-env --no-recursion tmp var/tmp "
        "> /tmp/image.tar; "
        f"docker import {env} /tmp/image.tar {image} >/dev/null; "
        f"docker import {env} --change 'LABEL org.pydask-deploy.test=rebuilt' /tmp/image.tar "
        f"{rebuilt} >/dev/null; "
        f"docker push -q {image} >/dev/null; docker push -q {rebuilt} >/dev/null; "
        f"docker rmi {image} {rebuilt} >/dev/null; "
        "rm -rf /opt/image-env /tmp/wheels /tmp/image.tar",
        timeout=600,
    )
    return image, rebuilt


@pytest.fixture(scope="module")
def dask_images(
    docker_lab: lab_module.Lab, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    return build_dask_images(docker_lab, tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def docker_inventory(
    docker_lab_inventory: Path,
    dask_images: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Path]:
    """The docker lab as a cluster on the first image; h1 schedules and works, so that a
    retired worker's data has another worker to move to."""
    data = yaml.safe_load(docker_lab_inventory.read_text())
    data["all"]["vars"].update(dask_runtime="docker", dask_docker_image=dask_images[0])
    children = data["all"]["children"]
    children["dask_workers"]["hosts"] = {
        **children["dask_scheduler"]["hosts"],
        **children["dask_workers"]["hosts"],
    }
    inventory = tmp_path_factory.mktemp("docker") / "docker.yml"
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    yield inventory


def test_docker_runtime_converges_verifies_and_computes(
    docker_lab: lab_module.Lab, docker_inventory: Path
) -> None:
    inventory = docker_inventory
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


def _image_id(lab: lab_module.Lab, host: str, image: str) -> str:
    return ssh(lab, host, f"docker image inspect --format '{{{{.Id}}}}' {image}").strip()


def _events(
    lab: lab_module.Lab, host: str, since: float, kind: str, event: str
) -> list[tuple[float, str]]:
    """Docker's own record of what happened on a host since ``since`` (epoch seconds):
    ``(when, what)`` for each ``kind`` (image, container) ``event`` (pull, start)."""
    out = ssh(
        lab,
        host,
        f"docker events --since {since:.3f} --until $(date +%s.%N) --filter type={kind} "
        f"--filter event={event} --format '{{{{.TimeNano}}}} {{{{.Actor.ID}}}} "
        "{{.Actor.Attributes.name}}'",
    )
    return [(int(line.split()[0]) / 1e9, line) for line in out.splitlines() if line.strip()]


def test_docker_upgrade_pulls_everywhere_first_and_keeps_held_data(
    docker_lab: lab_module.Lab, docker_inventory: Path, dask_images: tuple[str, str]
) -> None:
    inventory = docker_inventory
    hosts = [h.name for h in docker_lab.hosts]
    applied = cli("apply", str(inventory), "--json")
    assert applied.returncode == 0, applied.stderr[-3000:]
    old_id = _image_id(docker_lab, hosts[0], dask_images[0])
    with cluster_client(inventory) as client:
        wait_for_workers(client, len(hosts), timeout=120)
        data = client.scatter(list(range(200)))
        doubled = client.map(lambda x: 2 * x, data)
        wait(doubled)
        held = [*data, *doubled]
        keys = {f.key for f in held}
        assert {k for k, v in client.who_has(held).items() if v} == keys

        since = time.time()
        result = cli(
            "upgrade", str(inventory), "--batch", "1",
            "--set", f"dask_docker_image={dask_images[1]}", "--json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-4000:]
        report = json.loads(result.stdout)
        assert report["ok"] is True, report

        # every host pulled the new image and was staged before the first retire
        staging = report["staging"]
        assert staging["ok"] is True and staging["restart"] == hosts
        progress = [line for line in result.stderr.splitlines() if line.startswith("==>")]
        staged_at = next(i for i, line in enumerate(progress) if "staged in" in line)
        assert staged_at < next(i for i, line in enumerate(progress) if "retiring" in line)
        new_id = _image_id(docker_lab, hosts[0], dask_images[1])
        assert new_id != old_id
        pulls = {h: _events(docker_lab, h, since, "image", "pull") for h in hosts}
        starts = {h: _events(docker_lab, h, since, "container", "start") for h in hosts}
        assert all(NEW_TAG in what for p in pulls.values() for _, what in p), pulls
        assert all(pulls.values()) and all(starts.values()), (pulls, starts)
        # the first retired worker came back only after the last host had the new image
        last_pull = max(when for p in pulls.values() for when, _ in p)
        first_start = min(when for s in starts.values() for when, _ in s)
        assert last_pull < first_start, (pulls, starts)
        for h in hosts:
            running = ssh(docker_lab, h, "docker inspect --format '{{.Image}}' dask-worker").strip()
            assert running == new_id, h
        assert [b["hosts"] for b in report["batches"]] == [[h] for h in hosts]
        assert all(b["outcome"] == "upgraded" and b["retired"] for b in report["batches"])

        # no held key lost
        wait_for_workers(client, len(hosts), timeout=120)
        assert {k for k, v in client.who_has(held).items() if v} == keys
        assert client.gather(doubled) == [2 * x for x in range(200)]

    again = cli("apply", str(inventory), "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["totals"]["changed"] == 0


_DOCKER_LEFTOVERS = (
    "ls -d /opt/dask /etc/dask /var/lib/dask /etc/systemd/system/dask-*.service 2>/dev/null; "
    "docker ps --all --format '{{.Names}}'; "
    "docker image ls --format '{{.Repository}}:{{.Tag}}' | grep /dask: || true"
)


def test_docker_destroy_removes_units_containers_and_the_images_it_ran(
    docker_lab: lab_module.Lab, docker_inventory: Path
) -> None:
    """Runs after the upgrade: both images the runtime ran are on the hosts, and both go; an
    image of the same repository that the cluster never ran stays."""
    inventory = docker_inventory
    applied = cli("apply", str(inventory))
    assert applied.returncode == 0, applied.stderr[-3000:]
    hosts = [h.name for h in docker_lab.hosts]
    assert all(ssh(docker_lab, h, _DOCKER_LEFTOVERS).strip() for h in hosts)

    # someone's own image of the same repository, which apply never ran: destroy keeps it
    ran = ssh(docker_lab, hosts[0], "docker image ls --format '{{.Repository}}:{{.Tag}}'")
    image = next(line for line in ran.split() if "/dask:" in line)
    repository = image.rsplit(":", 1)[0]
    ssh(docker_lab, hosts[0], f"docker tag {image} {repository}:someones-own")

    destroyed = cli("destroy", str(inventory), "--yes", "--json")
    assert destroyed.returncode == 0, destroyed.stderr[-3000:]
    assert json.loads(destroyed.stdout)["changed"] is True
    kept = f"docker image inspect --format ok {repository}:someones-own"
    assert ssh(docker_lab, hosts[0], kept).strip() == "ok"
    ssh(docker_lab, hosts[0], f"docker image rm {repository}:someones-own")
    for h in hosts:
        assert ssh(docker_lab, h, _DOCKER_LEFTOVERS).strip() == "", h
        assert ssh(docker_lab, h, "systemctl is-active docker").strip() == "active"  # Docker stays

    again = cli("destroy", str(inventory), "--yes", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["changed"] is False
