"""Inventories from cloud tags: the shared decisions (pure), each provider's mapping from its
recorded API JSON, and the GCP, Azure and OpenStack commands end to end against stub APIs on
127.0.0.1 serving those recordings (AWS runs against moto's server: tests/test_aws.py)."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from click.testing import CliRunner, Result

from pydask_deploy.cli import main
from pydask_deploy.cli.cloud import (
    CLOUD_COMMANDS,
    aws_command,
    azure_command,
    gcp_command,
    openstack_command,
)
from pydask_deploy.errors import UsageError
from pydask_deploy.inventory import load_inventory
from pydask_deploy.inventory.generate import aws, azure, gcp, openstack
from pydask_deploy.inventory.generate.cloud import Instance, Listing, cloud_spec, parse_tags
from pydask_deploy.inventory.generate.render import write_inventory

DATA = Path(__file__).parent / "data" / "cloud"


def _json(name: str) -> Any:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def vm(
    id: str,
    role: str | None = None,
    *,
    name: str | None = None,
    state: str = "running",
    private: str | None = "auto",
    public: str | None = None,
    cluster: str = "prod",
    **extra: str,
) -> Instance:
    """An Instance of cluster ``cluster`` with ``dask-role=role``; extra tags as keywords
    (``dask_gpus="2"`` is the tag ``dask-gpus=2``)."""
    tags = {"dask-cluster": cluster, **{k.replace("_", "-"): v for k, v in extra.items()}}
    if role is not None:
        tags["dask-role"] = role
    number = sum(map(ord, id)) % 250 + 1
    return Instance(
        id=id,
        name=name,
        private_ip=f"10.0.0.{number}" if private == "auto" else private,
        public_ip=public,
        state=state,
        tags=tags,
        zone="zone-a",
        machine_type="m.large",
    )


def spec_of(*instances: Instance, tags: dict[str, str] | None = None, **kwargs: Any) -> Any:
    listing = Listing(tuple(instances), "Test cloud")
    return cloud_spec(listing, tags or {"dask-cluster": "prod"}, source="test", **kwargs)


def usage_error(*instances: Instance, **kwargs: Any) -> str:
    with pytest.raises(UsageError) as caught:
        spec_of(*instances, **kwargs)
    return str(caught.value)


# --------------------------------------------------------------------------- --tag values


def test_parse_tags_reads_key_value_pairs() -> None:
    assert parse_tags(["a=1", "b=x=y", "c=", "a=1"]) == {"a": "1", "b": "x=y", "c": ""}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["dask-cluster"], "--tag 'dask-cluster' must be KEY=VALUE"),
        (["=prod"], "--tag '=prod': the tag key is empty"),
        (["env=a", "env=b"], "--tag env=a and --tag env=b: an instance cannot carry both"),
    ],
)
def test_parse_tags_names_the_bad_value(values: list[str], expected: str) -> None:
    with pytest.raises(UsageError, match="^" + expected.replace("(", r"\(")):
        parse_tags(values)


# --------------------------------------------------------------------------- cloud_spec


def test_cluster_of_a_scheduler_and_three_workers() -> None:
    spec = spec_of(
        vm("i-3", name="w-c"),
        vm("i-1", "scheduler", name="head"),
        vm("i-2", "worker", name="w-b", dask_gpus="2", dask_nthreads="4"),
        vm("i-4", name="w-a", dask_memory_limit="16GiB", dask_nworkers="2"),
        user="ubuntu",
    )
    assert spec.scheduler.name == "head"
    assert spec.scheduler.address == vm("i-1").private_ip
    assert spec.scheduler.comment == "i-1: m.large in zone-a"
    assert [w.name for w in spec.workers] == ["w-a", "w-b", "w-c"]  # sorted by name
    by_name = {w.name: dict(w.vars) for w in spec.workers}
    assert by_name == {
        "w-a": {"dask_worker_memory_limit": "16GiB", "dask_worker_nworkers": 2},
        "w-b": {"dask_worker_gpus": 2, "dask_worker_nthreads": 4},
        "w-c": {},
    }
    assert dict(spec.common_vars) == {"ansible_user": "ubuntu"}
    assert spec.notes == (
        "4 running instance(s) in Test cloud tagged dask-cluster=prod; private addresses. "
        "Run the command again when instances come and go.",
    )
    assert spec.warnings == ()


def test_public_addresses_on_request() -> None:
    spec = spec_of(vm("i-1", "scheduler", public="34.1.1.1"), vm("i-2", public="34.1.1.2"),
                   address="public")  # fmt: skip
    assert [spec.scheduler.address, spec.workers[0].address] == ["34.1.1.1", "34.1.1.2"]


def test_missing_public_address_is_named() -> None:
    message = usage_error(
        vm("i-1", "scheduler", public="34.1.1.1"), vm("i-2", name="w"), address="public"
    )
    assert message == "i-2 (w) has no public IP address; give it one or use --address private"


def test_stopped_and_untagged_instances_are_left_out() -> None:
    spec = spec_of(
        vm("i-1", "scheduler"),
        vm("i-2"),
        vm("i-3", state="stopped"),
        vm("i-4", cluster="dev"),
    )
    assert [w.name for w in spec.workers] == ["i-2"]


def test_every_tag_must_match() -> None:
    spec = spec_of(
        vm("i-1", "scheduler", team="a"),
        vm("i-2", team="a"),
        vm("i-3", team="b"),
        vm("i-4"),
        tags={"dask-cluster": "prod", "team": "a"},
    )
    assert [w.name for w in spec.workers] == ["i-2"]


def test_no_match_says_where_and_which_are_stopped() -> None:
    message = usage_error(vm("i-1", "scheduler", state="stopped"), vm("i-2", cluster="dev"))
    assert message == (
        "no running instance in Test cloud carries every tag dask-cluster=prod (i-1 is stopped)"
    )


def test_no_scheduler_lists_the_candidates() -> None:
    message = usage_error(vm("i-1", name="a"), vm("i-2", "worker"))
    assert message == (
        "no instance in Test cloud tagged dask-cluster=prod has dask-role=scheduler; "
        "tag one of i-1 (a), i-2"
    )


def test_two_schedulers_are_both_named() -> None:
    message = usage_error(vm("i-1", "scheduler", name="a"), vm("i-2", "scheduler"), vm("i-3"))
    assert message == (
        "2 instances in Test cloud have dask-role=scheduler (i-1 (a), i-2); "
        "a cluster has exactly one"
    )


@pytest.mark.parametrize("value", ["scheduler-worker", "scheduler,worker", "Worker Scheduler"])
def test_scheduler_can_be_a_worker_too(value: str) -> None:
    spec = spec_of(vm("i-1", value, name="head", dask_gpus="1"), vm("i-2"))
    assert [w.name for w in spec.workers] == ["head", "i-2"]
    assert dict(spec.workers[0].vars) == {"dask_worker_gpus": 1}
    inventory = _round_trip(spec)
    assert inventory.scheduler.name == "head"
    assert {w.name for w in inventory.workers} == {"head", "i-2"}


def test_scheduler_only_ignores_worker_tags_and_says_so() -> None:
    spec = spec_of(vm("i-1", "scheduler", name="head", dask_gpus="1"), vm("i-2"))
    assert dict(spec.scheduler.vars) == {}
    assert spec.warnings == (
        "head is the scheduler only; its tags dask-gpus are ignored "
        "(dask-role=scheduler-worker makes it a worker too)",
    )


def test_role_tag_can_be_renamed() -> None:
    spec = spec_of(vm("i-1", team_role="scheduler"), vm("i-2"), role_tag="team-role")
    assert spec.scheduler.name == "i-1"


@pytest.mark.parametrize(
    ("tag", "value", "what"),
    [
        ("dask-role", "schedular", "must be scheduler, worker or scheduler-worker"),
        ("dask-gpus", "two", "must be a whole number >= 0"),
        ("dask-gpus", "-1", "must be a whole number >= 0"),
        ("dask-nthreads", "1.5", "must be a whole number >= 0 (0: one per core)"),
        ("dask-nworkers", "0", "must be a whole number >= 1"),
        ("dask-memory-limit", "lots", "must be 'auto', a size such as 8GiB or 0.5"),
        ("dask-memory-limit", "1.5", "must be 'auto', a size such as 8GiB or 0.5"),
    ],
)
def test_bad_tag_value_names_instance_tag_and_value(tag: str, value: str, what: str) -> None:
    bad = Instance("i-9", "w9", "10.0.0.9", None, "running", {"dask-cluster": "prod", tag: value})
    message = usage_error(vm("i-1", "scheduler"), bad)
    assert message == f"i-9 (w9): tag {tag!r} {what}, got {value!r}"


def test_gpus_and_nworkers_on_one_instance_are_refused() -> None:
    both = vm("i-2", dask_gpus="2", dask_nworkers="2")
    message = usage_error(vm("i-1", "scheduler"), both)
    assert message == (
        "i-2: tags 'dask-gpus' and 'dask-nworkers' cannot both be set: a GPU instance runs "
        "one worker per GPU"
    )


def test_every_problem_is_reported_at_once() -> None:
    message = usage_error(vm("i-1", dask_gpus="x"), vm("i-2", dask_nworkers="y"))
    assert message.splitlines() == [
        "no instance in Test cloud tagged dask-cluster=prod has dask-role=scheduler; "
        "tag one of i-1, i-2",
        "i-1: tag 'dask-gpus' must be a whole number >= 0, got 'x'",
        "i-2: tag 'dask-nworkers' must be a whole number >= 1, got 'y'",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", "auto"), ("8GiB", "8GiB"), ("48gib", "48gib"), ("0.5", 0.5), ("4000", 4000)],
)
def test_memory_limit_values(value: str, expected: object) -> None:
    spec = spec_of(vm("i-1", "scheduler"), vm("i-2", dask_memory_limit=value))
    assert dict(spec.workers[0].vars) == {"dask_worker_memory_limit": expected}


def test_zero_gpus_adds_no_resource() -> None:
    spec = spec_of(vm("i-1", "scheduler"), vm("i-2", dask_gpus="0"))
    assert dict(spec.workers[0].vars) == {}


def test_host_names_are_made_safe_and_unique() -> None:
    spec = spec_of(
        vm("i-1", "scheduler", name="Dask Scheduler [prod]"),
        vm("i-2", name="asg-worker"),
        vm("i-3", name="asg-worker"),
        vm("i-4", name="  "),
        vm("rg/vm-5", name=None),
    )
    assert spec.scheduler.name == "Dask-Scheduler-prod"
    assert [w.name for w in spec.workers] == ["asg-worker-i-2", "asg-worker-i-3", "i-4", "rg-vm-5"]
    _round_trip(spec)


def test_misspelt_option_tag_is_warned_about() -> None:
    spec = spec_of(vm("i-1", "scheduler"), vm("i-2", name="w", dask_gpu="2"))
    assert spec.warnings == ("i-2 (w): tag 'dask-gpu' is ignored; did you mean 'dask-gpus'?",)


def test_connection_options_become_all_vars(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("not really a key\n")
    spec = spec_of(vm("i-1", "scheduler"), vm("i-2"), user="ec2-user", key_file=str(key),
                   jump="admin@bastion.example.org")  # fmt: skip
    assert spec.common_vars["ansible_user"] == "ec2-user"
    assert spec.common_vars["ansible_ssh_private_key_file"] == str(key)
    assert "bastion.example.org" in str(spec.common_vars["ansible_ssh_common_args"])
    _round_trip(spec)


def _round_trip(spec: Any) -> Any:
    """Write ``spec`` through render and load it back as pydask-deploy will."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "cloud.yml"
        write_inventory(spec, path)
        return load_inventory(path)


