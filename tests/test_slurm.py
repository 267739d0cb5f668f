"""Tests for pydask_deploy.inventory.generate.slurm and `pydask-deploy inventory slurm`.

The parser runs on recorded sinfo output (tests/data/slurm/). The command runs against a
stand-in `sinfo` first on PATH that replays that output and fails as sinfo fails; with
--login, against a real SSH server on 127.0.0.1 (asyncssh) whose shell finds the stand-in.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
import yaml
from helpers import invoke

from pydask_deploy.errors import UsageError
from pydask_deploy.inventory import load_inventory
from pydask_deploy.inventory.generate.render import render
from pydask_deploy.inventory.generate.slurm import (
    SlurmNode,
    gpu_count,
    node_in_service,
    parse_sinfo,
    plan_partition,
    sinfo_argv,
)
from pydask_deploy.observe import remote

DATA = Path(__file__).parent / "data" / "slurm"
EXECUTABLE = Path(sys.executable).parent / "pydask-deploy"
GPU_IN_SERVICE = ["gpu01", "gpu02", "gpu03", "gpu06", "gpu09"]
GPU_LEFT_OUT = (
    "Left out 4 node(s) not in service "
    "(drained: gpu04; down*: gpu05; draining: gpu07; idle~: gpu08)."
)


# --------------------------------------------------------------------------- parsing


def test_parse_recorded_gpu_partition() -> None:
    nodes = parse_sinfo((DATA / "nodes-gpu.txt").read_text())
    assert [n.name for n in nodes] == [f"gpu{i:02d}" for i in range(1, 10)]
    assert nodes[0] == SlurmNode("gpu01", "gpu01", "mixed", 64, 515000, "gpu:a100:4(S:0-1)")
    assert nodes[5].address == "10.20.0.16"
    assert [n.gpus for n in nodes] == [4, 4, 4, 4, 4, 3, 4, 8, 2]
    assert [n.name for n in nodes if n.in_service] == GPU_IN_SERVICE


def test_parse_recorded_cpu_partition() -> None:
    nodes = parse_sinfo((DATA / "nodes-cpu.txt").read_text())
    assert [(n.name, n.cpus, n.memory_mb, n.gres, n.gpus) for n in nodes] == [
        (f"cn00{i}", 48, 191000, "(null)", 0) for i in range(1, 5)
    ]
    assert all(n.in_service for n in nodes)


def test_parse_tolerates_blank_lines_duplicates_and_missing_numbers() -> None:
    text = "\nn1|N/A|idle|N/A|0+|\nn1|n1|idle|8|100|(null)\n\n"
    (node,) = parse_sinfo(text)
    assert node == SlurmNode("n1", "n1", "idle", None, 0, "(null)")


@pytest.mark.parametrize("line", [1, 2])
def test_parse_rejects_other_output(line: int) -> None:
    text = (DATA / "garbled.txt").read_text().splitlines()[line - 1]
    with pytest.raises(ValueError, match=r"line 1 is not '%N\|%o\|%T\|%c\|%m\|%G': "):
        parse_sinfo(text)


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [
        ("(null)", 0),
        ("", 0),
        ("gpu:2", 2),
        ("gpu:a100:4(S:0-1)", 4),
        ("gpu:(null):8(IDX:0-7)", 8),
        ("gpu:a100:2(S:2,5)", 2),
        ("gpu:v100:2(S:0),gpu:t4:1(S:1)", 3),
        ("gpu:1g.10gb:4,gpu:2g.20gb:2", 6),
        ("gpu:a100:no_consume:4", 4),
        ("gpu:4(S:0-1),mps:400", 4),
        ("shard:8,gpu:2", 2),
        ("mps:100", 0),
        ("gpu", 1),
        ("gpu:a100", 1),
        ("gpu:a100:0", 0),
        ("gpu:2K(S:0-2047)", 2048),
    ],
)
def test_gpu_count(gres: str, gpus: int) -> None:
    assert gpu_count(gres) == gpus


@pytest.mark.parametrize(
    ("state", "in_service"),
    [
        ("idle", True),
        ("mixed", True),
        ("allocated", True),
        ("completing", True),
        ("reserved", True),
        ("planned", True),
        ("mixed-", True),
        ("idle+cloud", True),
        ("IDLE", True),
        ("down", False),
        ("down*", False),
        ("idle*", False),
        ("drained", False),
        ("drained*", False),
        ("draining", False),
        ("mixed+drain", False),
        ("idle~", False),
        ("idle#", False),
        ("idle%", False),
        ("allocated$", False),
        ("idle@", False),
        ("fail", False),
        ("failing", False),
        ("maint", False),
        ("future", False),
        ("inval", False),
        ("unknown", False),
    ],
)
def test_node_in_service(state: str, in_service: bool) -> None:
    assert node_in_service(state) is in_service


# --------------------------------------------------------------------------- deciding


def _gpu_nodes() -> tuple[SlurmNode, ...]:
    return parse_sinfo((DATA / "nodes-gpu.txt").read_text())


def test_plan_partition(tmp_path: Path) -> None:
    spec = plan_partition("gpu", _gpu_nodes(), None, {"ansible_user": "me"}, "made", "here")
    assert spec.scheduler.name == "gpu01"  # the first node in service
    assert [w.name for w in spec.workers] == GPU_IN_SERVICE
    assert spec.warnings == (GPU_LEFT_OUT,)
    by_name = {w.name: w for w in spec.workers}
    assert by_name["gpu06"].address == "10.20.0.16"
    assert by_name["gpu06"].vars == {"dask_worker_gpus": 3}
    assert by_name["gpu01"].comment == "64 CPUs, 515000 MB memory, GRES gpu:a100:4(S:0-1); mixed"
    path = tmp_path / "gpu.yml"
    path.write_text(render(spec))
    inventory = load_inventory(path)
    assert inventory.scheduler.name == "gpu01"
    assert [w.name for w in inventory.workers] == GPU_IN_SERVICE
    assert inventory.dask_vars("gpu09")["dask_worker_gpus"] == 2
    assert inventory.host("gpu06").address == "10.20.0.16"


def test_plan_partition_chosen_scheduler() -> None:
    spec = plan_partition("gpu", _gpu_nodes(), "gpu06", {}, "made", "here")
    assert spec.scheduler.name == "gpu06"
    assert spec.scheduler.vars == {"dask_worker_gpus": 3}


@pytest.mark.parametrize(
    ("scheduler", "fragment"),
    [
        ("login1", "--scheduler 'login1' is not a node of partition 'gpu' (its nodes: gpu[01-09])"),
        ("gpu04", "--scheduler 'gpu04' is drained, not in service; choose one of gpu[01-03,06,09]"),
    ],
)
def test_plan_partition_rejects_scheduler(scheduler: str, fragment: str) -> None:
    with pytest.raises(UsageError) as caught:
        plan_partition("gpu", _gpu_nodes(), scheduler, {}, "made", "here")
    assert fragment in str(caught.value)


def test_plan_partition_with_no_node_in_service() -> None:
    nodes = parse_sinfo((DATA / "nodes-retired.txt").read_text())
    with pytest.raises(UsageError) as caught:
        plan_partition("retired", nodes, None, {}, "made", "here")
    assert str(caught.value) == (
        "Slurm partition 'retired' has no node in service "
        "(down*: old01; drained: old02; drained*: old03)"
    )


# --------------------------------------------------------------------------- a stand-in sinfo


@dataclass
class FakeSinfo:
    """A directory holding a stand-in `sinfo`, and the log of the arguments it was given."""

    bin: Path
    log: Path

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def _write_sinfo(directory: Path, controller_down: bool = False) -> FakeSinfo:
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "calls.log"
    failing = (
        f'cat "{DATA}/controller-down.stderr" >&2\nexit 1\n' if controller_down else ""
    )  # what sinfo does when slurmctld cannot be reached
    script = directory / "sinfo"
    script.write_text(
        f"""#!/bin/sh
