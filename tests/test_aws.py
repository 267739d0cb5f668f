"""`pydask-deploy inventory aws` against a real EC2 API: moto's server on 127.0.0.1.

One server for the module; each scenario's instances carry their own ``dask-cluster`` value,
so the scenarios share it without seeing each other.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner, Result
from moto.server import ThreadedMotoServer

from pydask_deploy.cli import main
from pydask_deploy.cli.cloud import aws_command
from pydask_deploy.inventory import load_inventory

REGION = "eu-west-1"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def dummy_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    # without credentials botocore would ask the EC2 metadata service: traffic off this host
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # never read the developer's own ~/.aws
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def fleet(endpoint: str) -> dict[str, str]:
    """Launch every scenario's instances; returns Name -> instance id."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint)
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
        private_subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.1.0/24")["Subnet"]
        ids: dict[str, str] = {}

        def launch(name: str, cluster: str, subnet: str | None = None, **tags: str) -> str:
            all_tags = {"Name": name, "dask-cluster": cluster, **tags}
            where: dict[str, Any] = {"SubnetId": subnet} if subnet else {}
            reply = ec2.run_instances(
                ImageId=image,
                MinCount=1,
                MaxCount=1,
                InstanceType="t3.large",
                TagSpecifications=[
                    {
                        "ResourceType": "instance",
                        "Tags": [{"Key": k, "Value": v} for k, v in all_tags.items()],
                    }
                ],
                **where,
            )
            ids[name] = reply["Instances"][0]["InstanceId"]
            return ids[name]

        # the happy path: a scheduler, three workers (one with a GPU), one stopped, and a
        # member of the same cluster in another team (tag AND semantics)
        launch("head", "happy", **{"dask-role": "scheduler", "team": "data"})
        launch("gpu-1", "happy", **{"dask-gpus": "2", "team": "data"})
        launch("cpu-1", "happy", **{"dask-role": "worker", "dask-nthreads": "4", "team": "data"})
        launch("cpu-2", "happy", **{"dask-memory-limit": "6GiB", "team": "data"})
        stopped = launch("cpu-3", "happy", team="data")
        launch("other", "happy", team="web")
        ec2.stop_instances(InstanceIds=[stopped])
        # failure scenarios
        launch("lonely-1", "noscheduler")
        launch("lonely-2", "noscheduler", **{"dask-role": "worker"})
        launch("boss-1", "twoschedulers", **{"dask-role": "scheduler"})
        launch("boss-2", "twoschedulers", **{"dask-role": "scheduler"})
        launch("w", "twoschedulers")
        launch("head-np", "nopublic", private_subnet["SubnetId"], **{"dask-role": "scheduler"})
        launch("w-np", "nopublic", private_subnet["SubnetId"])
        launch("head-bad", "badvalue", **{"dask-role": "scheduler"})
        launch("w-bad", "badvalue", **{"dask-gpus": "many"})
        return ids