# --------------------------------------------------------------------------- recorded JSON


def _rows(found: list[Instance]) -> list[tuple[object, ...]]:
    return [(i.name, i.private_ip, i.public_ip, i.state, i.zone, i.machine_type) for i in found]


def test_aws_mapping_from_recorded_describe_instances() -> None:
    found = aws.instances_from_response([_json("aws_describe_instances.json")])
    assert found == [
        Instance(
            "i-0a1f5e2b3c4d5e6f7", "dask-scheduler", "10.0.1.10", "34.240.1.10", "running",
            {"Name": "dask-scheduler", "dask-cluster": "prod", "dask-role": "scheduler"},
            "eu-west-1a", "m6i.large",
        ),
        Instance(
            "i-0b2f5e2b3c4d5e6f8", "dask worker (gpu)", "10.0.2.11", None, "running",
            {"Name": "dask worker (gpu)", "dask-cluster": "prod", "dask-role": "worker",
             "dask-gpus": "1", "dask-memory-limit": "24GiB"},
            "eu-west-1b", "g5.2xlarge",
        ),
        Instance(
            "i-0c3f5e2b3c4d5e6f9", None, "10.0.1.12", "34.240.1.12", "stopped",
            {"dask-cluster": "prod"}, "eu-west-1a", "m6i.xlarge",
        ),
    ]  # fmt: skip
    assert found[0].tags == {
        "Name": "dask-scheduler",
        "dask-cluster": "prod",
        "dask-role": "scheduler",
    }


