"""Tests for pydask_deploy.inventory.generate (spec, render, static) and `inventory static`.

Every generated inventory goes back through ``load_inventory``: what ``render`` writes is
what ``check`` and ``apply`` read.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest
import yaml
from helpers import invoke

from pydask_deploy.cli import main
from pydask_deploy.errors import InventoryError, UsageError
from pydask_deploy.inventory import load_inventory
from pydask_deploy.inventory.generate.render import render, write_inventory
from pydask_deploy.inventory.generate.spec import (
    ClusterSpec,
    HostEntry,
    connection_vars,
    valid_host_name,
)
from pydask_deploy.inventory.generate.static import expand, static_spec
from pydask_deploy.observe import remote

EXECUTABLE = Path(sys.executable).parent / "pydask-deploy"
WHEN = datetime(2026, 3, 4, 5, 6, tzinfo=UTC)


def _spec(*workers: HostEntry, scheduler: HostEntry | None = None, **extra: object) -> ClusterSpec:
    return ClusterSpec(
        scheduler=scheduler or HostEntry("head"),
        workers=workers,
        common_vars=extra.pop("common_vars", {"ansible_user": "deploy"}),  # type: ignore[arg-type]
        source="pydask-deploy inventory test",
        **extra,  # type: ignore[arg-type]
    )


def _write(tmp_path: Path, text: str, name: str = "inventory.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("node[01-04,20]", ["node01", "node02", "node03", "node04", "node20"]),
        ("gpu[1-4].lab", ["gpu1.lab", "gpu2.lab", "gpu3.lab", "gpu4.lab"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("b,a,c[1-2]", ["b", "a", "c1", "c2"]),  # order as given, not sorted
        ("10.0.0.[1-3]", ["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
        (" head.example.org ", ["head.example.org"]),
        ("x[1-3],x2", ["x1", "x2", "x3", "x2"]),  # duplicates are the caller's to report
    ],
)
def test_expand(spec: str, expected: list[str]) -> None:
    assert expand(spec) == expected


def test_expand_sixteen_nodes() -> None:
    names = expand("node[01-16]")
    assert len(names) == 16
    assert names[0] == "node01"
    assert names[-1] == "node16"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("node[01-", "unbalanced brackets"),
        ("node[5-1]", "start > stop"),
        ("node[]", "bad range"),
        ("node[01:16]", "Ansible's node[01:16] is written node[01-16] here"),
        (",,", "names no host"),
        ("a b", "'a b', which cannot be used"),
        ("-x", "'-x', which cannot be used"),
        ("a..b", "cannot be used"),
        ("n[1-2].", "'n1.', which cannot be used"),
        ("head:2222", "cannot be used"),
        ("node[1-200000]", "range too large"),
    ],
)
def test_expand_rejects(spec: str, fragment: str) -> None:
    with pytest.raises(UsageError) as caught:
        expand(spec)
    assert caught.value.exit_code == 2
    assert fragment in str(caught.value)
    assert repr(spec) in str(caught.value)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("node01", True),
        ("gpu-1.lab.example.org", True),
        ("worker_3", True),
        ("192.0.2.10", True),
        ("a" * 63 + ".org", True),
        ("a" * 64 + ".org", False),
        ("node01-", False),
        ("node[01:02]", False),
        ("fe80::1", False),
        ("", False),
    ],
)
def test_valid_host_name(name: str, ok: bool) -> None:
    assert valid_host_name(name) is ok


# --------------------------------------------------------------------------- static_spec


def test_static_scheduler_among_the_hosts_runs_a_worker_too(tmp_path: Path) -> None:
    spec = static_spec(["node[01-04]"], "node01", "deploy", None, None, "made here")
    assert spec.scheduler == HostEntry("node01")
    assert [w.name for w in spec.workers] == ["node01", "node02", "node03", "node04"]
    inventory = load_inventory(_write(tmp_path, render(spec)))
    assert inventory.scheduler.name == "node01"
    assert [w.name for w in inventory.workers] == ["node01", "node02", "node03", "node04"]
    assert inventory.scheduler.user == "deploy"


def test_static_scheduler_elsewhere_runs_only_the_scheduler(tmp_path: Path) -> None:
    spec = static_spec(["gpu[1-2].lab"], "head[1]", None, None, None, "made here")
    assert spec.scheduler.name == "head1"
    text = render(spec)
    assert "To run a worker on head1 too" in text
    inventory = load_inventory(_write(tmp_path, text))
    assert inventory.scheduler.name == "head1"
    assert [w.name for w in inventory.workers] == ["gpu1.lab", "gpu2.lab"]


@pytest.mark.parametrize(
    ("specs", "scheduler", "fragment"),
    [
        (
            ["node[1-3]", "node2"],
            "node1",
            "host 'node2' is listed twice: by 'node[1-3]' and by 'node2'",
        ),
        (["node[1-3],node1"], "node1", "host 'node1' is listed twice: in 'node[1-3],node1'"),
        (["node[1-3]"], "node[1-2]", "--scheduler 'node[1-2]' must name one host; it names 2"),
        (["node[1-3]"], ",", "--scheduler ',' names no host"),
        (["node[1-3]"], "", "--scheduler '' is empty"),
        (["node[1-3]"], "head[", "--scheduler 'head[' is not a valid host range"),
        ([], "node1", "at least one host"),
    ],
)
def test_static_rejects(specs: list[str], scheduler: str, fragment: str) -> None:
    with pytest.raises(UsageError) as caught:
        static_spec(specs, scheduler, None, None, None, "x")
    assert fragment in str(caught.value)


# --------------------------------------------------------------------------- connection_vars


def test_connection_vars(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("not really a key\n")
    found = connection_vars("deploy", str(key), "ops@bastion.example.org:2222")
    assert found["ansible_user"] == "deploy"
    assert found["ansible_ssh_private_key_file"] == str(key)
    # The same ProxyCommand remote.jump_ssh_args makes, which ssh_options reads back.
    expected = remote.jump_ssh_args(remote.Jump("bastion.example.org", "ops", 2222), str(key))
    assert found["ansible_ssh_common_args"] == expected
    options = remote.ssh_options(str(found["ansible_ssh_common_args"]))
    assert "ops@bastion.example.org" in options["proxycommand"]
    assert "ansible_become" not in found  # see connection_vars: it would override become: false
    assert connection_vars(None, None, None) == {}
    assert connection_vars(None, None, "none") == {}


@pytest.mark.parametrize(
    ("user", "key", "jump", "fragment"),
    [
        ("de ploy", None, None, "--user 'de ploy'"),
        ("me@host", None, None, "--user 'me@host'"),
        (None, "/no/such/key", None, "--key /no/such/key: no such file"),
        (None, "", None, "--key ''"),
        (None, None, "bad host", "--jump 'bad host'"),
        (None, None, "bastion:99999", "--jump 'bastion:99999'"),
        (None, None, "@bastion", "--jump '@bastion'"),
    ],
)
def test_connection_vars_rejects(
    user: str | None, key: str | None, jump: str | None, fragment: str
) -> None:
    with pytest.raises(UsageError) as caught:
        connection_vars(user, key, jump)
    assert caught.value.exit_code == 2
    assert fragment in str(caught.value)


# --------------------------------------------------------------------------- render


def test_render_round_trips_with_comments_and_vars(tmp_path: Path) -> None:
    spec = _spec(
        HostEntry("gpu01", "10.0.0.11", {"dask_worker_resources": {"GPU": 4}}, "64 CPUs; mixed"),
        HostEntry("gpu02", None, {}, "i-0abc: m5.large in us-east-1a"),
        scheduler=HostEntry("head", "10.0.0.1", comment="the head node"),
        common_vars={
            "ansible_user": "deploy",
            "ansible_ssh_common_args": remote.jump_ssh_args(remote.Jump("login1", "me")),
        },
        notes=("instances matched tags dask=prod in eu-west-1",),
        warnings=("Left out 1 node(s) not in service (drained: gpu03).",),
    )
    text = render(spec, "inventory/prod.yml", now=WHEN)
    lines = text.splitlines()
    assert lines[0].startswith("# A Dask cluster inventory written by pydask-deploy ")
    assert "2026-03-04 05:06 UTC" in lines[0]
    assert lines[1] == "#   pydask-deploy inventory test"
    assert "# instances matched tags dask=prod in eu-west-1" in lines
    assert "# Left out 1 node(s) not in service (drained: gpu03)." in lines
    assert "#   pydask-deploy check inventory/prod.yml    # validate it; no SSH" in lines
    assert (
        "#   pydask-deploy apply inventory/prod.yml    # converge every host into the cluster"
        in lines
    )
    assert "        # 64 CPUs; mixed" in lines
    assert "        # i-0abc: m5.large in us-east-1a" in lines
    assert "        # the head node" in lines
    inventory = load_inventory(_write(tmp_path, text))
    assert inventory.scheduler.address == "10.0.0.1"
    gpu01, gpu02 = inventory.workers
    assert (gpu01.name, gpu01.address, gpu02.address) == ("gpu01", "10.0.0.11", "gpu02")
    assert inventory.dask_vars(gpu01)["dask_worker_resources"] == {"GPU": 4}
    # The ProxyCommand survives YAML quoting: status and logs read it back.
    target = remote.ssh_target(gpu02)
    assert remote.ssh_options(str(gpu02.vars["ansible_ssh_common_args"]))["proxycommand"] == (
        "ssh -W %h:%p -q me@login1"
    )
    assert target.user == "deploy"


def test_render_host_in_both_groups_is_defined_once(tmp_path: Path) -> None:
    worker = HostEntry("alpha", "10.1.0.1", {"dask_worker_resources": {"GPU": 2}}, "a GPU box")
    spec = _spec(worker, HostEntry("beta", "10.1.0.2"), scheduler=HostEntry("alpha"))
    text = render(spec)
    data = yaml.safe_load(text)
    groups = data["all"]["children"]
    assert groups["dask_scheduler"]["hosts"] == {
        "alpha": {"ansible_host": "10.1.0.1", "dask_worker_resources": {"GPU": 2}}
    }
    assert groups["dask_workers"]["hosts"] == {"alpha": None, "beta": {"ansible_host": "10.1.0.2"}}
    assert text.count("# a GPU box") == 1
    assert "alpha:  # defined under dask_scheduler above" in text
    inventory = load_inventory(_write(tmp_path, text))
    assert inventory.scheduler.name == "alpha"
    assert [w.name for w in inventory.workers] == ["alpha", "beta"]
    assert inventory.dask_vars("alpha")["dask_worker_resources"] == {"GPU": 2}


def test_render_scheduler_only(tmp_path: Path) -> None:
    text = render(_spec(common_vars={}))
    assert "  vars:" not in text
    inventory = load_inventory(_write(tmp_path, text))
    assert inventory.scheduler.name == "head"
    assert inventory.workers == ()


def test_render_comments_cannot_inject_yaml(tmp_path: Path) -> None:
    spec = ClusterSpec(
        scheduler=HostEntry("head", comment="one\nall:\n  vars: {dask_tls: false}"),
        workers=(HostEntry("w1"),),
        common_vars={},
        source="made\rwith\nall: broken",
        notes=("a\x00b\nc",),
    )
    text = render(spec)
    for line in text.splitlines():
        assert line.startswith(("#", "all:", " ")), line
    inventory = load_inventory(_write(tmp_path, text))
    assert "dask_tls" not in inventory.scheduler.vars


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (_spec(HostEntry("w1"), HostEntry("w1")), "host 'w1' is listed twice among the workers"),
        (_spec(HostEntry("bad name")), "host name 'bad name' cannot be used"),
        (_spec(scheduler=HostEntry("node[1:2]")), "host name 'node[1:2]' cannot be used"),
        (
            _spec(HostEntry("head", "10.0.0.2"), scheduler=HostEntry("head", "10.0.0.1")),
            "host 'head' has two addresses",
        ),
    ],
)
def test_render_rejects(spec: ClusterSpec, fragment: str) -> None:
    with pytest.raises(UsageError) as caught:
        render(spec)
    assert fragment in str(caught.value)


# --------------------------------------------------------------------------- write_inventory


def test_write_inventory_writes_a_valid_file(tmp_path: Path) -> None:
    output = tmp_path / "inventory" / "prod.yml"  # the directory is created
    text = write_inventory(_spec(HostEntry("w1")), output)
    assert output.read_text(encoding="utf-8") == text
    assert load_inventory(output).workers[0].name == "w1"
    assert oct(output.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert sorted(p.name for p in output.parent.iterdir()) == ["prod.yml"]  # no temporary left


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_write_inventory_refuses_to_overwrite(tmp_path: Path) -> None:
    output = tmp_path / "prod.yml"
    output.write_text("precious\n")
    with pytest.raises(UsageError) as caught:
        write_inventory(_spec(HostEntry("w1")), output)
    assert caught.value.exit_code == 2
    assert f"{output} already exists; pass --force to overwrite it" in str(caught.value)
    assert output.read_text() == "precious\n"
    write_inventory(_spec(HostEntry("w1")), output, force=True)
    assert load_inventory(output).workers[0].name == "w1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prod.yml"]


def test_write_inventory_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        write_inventory(_spec(HostEntry("w1")), tmp_path, force=True)


def test_write_inventory_never_writes_an_invalid_inventory(tmp_path: Path) -> None:
    bad = _spec(HostEntry("w1", vars={"dask_worker_nthreads": "eight"}))
    output = tmp_path / "prod.yml"
    with pytest.raises(InventoryError) as caught:
        write_inventory(bad, output)
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert f"the generated inventory for {output} is not valid; nothing was written" in message
    assert "`dask_worker_nthreads` must be a positive integer, got 'eight'" in message
    assert f"{output}:" in message  # the problem names the file it was meant for
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InventoryError):
        write_inventory(bad, None)  # printing validates too
    with pytest.raises(InventoryError):
        write_inventory(bad, tmp_path / "new" / "prod.yml")
    assert list(tmp_path.iterdir()) == []  # not even the directory


def test_write_inventory_writes_into_a_pipe_and_leaves_it_one(tmp_path: Path) -> None:
    # `-o /dev/null --force`: a rename would put a file where the device node was
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received: list[str] = []
    reader = threading.Thread(
        target=lambda: received.append(pipe.read_text(encoding="utf-8")), daemon=True
    )
    reader.start()
    text = write_inventory(_spec(HostEntry("w1")), pipe, force=True)
    reader.join(timeout=10)
    assert received == [text]
    assert stat.S_ISFIFO(pipe.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_a_preamble_opens_the_file_above_the_header() -> None:
    spec = _spec(HostEntry("w1"), preamble=("Written by a test; rewritten on every run.",))
    lines = render(spec).splitlines()
    assert lines[:2] == ["# Written by a test; rewritten on every run.", "#"]
    assert lines[2].startswith("# A Dask cluster inventory written by pydask-deploy")
    assert not render(_spec(HostEntry("w1"))).startswith("# Written")


def test_write_inventory_sees_group_vars_beside_it(tmp_path: Path) -> None:
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text("dask_worker_nworkers: 0\n")
    with pytest.raises(InventoryError, match="dask_worker_nworkers"):
        write_inventory(_spec(HostEntry("w1")), tmp_path / "prod.yml")
    assert not (tmp_path / "prod.yml").exists()


# --------------------------------------------------------------------------- the command


def test_cli_static_prints_the_inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = invoke("inventory",
        "static", "node[01-16]", "--scheduler", "node01", "--user", "deploy",
        "--jump", "me@login.example.org",
    )  # fmt: skip
    assert code == 0, stderr
    assert stderr == ""
    assert (
        "#   pydask-deploy inventory static 'node[01-16]' --scheduler node01 --user deploy"
        in stdout
    )
    inventory = load_inventory(_write(tmp_path, stdout))
    assert len(inventory.workers) == 16
    assert inventory.scheduler.name == "node01"
    assert list(tmp_path.iterdir()) == [tmp_path / "inventory.yml"]


def test_cli_static_writes_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = invoke(
        "inventory", "static", "node[01-16]", "--scheduler", "head", "-o", "inventory/prod.yml"
    )
    assert code == 0, stderr
    assert stdout == ""
    assert stderr == (
        "wrote inventory/prod.yml: 1 scheduler, 16 workers; "
        "next: pydask-deploy check inventory/prod.yml\n"
    )
    text = Path("inventory/prod.yml").read_text()
    assert "#   pydask-deploy check inventory/prod.yml" in text
    assert "-o inventory/prod.yml" in text.splitlines()[1]
    # Again: refused, the file is kept; with --force it is replaced.
    code, _, stderr = invoke(
        "inventory", "static", "x[1-2]", "--scheduler", "x1", "-o", "inventory/prod.yml"
    )
    assert code == 2
    assert stderr == "error: inventory/prod.yml already exists; pass --force to overwrite it\n"
    assert Path("inventory/prod.yml").read_text() == text
    code, _, _ = invoke(
        "inventory", "static", "x[1-2]", "--scheduler", "x1", "-o", "inventory/prod.yml", "--force"
    )
    assert code == 0
    assert [w.name for w in load_inventory("inventory/prod.yml").workers] == ["x1", "x2"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["node[01-", "--scheduler", "node01"], "host spec 'node[01-' is not a valid host range"),
        (["node[5-1]", "--scheduler", "node5"], "start > stop"),
        (["node[1-2]", "--scheduler", "node[1-2]"], "--scheduler 'node[1-2]' must name one host"),
        (["node[1-2]", "node2", "--scheduler", "node1"], "host 'node2' is listed twice"),
        (["node[1-2]", "--scheduler", "node1", "--jump", "a b"], "--jump 'a b'"),
        (["node[1-2]", "--scheduler", "node1", "--key", "missing"], "--key missing: no such file"),
    ],
)
def test_cli_static_errors_exit_2_and_write_nothing(
    args: list[str], fragment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = invoke("inventory", "static", *args, "-o", "prod.yml")
    assert code == 2
    assert stdout == ""
    assert stderr.startswith("error: ")
    assert fragment in stderr
    assert list(tmp_path.iterdir()) == []


def test_every_inventory_option_has_help() -> None:
    group = main.commands["inventory"]
    assert isinstance(group, click.Group)
    assert group.help and "Slurm partition" in group.help
    assert {"static", "slurm"} <= set(group.commands)
    for command in group.commands.values():
        assert command.help, command.name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{command.name} {param.opts}"


def test_the_installed_command_writes_an_inventory_check_accepts(tmp_path: Path) -> None:
    output = tmp_path / "prod.yml"
    made = subprocess.run(
        [str(EXECUTABLE), "inventory", "static", "rack[1-2]-n[01-04]", "--scheduler", "head",
         "--user", "deploy", "-o", str(output)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout == ""
    assert made.stderr.startswith(f"wrote {output}: 1 scheduler, 8 workers; next: ")
    checked = subprocess.run(
        [str(EXECUTABLE), "check", str(output)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "workers:   8 (rack1-n01 ... rack2-n04)" in checked.stdout
    refused = subprocess.run(
        [str(EXECUTABLE), "inventory", "static", "node[]", "--scheduler", "h", "-o",
         str(tmp_path / "other.yml")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "host spec 'node[]' is not a valid host range" in refused.stderr
    assert not (tmp_path / "other.yml").exists()