def _run(endpoint: str, *args: str) -> Result:
    result = CliRunner().invoke(aws_command, [*args, "--endpoint-url", endpoint])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_happy_path_writes_an_inventory_that_passes_check(
    endpoint: str, fleet: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "aws.yml"
    result = _run(
        endpoint, "--tag", "dask-cluster=happy", "--tag", "team=data", "--user", "ubuntu",
        "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"wrote {out}: scheduler head (")
    assert result.stderr.endswith(
        f"3 workers from AWS EC2 {REGION}; next: pydask-deploy check {out}\n"
    )
    check = CliRunner().invoke(main, ["check", str(out)])
    assert check.exit_code == 0, check.output

    inventory = load_inventory(out)
    assert inventory.scheduler.name == "head"
    assert inventory.scheduler.address.startswith("10.")  # private by default
    assert inventory.scheduler.user == "ubuntu"
    assert [w.name for w in inventory.workers] == ["cpu-1", "cpu-2", "gpu-1"]  # not cpu-3, other
    assert inventory.host("gpu-1").vars["dask_worker_gpus"] == 2
    assert inventory.host("cpu-1").vars["dask_worker_nthreads"] == 4
    assert inventory.host("cpu-2").vars["dask_worker_memory_limit"] == "6GiB"
    text = out.read_text()
    assert f"# {fleet['gpu-1']}: t3.large in {REGION}a" in text  # the instance id in a comment
    assert "pydask-deploy inventory aws --tag dask-cluster=happy --tag team=data" in text


def test_public_addresses(endpoint: str, fleet: dict[str, str]) -> None:
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint)
    reply = ec2.describe_instances(InstanceIds=[fleet["head"]])
    public = reply["Reservations"][0]["Instances"][0]["PublicIpAddress"]
    result = _run(endpoint, "--tag", "dask-cluster=happy", "--tag", "team=data",
                  "--address", "public")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"head:\n          ansible_host: {public}\n" in result.stdout


def test_no_public_address_exits_2(endpoint: str, fleet: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "aws.yml"
    result = _run(endpoint, "--tag", "dask-cluster=nopublic", "--address", "public",
                  "-o", str(out))  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: {fleet['head-np']} (head-np) has no public IP address; give it one or use "
        "--address private",
        f"{fleet['w-np']} (w-np) has no public IP address; give it one or use --address private",
    ]
    assert not out.exists()


def test_no_instance_matches_exits_2(endpoint: str, fleet: dict[str, str]) -> None:
    result = _run(endpoint, "--tag", "dask-cluster=happy", "--tag", "team=nobody")
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: no running instance in AWS EC2 {REGION} carries every tag "
        "dask-cluster=happy team=nobody\n"
    )


def test_no_scheduler_exits_2(endpoint: str, fleet: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "aws.yml"
    result = _run(endpoint, "--tag", "dask-cluster=noscheduler", "-o", str(out))
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: no instance in AWS EC2 {REGION} tagged dask-cluster=noscheduler has "
        f"dask-role=scheduler; tag one of {fleet['lonely-1']} (lonely-1), "
        f"{fleet['lonely-2']} (lonely-2)\n"
    )
    assert not out.exists()


def test_two_schedulers_exits_2_naming_both(endpoint: str, fleet: dict[str, str]) -> None:
    result = _run(endpoint, "--tag", "dask-cluster=twoschedulers")
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: 2 instances in AWS EC2 {REGION} have dask-role=scheduler "
        f"({fleet['boss-1']} (boss-1), {fleet['boss-2']} (boss-2)); a cluster has exactly one\n"
    )


def test_bad_tag_value_exits_2(endpoint: str, fleet: dict[str, str]) -> None:
    result = _run(endpoint, "--tag", "dask-cluster=badvalue")
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {fleet['w-bad']} (w-bad): tag 'dask-gpus' must be a whole number >= 0, "
        "got 'many'\n"
    )


def test_malformed_tag_exits_2_without_asking(endpoint: str) -> None:
    result = _run(endpoint, "--tag", "=happy")
    assert result.exit_code == 2
    assert result.stderr == "error: --tag '=happy': the tag key is empty\n"


def test_existing_file_is_kept_without_force(
    endpoint: str, fleet: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "aws.yml"
    out.write_text("mine\n")
    args = ["--tag", "dask-cluster=happy", "--tag", "team=data", "-o", str(out)]
    result = _run(endpoint, *args)
    assert result.exit_code == 2
    assert out.read_text() == "mine\n"
    assert _run(endpoint, *args, "--force").exit_code == 0
    assert "dask_scheduler" in out.read_text()


def test_refused_credentials_exit_2(
    endpoint: str, fleet: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    result = _run(endpoint, "--tag", "dask-cluster=happy")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: AWS EC2 {REGION}: Unable to locate credentials")


def test_unknown_profile_exits_2(endpoint: str) -> None:
    result = _run(endpoint, "--tag", "a=b", "--profile", "nope")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --profile nope: ")


def test_no_region_exits_2(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    result = _run(endpoint, "--tag", "a=b")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: no AWS region: pass --region")


def test_unreachable_endpoint_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    result = _run(closed, "--tag", "a=b")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: AWS EC2 {REGION}: cannot reach the EC2 API: ")