def test_aws_filters_ask_for_every_tag_and_running() -> None:
    assert aws.tag_filters({"a": "1", "b": ""}) == [
        {"Name": "tag:a", "Values": ["1"]},
        {"Name": "tag:b", "Values": [""]},
        {"Name": "instance-state-name", "Values": ["running"]},
    ]


def test_gcp_mapping_from_recorded_aggregated_list() -> None:
    pages = [_json(f"gcp_aggregated_instances_page{n}.json") for n in (1, 2)]
    found = gcp.instances_from_pages(pages)
    assert [i.id for i in found] == [f"462014831234567890{n}" for n in (1, 2, 3)]
    assert _rows(found) == [
        (
            "dask-scheduler",
            "10.132.0.2",
            "35.195.10.2",
            "running",
            "europe-west1-b",
            "e2-standard-4",
        ),
        ("dask-gpu-1", "10.132.0.3", "35.195.10.3", "running", "europe-west1-c", "g2-standard-8"),
        ("dask-cpu-1", "10.132.0.4", "35.195.10.4", "running", "europe-west1-c", "n2-highmem-8"),
    ]
    assert found[0].tags == {
        "dask-cluster": "prod",
        "dask-role": "scheduler-worker",
        "dask-nthreads": "4",
    }
    zone = gcp.instances_from_pages([_json("gcp_zone_instances.json")])
    assert [(i.name, i.public_ip, i.state) for i in zone] == [
        ("lab-head", None, "running"),
        ("lab-node", None, "terminated"),
    ]