# A stand-in for Slurm's sinfo: replays output recorded in {DATA}.
echo "$*" >> "{log}"
{failing}partition=""
format=""
while [ $# -gt 0 ]; do
    case "$1" in
        -p|--partition) partition="$2"; shift ;;
        -o|--format) format="$2"; shift ;;
    esac
    shift
done
if [ "$format" = "%R" ]; then
    cat "{DATA}/partitions.txt"
elif [ -f "{DATA}/nodes-$partition.txt" ]; then
    cat "{DATA}/nodes-$partition.txt"
fi
# sinfo filters partitions, it does not check them: an unknown one prints nothing, exit 0.
exit 0
"""
    )
    script.chmod(0o755)
    return FakeSinfo(directory, log)


@pytest.fixture
def sinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSinfo:
    fake = _write_sinfo(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{fake.bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    return fake


def test_cli_slurm_prints_the_inventory(sinfo: FakeSinfo, tmp_path: Path) -> None:
    code, stdout, stderr = invoke("inventory", "slurm", "--partition", "gpu", "--user", "me")
    assert code == 0, stderr
    assert stderr == f"warning: {GPU_LEFT_OUT}\n"
    assert sinfo.calls() == [" ".join(sinfo_argv("gpu")[1:])]
    assert sinfo_argv("gpu") == [
        "sinfo", "--noheader", "--Node", "--partition", "gpu", "--format", "%N|%o|%T|%c|%m|%G"
    ]  # fmt: skip
    lines = stdout.splitlines()
    assert lines[1] == "#   pydask-deploy inventory slurm --partition gpu --user me"
    header = " ".join(line.lstrip("# ") for line in lines if line.startswith("#"))
    assert GPU_LEFT_OUT in header
    assert "        # 32 CPUs, 257000 MB memory, GRES gpu:v100:2(S:0),gpu:t4:1(S:1); idle" in lines
    assert any("as sinfo reported them here" in line for line in lines)
    data = yaml.safe_load(stdout)
    assert data["all"]["vars"] == {"ansible_user": "me"}
    assert list(data["all"]["children"]["dask_scheduler"]["hosts"]) == ["gpu01"]
    assert list(data["all"]["children"]["dask_workers"]["hosts"]) == GPU_IN_SERVICE
    path = tmp_path / "gpu.yml"
    path.write_text(stdout)
    assert [w.name for w in load_inventory(path).workers] == GPU_IN_SERVICE


def test_cli_slurm_writes_a_file(sinfo: FakeSinfo, tmp_path: Path) -> None:
    code, stdout, stderr = invoke(
        "inventory", "slurm", "-p", "cpu", "--scheduler", "cn003", "-o", "inv/cpu.yml"
    )
    assert code == 0, stderr
    assert stdout == ""
    assert (
        stderr
        == "wrote inv/cpu.yml: 1 scheduler, 4 workers; next: pydask-deploy check inv/cpu.yml\n"
    )
    inventory = load_inventory(tmp_path / "inv" / "cpu.yml")
    assert inventory.scheduler.name == "cn003"
    assert [w.name for w in inventory.workers] == ["cn001", "cn002", "cn003", "cn004"]
    assert all("dask_worker_resources" not in w.vars for w in inventory.workers)
    code, _, stderr = invoke("inventory", "slurm", "-p", "cpu", "-o", "inv/cpu.yml")
    assert code == 2
    assert stderr == "error: inv/cpu.yml already exists; pass --force to overwrite it\n"
    assert len(sinfo.calls()) == 1  # refused before asking Slurm


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--partition", "nosuch"],
            "error: Slurm has no partition 'nosuch'; partitions: cpu, gpu, retired, debug\n",
        ),
        (["--partition", "debug"], "error: Slurm partition 'debug' has no nodes\n"),
        (
            ["--partition", "retired"],
            "error: Slurm partition 'retired' has no node in service "
            "(down*: old01; drained: old02; drained*: old03)\n",
        ),
        (
            ["--partition", "gpu", "--scheduler", "gpu05"],
            "error: --scheduler 'gpu05' is down*, not in service; choose one of gpu[01-03,06,09]\n",
        ),
        (["--partition", "gpu; rm -rf /"], "error: --partition 'gpu; rm -rf /' is not a Slurm"),
        (["--partition", "gpu", "--login", "a b"], "error: --login 'a b': a jump host is written"),
    ],
)
def test_cli_slurm_errors_exit_2_and_write_nothing(
    sinfo: FakeSinfo, tmp_path: Path, args: list[str], message: str
) -> None:
    code, stdout, stderr = invoke("inventory", "slurm", *args, "-o", "out.yml")
    assert code == 2
    assert stdout == ""
    assert stderr.startswith(message)
    assert not (tmp_path / "out.yml").exists()


def test_cli_slurm_controller_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _write_sinfo(tmp_path / "bin", controller_down=True)
    monkeypatch.setenv("PATH", f"{fake.bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = invoke("inventory", "slurm", "--partition", "gpu", "-o", "out.yml")
    assert code == 2
    assert stdout == ""
    assert stderr == (
        "error: `sinfo --noheader --Node --partition gpu --format '%N|%o|%T|%c|%m|%G'` failed "
        "(exit 1): slurm_load_partitions: Unable to contact slurm controller (connect failure)\n"
    )
    assert not (tmp_path / "out.yml").exists()


def test_cli_slurm_without_sinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    code, _, stderr = invoke("inventory", "slurm", "--partition", "gpu", "-o", "out.yml")
    assert code == 2
    assert stderr.startswith("error: sinfo is not installed here (not on PATH); run this on a")
    assert "--login HOST" in stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "empty"]


def test_the_installed_command_reads_slurm(tmp_path: Path) -> None:
    fake = _write_sinfo(tmp_path / "bin")
    env = {**os.environ, "PATH": f"{fake.bin}{os.pathsep}{os.environ['PATH']}"}
    output = tmp_path / "gpu.yml"
    done = subprocess.run(
        [str(EXECUTABLE), "inventory", "slurm", "--partition", "gpu", "-o", str(output)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"warning: {GPU_LEFT_OUT}",
        f"wrote {output}: 1 scheduler, 5 workers; next: pydask-deploy check {output}",
    ]
    assert [w.name for w in load_inventory(output).workers] == GPU_IN_SERVICE
    unknown = subprocess.run(
        [str(EXECUTABLE), "inventory", "slurm", "--partition", "nosuch", "-o",
         str(tmp_path / "nosuch.yml")],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert unknown.returncode == 2
    assert "Slurm has no partition 'nosuch'" in unknown.stderr
    assert not (tmp_path / "nosuch.yml").exists()


# --------------------------------------------------------------------------- --login over SSH


@dataclass
class LoginHost:
    """An SSH server on 127.0.0.1 that runs commands in a shell (sinfo is the stand-in)."""

    port: int
    key: Path
    remote_path: list[str]  # the PATH its shell runs commands with


@pytest.fixture
def login_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoginHost]:
    fake = _write_sinfo(tmp_path / "login-bin")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))  # known_hosts and ssh config of this test only
    # Nothing local answers for sinfo: it must run on the login host.
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", f"{tmp_path / 'empty'}{os.pathsep}{os.defpath}")
    assert shutil.which("sinfo") is None
    monkeypatch.chdir(tmp_path)

    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    key_path = tmp_path / "id_ed25519"
    client_key.write_private_key(str(key_path))
    login = LoginHost(0, key_path, [str(fake.bin), os.defpath])

    async def run_command(process: asyncssh.SSHServerProcess[str]) -> None:
        shell = await asyncio.create_subprocess_shell(
            str(process.command),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": os.pathsep.join(login.remote_path)},
        )
        out, err = await shell.communicate()
        process.stdout.write(out.decode())
        process.stderr.write(err.decode())
        process.exit(shell.returncode or 0)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> asyncssh.SSHAcceptor:
        return await asyncssh.create_server(
            asyncssh.SSHServer,
            "127.0.0.1",
            0,
            server_host_keys=[host_key],
            authorized_client_keys=asyncssh.import_authorized_keys(
                client_key.export_public_key().decode()
            ),
            process_factory=run_command,
        )

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    login.port = server.sockets[0].getsockname()[1]
    public = host_key.export_public_key().decode().strip()
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{login.port} {public}\n")
    try:
        yield login
    finally:
        server.close()
        asyncio.run_coroutine_threadsafe(server.wait_closed(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_cli_slurm_runs_sinfo_on_the_login_host(login_host: LoginHost, tmp_path: Path) -> None:
    spec = f"127.0.0.1:{login_host.port}"
    code, _, stderr = invoke("inventory", "slurm",
        "--partition", "gpu", "--login", spec, "--user", "me", "--key", str(login_host.key),
        "-o", "gpu.yml",
    )  # fmt: skip
    assert code == 0, stderr
    text = (tmp_path / "gpu.yml").read_text()
    assert f"as sinfo reported them on {spec}" in text
    inventory = load_inventory(tmp_path / "gpu.yml")
    assert [w.name for w in inventory.workers] == GPU_IN_SERVICE
    # The nodes are reached through the login host, as the same user, with the same key.
    proxy = remote.ssh_options(str(inventory.scheduler.vars["ansible_ssh_common_args"]))
    assert proxy["proxycommand"] == (
        f"ssh -W %h:%p -q -i {login_host.key} -p {login_host.port} me@127.0.0.1"
    )
    assert inventory.scheduler.vars["ansible_ssh_private_key_file"] == str(login_host.key)
    # --jump none: the nodes are reached directly.
    code, _, stderr = invoke(
        "inventory",
        "slurm",
        "-p",
        "gpu",
        "--login",
        spec,
        "--key",
        str(login_host.key),
        "--jump",
        "none",
    )
    assert code == 0, stderr


def test_cli_slurm_login_without_sinfo(login_host: LoginHost, tmp_path: Path) -> None:
    login_host.remote_path[:] = [os.defpath]
    spec = f"127.0.0.1:{login_host.port}"
    code, _, stderr = invoke(
        "inventory", "slurm", "-p", "gpu", "--login", spec, "--key", str(login_host.key)
    )
    assert code == 2
    assert stderr.startswith(
        f"error: sinfo is not on the PATH of non-interactive SSH commands on {spec}"
    )


def test_cli_slurm_login_unknown_host_key(login_host: LoginHost, tmp_path: Path) -> None:
    (Path(os.environ["HOME"]) / ".ssh" / "known_hosts").write_text("")
    spec = f"127.0.0.1:{login_host.port}"
    code, _, stderr = invoke(
        "inventory", "slurm", "-p", "gpu", "--login", spec, "--key", str(login_host.key)
    )
    assert code == 2
    assert stderr.startswith(f"error: cannot reach the login host {spec}: host key not verifiable")
    assert stderr.endswith(
        f"; log in once with `ssh -p {login_host.port} 127.0.0.1` to record its host key\n"
    )


def test_cli_slurm_login_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # Nothing listens on port 1 of the loopback address: the connection is refused at once.
    code, stdout, stderr = invoke(
        "inventory", "slurm", "-p", "gpu", "--login", "127.0.0.1:1", "-o", "gpu.yml"
    )
    assert code == 2
    assert stdout == ""
    assert stderr == "error: cannot reach the login host 127.0.0.1:1: connection refused\n"
    assert list(tmp_path.iterdir()) == []
