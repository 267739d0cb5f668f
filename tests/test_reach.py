"""Reaching hosts as users find them: password-only first contact (bootstrap), a non-root
deploy user with sudo, and hosts that accept SSH only from a jump host (login node)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from distributed import Client
from helpers import cli, ssh
from lab_factory import LabFactory

from pydask_deploy import lab as lab_module
from pydask_deploy.cli import main
from pydask_deploy.deploy import bootstrap
from pydask_deploy.inventory import Host, load_inventory
from pydask_deploy.observe import connection, remote, scheduler

# --------------------------------------------------------------------------- pure parts


def _host(**variables: object) -> Host:
    return Host("w1", "10.0.0.2", 22, "deploy", variables)


def test_a_proxycommand_jump_is_read_back_with_its_own_key_and_port() -> None:
    jump = remote.Jump.parse("login@hpc.example.org:2222")
    args = remote.jump_ssh_args(jump, "/keys/deploy key", check_host_keys=False)
    target = remote.ssh_target(_host(ansible_ssh_common_args=args))
    assert target.jump == remote.SSHTarget(
        "hpc.example.org", 2222, "login", "/keys/deploy key", False, 5.0
    )
    assert target.address == "10.0.0.2" and target.check_host_keys is True


def test_a_proxyjump_chain_is_read_hop_by_hop() -> None:
    target = remote.ssh_target(_host(ansible_ssh_common_args="-J a@first,second:2200"))
    assert target.jump is not None and target.jump.address == "second"
    assert target.jump.port == 2200 and target.jump.key_file is None
    assert target.jump.jump is not None and target.jump.jump.user == "a"
    assert remote.ssh_target(_host(ansible_ssh_common_args="-o ProxyJump=none")).jump is None
    # a ProxyCommand that is not an ssh -W hop is not ours to read
    assert (
        remote.ssh_target(_host(ansible_ssh_common_args="-o ProxyCommand='nc %h %p'")).jump is None
    )


@pytest.mark.parametrize("spec", ["", "a@", "host:", "host:99999", "us er@host", "@host"])
def test_a_bad_jump_host_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="jump host"):
        remote.Jump.parse(spec)


def test_reads_run_through_sudo_unless_root_or_told_not_to() -> None:
    assert remote.ssh_target(_host()).command("journalctl") == "sudo -n journalctl"
    assert remote.ssh_target(_host(ansible_become=False)).command("journalctl") == "journalctl"
    root = Host("w1", "10.0.0.2", 22, "root", {})
    assert remote.ssh_target(root).command("journalctl") == "journalctl"


def test_install_command_adds_the_key_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    keys = home / ".ssh" / "authorized_keys"
    keys.write_text("ssh-rsa AAAAother someone")  # no final newline
    line = "ssh-ed25519 AAAAC3Nzabc deploy@laptop"
    run = lambda: subprocess.run(  # noqa: E731
        ["sh", "-c", bootstrap.install_command(line)],
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert run() == "installed"
    assert run() == "present"
    assert keys.read_text().splitlines() == ["ssh-rsa AAAAother someone", line]
    assert keys.stat().st_mode & 0o777 == 0o600


def test_sudo_verdicts() -> None:
    assert bootstrap.sudo_verdict("root", 1, None) == "root"
    assert bootstrap.sudo_verdict("deploy", 0, None) == "passwordless"
    assert bootstrap.sudo_verdict("deploy", 1, 0) == "needs a password"
    assert bootstrap.sudo_verdict("deploy", 1, 1) == "refused"


def test_bootstrap_without_a_key_exits_2_before_asking(tmp_path: Path) -> None:
    inventory = tmp_path / "inv.yml"
    inventory.write_text(
        "all:\n  vars: {ansible_ssh_private_key_file: /nonexistent/key}\n"
        "  children:\n    dask_scheduler:\n      hosts:\n        s1: {ansible_host: 10.0.0.1}\n"
    )
    done = CliRunner().invoke(main, ["bootstrap", str(inventory), "--ask-pass"], input="x\n")
    assert done.exit_code == 2
    assert "no such key file '/nonexistent/key'" in done.output
    assert "password" not in done.output.lower().split("error")[0]


# --------------------------------------------------------------------------- in the lab

PASSWORD = "lab-password-7"
_DEPLOY_USER = (
    "id deploy >/dev/null 2>&1 || useradd -m -s /bin/bash deploy; "
    f"echo 'deploy:{PASSWORD}' | chpasswd; "
    "echo 'deploy ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/deploy; "
    "chmod 440 /etc/sudoers.d/deploy; "
    "printf 'PasswordAuthentication yes\\n' > /etc/ssh/sshd_config.d/10-password.conf; "
    "systemctl reload ssh"
)


@dataclass(frozen=True)
class ReachLab:
    lab: lab_module.Lab
    key: Path  # the deploy key, not yet on any host
    directory: Path

    def address(self, name: str) -> str:
        return next(h.address for h in self.lab.hosts if h.name == name)


@pytest.fixture(scope="module")
def reach_lab(
    lab_factory: LabFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReachLab]:
    """Three hosts whose `deploy` user (passwordless sudo) accepts only a password so far."""
    directory = tmp_path_factory.mktemp("reach")
    key = directory / "deploy_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "deploy", "-f", str(key)],
        check=True,
    )
    with lab_factory.boot(3, inventory=directory / "lab.yml") as (lab, _):
        for host in lab.hosts:
            ssh(lab, host.name, _DEPLOY_USER)
        yield ReachLab(lab, key, directory)


def _key_login_works(reach: ReachLab, address: str, jump: remote.SSHTarget | None = None) -> bool:
    target = remote.SSHTarget(
        address, user="deploy", key_file=str(reach.key), check_host_keys=False, jump=jump
    )
    result = asyncio.run(remote.run_on_hosts({"h": target}, "true"))["h"]
    return isinstance(result, remote.CommandResult) and result.exit_status == 0


def _write_inventory(
    reach: ReachLab,
    name: str,
    scheduler: dict[str, object],
    workers: dict[str, object],
    ssh_args: str = "",
    **extra: object,
) -> Path:
    """An inventory for the deploy user and key, without host key checks (fresh lab keys)."""
    no_checks = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
    data = {
        "all": {
            "vars": {
                "ansible_user": "deploy",
                "ansible_ssh_private_key_file": str(reach.key),
                "ansible_ssh_common_args": f"{no_checks} {ssh_args}".strip(),
                **extra,
            },
            "children": {
                "dask_scheduler": {"hosts": scheduler},
                "dask_workers": {"hosts": workers},
            },
        }
    }
    path = reach.directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _bootstrap_inventory(reach: ReachLab) -> Path:
    hosts = {h.name: {"ansible_host": h.address} for h in reach.lab.hosts}
    workers = {n: v for n, v in hosts.items() if n != "h1"}
    return _write_inventory(reach, "bootstrap.yml", {"h1": hosts["h1"]}, workers)


@pytest.mark.lab
def test_bootstrap_installs_the_deploy_key_on_password_only_hosts(reach_lab: ReachLab) -> None:
    reach = reach_lab
    assert not _key_login_works(reach, reach.address("h2"))  # only the password works yet
    inventory = str(_bootstrap_inventory(reach))
    runner = CliRunner()

    wrong = runner.invoke(main, ["bootstrap", inventory, "-k", "--json"], input="wrong\n")
    assert wrong.exit_code == 1, wrong.output
    report = json.loads(wrong.stdout)
    assert {h["host"]: h["error"] for h in report["hosts"]} == dict.fromkeys(
        ("h1", "h2", "h3"), "authentication failed (wrong password, or password login is off)"
    )
    assert not _key_login_works(reach, reach.address("h2"))

    first = runner.invoke(
        main, ["bootstrap", inventory, "--ask-pass", "--json"], input=f"{PASSWORD}\n"
    )
    assert first.exit_code == 0, first.output
    hosts = json.loads(first.stdout)["hosts"]
    assert [h["key"] for h in hosts] == ["installed"] * 3
    assert {h["sudo"] for h in hosts} == {"passwordless"}
    assert all(h["python"].startswith("3.") and h["key_login"] and h["ok"] for h in hosts)
    assert all(_key_login_works(reach, h.address) for h in reach.lab.hosts)

    again = runner.invoke(main, ["bootstrap", inventory, "--ask-pass"], input=f"{PASSWORD}\n")
    assert again.exit_code == 0, again.output
    assert again.stdout.count("present") == 3 and "installed" not in again.stdout
    assert ssh(reach.lab, "h2", "grep -c deploy /home/deploy/.ssh/authorized_keys").strip() == "1"

    # a user sudo refuses is reported, not hidden
    ssh(reach.lab, "h3", "rm /etc/sudoers.d/deploy")
    try:
        args = ["bootstrap", inventory, "--limit", "h3", "--json"]
        checked = runner.invoke(main, args)  # with the key alone, sudo's refusal shows too
        assert checked.exit_code == 1, checked.output
        assert json.loads(checked.stdout)["hosts"][0]["sudo"] in ("refused", "needs a password")
        refused = runner.invoke(main, [*args, "-k"], input=f"{PASSWORD}\n")
        assert refused.exit_code == 1, refused.output
        (h3,) = json.loads(refused.stdout)["hosts"]
        assert h3["sudo"] == "refused" and "may not use sudo" in h3["error"]
    finally:
        ssh(reach.lab, "h3", _DEPLOY_USER)


def _jump_inventory(reach: ReachLab) -> Path:
    """h2 schedules and works, h3 works; both are reached by name through h1 only.

    No ansible_host: the names resolve on the login node, as on many HPC sites.
    """
    bastion = remote.Jump(reach.address("h1"), "deploy")
    return _write_inventory(
        reach,
        "behind-login.yml",
        {"h2": None},
        {"h2": None, "h3": None},
        remote.jump_ssh_args(bastion, str(reach.key), check_host_keys=False),
        ansible_python_interpreter="/usr/bin/python3",
        dask_wheelhouse=str(reach.lab.config.wheelhouse),
    )


@pytest.mark.lab
def test_a_sudo_user_deploys_through_a_jump_host(reach_lab: ReachLab) -> None:
    reach = reach_lab
    if not _key_login_works(reach, reach.address("h1")):  # run alone: first contact by hand
        for host in reach.lab.hosts:
            public = reach.key.with_suffix(".pub").read_text().strip()
            ssh(reach.lab, host.name, bootstrap.install_command(public).replace("~", "~deploy"))
            ssh(reach.lab, host.name, "chown -R deploy: ~deploy/.ssh")
    bastion = reach.address("h1")
    # deploy (the tool's user) only from the login node; the lab's root channel stays open
    # for this test's own checks
    allow = f"AllowUsers *@{bastion} root@{reach.lab.config.gateway}"
    for name in ("h2", "h3"):
        ssh(reach.lab, name, f"echo '{allow}' > /etc/ssh/sshd_config.d/05-jump.conf")
        ssh(reach.lab, name, "systemctl reload ssh")
    assert not _key_login_works(reach, reach.address("h2"))  # not from the controller
    jump = remote.SSHTarget(bastion, user="deploy", key_file=str(reach.key), check_host_keys=False)
    assert _key_login_works(reach, "h2", jump=jump)  # by name, through the login node

    inventory = str(_jump_inventory(reach))
    # bootstrap's check (the key alone) goes through the login node too (a fabric gateway)
    checked = CliRunner().invoke(main, ["bootstrap", inventory, "--json"])
    assert checked.exit_code == 0, checked.output
    assert [h["key"] for h in json.loads(checked.stdout)["hosts"]] == ["present", "present"]

    applied = cli("apply", inventory, "--json")
    assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr[-3000:]
    assert ssh(reach.lab, "h2", "systemctl is-active dask-scheduler dask-worker").split() == [
        "active",
        "active",
    ]
    assert ssh(reach.lab, "h3", "ps -o user= -C dask | sort -u").split() == ["dask"]

    verified = cli("verify", inventory)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    status = cli("status", inventory, "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["ok"] is True, report
    assert report["scheduler"]["address"].startswith("tls://h2:")

    logs = cli("logs", inventory, "-n", "200")
    assert logs.returncode == 0, logs.stderr
    assert "Register worker" in logs.stdout  # journalctl through sudo -n on h2

    # retire_workers and the registration waits go through the forwarded scheduler port
    upgraded = cli(
        "upgrade", inventory, "--batch", "1", "--set", "dask_worker_nthreads=2", "--json"
    )
    assert upgraded.returncode == 0, upgraded.stdout[-3000:] + upgraded.stderr[-3000:]
    batches = json.loads(upgraded.stdout)["batches"]
    assert [b["outcome"] for b in batches] == ["upgraded", "upgraded"]

    loaded = load_inventory(inventory)
    with (
        connection.scheduler_route(loaded) as dial,
        Client(dial, security=scheduler.client_security(loaded), timeout=30) as client,  # type: ignore[no-untyped-call]
    ):
        assert dial.startswith("tls://127.0.0.1:")
        assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        assert sorted(w["nthreads"] for w in workers) == [2, 2]


def test_the_forward_a_user_runs_goes_through_the_jump_host(tmp_path: Path) -> None:
    inventory = tmp_path / "inv.yml"
    args = remote.jump_ssh_args(remote.Jump("login.hpc", "me"), "/k/id")
    inventory.write_text(
        f"all:\n  vars:\n    ansible_user: me\n    ansible_ssh_private_key_file: /k/id\n"
        f"    ansible_ssh_common_args: {json.dumps(args)}\n"
        "  children:\n    dask_scheduler:\n      hosts:\n        node01:\n"
    )
    loaded = load_inventory(inventory)
    assert connection.jump_host(loaded) == "me@login.hpc"
    assert connection.ssh_forward_command(loaded, 8786, "tls://node01:8786") == (
        "ssh -N -J me@login.hpc -i /k/id -L 8786:node01:8786 me@node01"
    )