def test_gcp_label_filter() -> None:
    assert gcp.label_filter({"dask-cluster": "prod", "team": ""}) == (
        '(labels.dask-cluster = "prod") (labels.team = "") (status = "RUNNING")'
    )
    with pytest.raises(UsageError, match=r"^--tag Env=prod: a GCP label key is lower-case"):
        gcp.label_filter({"Env": "prod"})


def test_azure_mapping_from_recorded_lists() -> None:
    found = azure.instances_from_pages(
        [_json("azure_vms_page1.json"), _json("azure_vms_page2.json")],
        [_json("azure_vms_status.json")],
        [_json("azure_nics.json")],
        [_json("azure_public_ips.json")],
    )
    assert [i.id for i in found] == [
        f"dask-prod/{n}" for n in ("dask-sched", "dask-w1", "dask-w2", "dask-w3", "web-1")
    ]
    assert _rows(found) == [
        ("dask-sched", "10.1.0.4", "20.31.0.4", "running", "westeurope-1", "Standard_D4s_v5"),
        ("dask-w1", "10.1.0.5", "20.31.0.5", "running", "westeurope-1", "Standard_NC8as_T4_v3"),
        ("dask-w2", "10.1.0.6", None, "running", "westeurope-1", "Standard_D4s_v5"),
        ("dask-w3", "10.1.0.7", None, "deallocated", "westeurope-1", "Standard_D4s_v5"),
        ("web-1", "10.1.0.8", "20.31.0.8", "running", "westeurope", "Standard_D4s_v5"),
    ]
    assert found[1].tags == {"dask-cluster": "prod", "dask-gpus": "2"}


def test_openstack_mapping_from_recorded_servers() -> None:
    found = openstack.instances_from_servers(_json("openstack_servers_detail.json")["servers"])
    assert _rows(found) == [
        ("dask-head", "192.168.10.5", "172.24.4.50", "running", "nova", "m1.large"),
        ("dask-node-1", "192.168.10.6", None, "running", "gpu-az", "g1.xlarge"),
        ("dask-node-2", "192.168.10.7", "172.24.4.52", "running", "nova", "m1.large"),
        ("build-box", "192.168.10.8", None, "running", "nova", "m1.large"),
    ]
    assert found[0].id == "0b5b8c6e-1f3a-4c2e-9d7a-1a2b3c4d5e01"


# --------------------------------------------------------------------------- stub APIs


@dataclass
class Stub:
    """A small HTTP server on 127.0.0.1 answering GET/POST from ``routes`` (path -> handler
    returning (status, JSON)); every request is recorded."""

    routes: dict[str, Callable[[dict[str, list[str]], dict[str, str]], tuple[int, Any]]]
    requests: list[tuple[str, str, dict[str, list[str]], dict[str, str]]] = field(
        default_factory=list
    )
    url: str = ""

    def paths(self) -> list[str]:
        return [path for _, path, _, _ in self.requests]


@pytest.fixture
def stub() -> Iterator[Stub]:
    found = Stub(routes={})

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query, keep_blank_values=True)
            headers = {k.lower(): v for k, v in self.headers.items()}
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            found.requests.append((self.command, parts.path, query, headers))
            route = found.routes.get(parts.path.rstrip("/") or "/")
            status, body = route(query, headers) if route else (404, {"error": "no route"})
            data = json.dumps(body).replace("https://management.azure.com", found.url)
            data = data.replace("http://openstack.example.test", found.url).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()


def _file(name: str) -> Callable[..., tuple[int, Any]]:
    return lambda query, headers: (200, _json(name))


def _invoke(command: Any, args: list[str]) -> Result:
    result = CliRunner().invoke(command, args)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _check_passes(path: Path) -> None:
    result = _invoke(main, ["check", str(path)])
    assert result.exit_code == 0, result.output


def _closed_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_cloud_commands_are_exported_with_help_on_every_option() -> None:
    assert [c.name for c in CLOUD_COMMANDS] == ["aws", "gcp", "azure", "openstack"]
    for command in CLOUD_COMMANDS:
        assert command.help
        for param in command.params:
            assert getattr(param, "help", None), f"{command.name} {param.name} has no help"


# --------------------------------------------------------------------------- GCP


@pytest.fixture(autouse=True)
def no_metadata_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep credential discovery on this machine: google-auth would otherwise probe the GCE
    metadata server, and openstacksdk read the developer's own clouds.yaml."""
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "no-clouds.yaml"))


@pytest.fixture
def gcp_adc(stub: Stub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stub:
    """Application Default Credentials from a service-account key whose token endpoint is
    the stub: google-auth signs a JWT and trades it for a token, as against Google."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    account = {
        "type": "service_account",
        "project_id": "lab-project",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "inventory@lab-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": f"{stub.url}/token",
    }
    path = tmp_path / "adc.json"
    path.write_text(json.dumps(account))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    for name in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GCLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    stub.routes["/token"] = lambda q, h: (
        200,
        {"access_token": "stub-token", "expires_in": 3600, "token_type": "Bearer"},
    )
    return stub


def _gcp_pages(query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, Any]:
    if headers.get("authorization") != "Bearer stub-token":
        return 401, {"error": {"code": 401, "message": "Request had invalid credentials."}}
    page = "page2" if query.get("pageToken") == ["page-2"] else "page1"
    return 200, _json(f"gcp_aggregated_instances_{page}.json")


def test_gcp_command_writes_a_checked_inventory(gcp_adc: Stub, tmp_path: Path) -> None:
    gcp_adc.routes["/compute/v1/projects/lab-project/aggregated/instances"] = _gcp_pages
    out = tmp_path / "inventory" / "gcp.yml"
    result = _invoke(
        gcp_command,
        ["--tag", "dask-cluster=prod", "--endpoint-url", f"{gcp_adc.url}/compute/v1",
         "--address", "public", "--user", "dask-admin", "-o", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == (
        f"wrote {out}: scheduler dask-scheduler (35.195.10.2), 3 workers from GCP project "
        f"lab-project, all zones; next: pydask-deploy check {out}\n"
    )
    # the ADC flow ran: a JWT traded for a token at the key's token_uri, then two pages
    assert gcp_adc.paths() == [
        "/token",
        "/compute/v1/projects/lab-project/aggregated/instances",
        "/compute/v1/projects/lab-project/aggregated/instances",
    ]
    first_query = gcp_adc.requests[1][2]
    assert first_query["filter"] == ['(labels.dask-cluster = "prod") (status = "RUNNING")']
    assert first_query["returnPartialSuccess"] == ["true"]
    _check_passes(out)
    inventory = load_inventory(out)
    assert inventory.scheduler.address == "35.195.10.2"
    assert {w.name: w.address for w in inventory.workers} == {
        "dask-scheduler": "35.195.10.2",
        "dask-cpu-1": "35.195.10.4",
        "dask-gpu-1": "35.195.10.3",
    }
    assert inventory.host("dask-gpu-1").vars["dask_worker_gpus"] == 1
    assert inventory.host("dask-scheduler").vars["dask_worker_nthreads"] == 4
    assert inventory.host("dask-cpu-1").vars["dask_worker_memory_limit"] == "48gib"
    assert inventory.scheduler.user == "dask-admin"
    text = out.read_text()
    assert "pydask-deploy inventory gcp --tag dask-cluster=prod --address public" in text


def test_gcp_one_zone_to_stdout(gcp_adc: Stub) -> None:
    gcp_adc.routes["/compute/v1/projects/other/zones/europe-west1-d/instances"] = _file(
        "gcp_zone_instances.json"
    )
    result = _invoke(
        gcp_command,
        ["--tag", "dask-cluster=lab", "--project", "other", "--zone", "europe-west1-d",
         "--endpoint-url", f"{gcp_adc.url}/compute/v1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = yaml.safe_load(result.stdout)
    scheduler = written["all"]["children"]["dask_scheduler"]["hosts"]
    assert scheduler == {"lab-head": {"ansible_host": "10.132.0.20"}}
    assert written["all"]["children"]["dask_workers"]["hosts"] in ({}, None)
    assert "returnPartialSuccess" not in gcp_adc.requests[-1][2]


def test_gcp_refused_credentials_exit_2(gcp_adc: Stub, tmp_path: Path) -> None:
    gcp_adc.routes["/compute/v1/projects/lab-project/aggregated/instances"] = lambda q, h: (
        403,
        {"error": {"code": 403, "message": "Required 'compute.instances.list' permission"}},
    )
    out = tmp_path / "gcp.yml"
    result = _invoke(
        gcp_command,
        ["--tag", "a=b", "--endpoint-url", f"{gcp_adc.url}/compute/v1", "-o", str(out)],
    )
    assert result.exit_code == 2
    assert result.stderr == (
        "error: GCP project lab-project, all zones: HTTP 403: Required "
        "'compute.instances.list' permission\n"
    )
    assert not out.exists()


def test_gcp_bad_label_exits_2_before_asking(gcp_adc: Stub) -> None:
    result = _invoke(gcp_command, ["--tag", "Team=Data", "--endpoint-url", gcp_adc.url])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --tag Team=Data: a GCP label key is lower-case")
    assert gcp_adc.requests == []


def test_missing_key_file_exits_2_before_asking(gcp_adc: Stub, tmp_path: Path) -> None:
    key = tmp_path / "nope"
    args = ["--tag", "a=b", "--key", str(key), "--endpoint-url", gcp_adc.url]
    result = _invoke(gcp_command, args)
    assert result.exit_code == 2
    assert result.stderr == f"error: --key {key}: no such file\n"
    assert gcp_adc.requests == []


def test_gcp_unreachable_api_exits_1(gcp_adc: Stub) -> None:
    result = _invoke(gcp_command, ["--tag", "a=b", "--endpoint-url", _closed_port()])
    assert result.exit_code == 1
    assert "cannot reach the Compute API" in result.stderr


def test_gcp_without_credentials_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    result = _invoke(gcp_command, ["--tag", "a=b", "--endpoint-url", _closed_port()])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: no Google credentials:")


# --------------------------------------------------------------------------- Azure

SUBSCRIPTION = "00000000-0000-0000-0000-0000000000a1"


@dataclass
class _Token:
    token: str
    expires_on: int


class _StaticCredential:
    """Stands in for azure-identity's DefaultAzureCredential (not a dev dependency)."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str) -> _Token:
        self.scopes.extend(scopes)
        return _Token("azure-token", int(time.time()) + 3600)


@pytest.fixture
def azure_api(stub: Stub, monkeypatch: pytest.MonkeyPatch) -> Stub:
    credential = _StaticCredential()
    monkeypatch.setattr(azure, "_default_credential", lambda: credential)
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    root = f"/subscriptions/{SUBSCRIPTION}"

    def authorized(name: str) -> Callable[..., tuple[int, Any]]:
        def answer(query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, Any]:
            if headers.get("authorization") != "Bearer azure-token":
                return 401, {"error": {"code": "AuthenticationFailed", "message": "no token"}}
            return 200, _json(name)

        return answer

    def vms(query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, Any]:
        if query.get("statusOnly") == ["true"]:
            return authorized("azure_vms_status.json")(query, headers)
        page = "page2" if query.get("$skiptoken") == ["page2"] else "page1"
        return authorized(f"azure_vms_{page}.json")(query, headers)

    stub.routes.update(
        {
            "/subscriptions": authorized("azure_subscriptions.json"),
            f"{root}/providers/Microsoft.Compute/virtualMachines": vms,
            f"{root}/resourceGroups/dask-prod/providers/Microsoft.Compute/virtualMachines": vms,
            f"{root}/providers/Microsoft.Network/networkInterfaces": authorized("azure_nics.json"),
            f"{root}/providers/Microsoft.Network/publicIPAddresses": authorized(
                "azure_public_ips.json"
            ),
        }
    )
    return stub


def test_azure_command_writes_a_checked_inventory(azure_api: Stub, tmp_path: Path) -> None:
    out = tmp_path / "azure.yml"
    result = _invoke(
        azure_command,
        ["--tag", "dask-cluster=prod", "--resource-group", "dask-prod",
         "--endpoint-url", azure_api.url, "-o", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    where = f"Azure subscription {SUBSCRIPTION}, resource group dask-prod"
    assert result.stderr == (
        f"wrote {out}: scheduler dask-sched (10.1.0.4), 2 workers from {where}; "
        f"next: pydask-deploy check {out}\n"
    )
    root = f"/subscriptions/{SUBSCRIPTION}"
    vms = f"{root}/resourceGroups/dask-prod/providers/Microsoft.Compute/virtualMachines"
    assert azure_api.paths() == [
        "/subscriptions",  # the only subscription these credentials see
        vms,
        vms,  # nextLink
        f"{root}/providers/Microsoft.Compute/virtualMachines",
        f"{root}/providers/Microsoft.Network/networkInterfaces",
        f"{root}/providers/Microsoft.Network/publicIPAddresses",
    ]
    _check_passes(out)
    inventory = load_inventory(out)
    assert {w.name for w in inventory.workers} == {"dask-w1", "dask-w2"}  # w3 is deallocated
    assert inventory.host("dask-w1").vars["dask_worker_gpus"] == 2
    assert inventory.host("dask-w2").vars["dask_worker_nworkers"] == 2


def test_azure_public_address_missing_exits_2(azure_api: Stub, tmp_path: Path) -> None:
    out = tmp_path / "azure.yml"
    result = _invoke(
        azure_command,
        ["--tag", "dask-cluster=prod", "--subscription", SUBSCRIPTION, "--address", "public",
         "--endpoint-url", azure_api.url, "-o", str(out)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr == (
        "error: dask-prod/dask-w2 (dask-w2) has no public IP address; give it one or use "
        "--address private\n"
    )
    assert not out.exists()
    assert "/subscriptions" not in azure_api.paths()  # --subscription given: not looked up


def test_azure_refused_token_exits_2(azure_api: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    class Refusing:
        def get_token(self, *scopes: str) -> Any:
            raise RuntimeError("DefaultAzureCredential failed to retrieve a token")

    monkeypatch.setattr(azure, "_default_credential", Refusing)
    result = _invoke(azure_command, ["--tag", "a=b", "--endpoint-url", azure_api.url])
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: Azure: no Azure credentials: DefaultAzureCredential failed"
    )


def test_azure_several_subscriptions_must_be_chosen(azure_api: Stub) -> None:
    two = _json("azure_subscriptions.json")
    two["value"].append({**two["value"][0], "subscriptionId": "sub-2", "displayName": "Other"})
    azure_api.routes["/subscriptions"] = lambda q, h: (200, two)
    result = _invoke(azure_command, ["--tag", "a=b", "--endpoint-url", azure_api.url])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: pass --subscription or set AZURE_SUBSCRIPTION_ID: these credentials see "
        f"{SUBSCRIPTION} (Dask lab), sub-2 (Other)\n"
    )


def test_azure_unreachable_api_exits_1(azure_api: Stub) -> None:
    args = ["--tag", "a=b", "--subscription", SUBSCRIPTION, "--endpoint-url", _closed_port()]
    result = _invoke(azure_command, args)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: Azure subscription {SUBSCRIPTION}: cannot reach Azure Resource Manager: "
    )


def test_azure_without_azure_identity_gives_the_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "azure.identity", None)
    result = _invoke(azure_command, ["--tag", "a=b"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: `inventory azure` needs azure-identity: pip install 'pydask-deploy[azure]'\n"
    )


# --------------------------------------------------------------------------- OpenStack


@pytest.fixture
def clouds_yaml(stub: Stub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stub:
    """A clouds.yaml entry ``stub`` whose compute endpoint is the stub (no Keystone)."""
    compute = f"{stub.url}/compute/v2.1"
    config = {
        "clouds": {
            "stub": {
                "auth_type": "none",
                "auth": {"endpoint": compute},
                "compute_endpoint_override": compute,
                "region_name": "RegionOne",
            }
        }
    }
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    monkeypatch.delenv("OS_CLOUD", raising=False)
    version = _file("openstack_version.json")
    stub.routes.update(
        {
            "/compute/v2.1": version,
            "/compute/v2.1/servers/detail": _file("openstack_servers_detail.json"),
        }
    )
    return stub


def test_openstack_command_writes_a_checked_inventory(clouds_yaml: Stub, tmp_path: Path) -> None:
    out = tmp_path / "openstack.yml"
    result = _invoke(
        openstack_command, ["--cloud", "stub", "--tag", "dask-cluster=hpc", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        f"wrote {out}: scheduler dask-head (192.168.10.5), 3 workers from OpenStack cloud "
        f"stub region RegionOne; next: pydask-deploy check {out}\n"
    )
    detail = [r for r in clouds_yaml.requests if r[1] == "/compute/v2.1/servers/detail"]
    assert [r[2] for r in detail] == [{"status": ["ACTIVE"]}]
    _check_passes(out)
    inventory = load_inventory(out)
    assert {w.name for w in inventory.workers} == {"dask-head", "dask-node-1", "dask-node-2"}
    assert inventory.host("dask-head").vars["dask_worker_nthreads"] == 8
    assert inventory.host("dask-node-1").vars["dask_worker_gpus"] == 4
    assert inventory.host("dask-node-2").vars["dask_worker_memory_limit"] == "auto"


def test_openstack_public_needs_a_floating_ip(clouds_yaml: Stub) -> None:
    args = ["--cloud", "stub", "--tag", "dask-cluster=hpc", "--address", "public"]
    result = _invoke(openstack_command, args)
    assert result.exit_code == 2
    assert result.stderr == (
        "error: 0b5b8c6e-1f3a-4c2e-9d7a-1a2b3c4d5e02 (dask-node-1) has no public IP address; "
        "give it one or use --address private\n"
    )


def test_openstack_unknown_cloud_exits_2(clouds_yaml: Stub) -> None:
    result = _invoke(openstack_command, ["--cloud", "nope", "--tag", "a=b"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: OpenStack cloud nope: ")
    assert "nope" in result.stderr


def test_openstack_refused_credentials_exit_2(clouds_yaml: Stub) -> None:
    clouds_yaml.routes["/compute/v2.1/servers/detail"] = lambda q, h: (
        401,
        {"error": {"code": 401, "message": "The request you have made requires authentication."}},
    )
    result = _invoke(openstack_command, ["--cloud", "stub", "--tag", "a=b"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: OpenStack cloud stub region RegionOne: ")


# --------------------------------------------------------------------------- shared CLI


@pytest.mark.parametrize("command", CLOUD_COMMANDS, ids=lambda c: c.name)
def test_malformed_tag_exits_2_for_every_provider(command: Any) -> None:
    result = _invoke(command, ["--tag", "dask-cluster"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --tag 'dask-cluster' must be KEY=VALUE, such as dask-cluster=prod\n"
    )


@pytest.mark.parametrize("command", CLOUD_COMMANDS, ids=lambda c: c.name)
def test_tag_is_required(command: Any) -> None:
    result = CliRunner().invoke(command, [])
    assert result.exit_code == 2
    assert "Missing option '--tag'" in result.stderr


@pytest.mark.parametrize(
    ("command", "module", "extra"),
    [
        (aws_command, "boto3", "aws"),
        (gcp_command, "google.auth", "gcp"),
        (openstack_command, "openstack", "openstack"),
    ],
)
def test_missing_sdk_gives_the_install_hint(
    command: Any, module: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    result = _invoke(command, ["--tag", "a=b"])
    assert result.exit_code == 2
    assert result.stderr.endswith(f"pip install 'pydask-deploy[{extra}]'\n")
