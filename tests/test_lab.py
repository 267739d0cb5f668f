"""Unit tests of the lab's pure logic: configuration, inventory writing, argument handling."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pydask_deploy import lab as lab_module
from pydask_deploy.cli import main
from pydask_deploy.errors import LabUsageError


def make_lab(count: int, tmp_path: Path) -> lab_module.Lab:
    config = lab_module.LabConfig(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    hosts = tuple(
        lab_module.LabHost(name=f"h{i}", address=config.address_of(i), index=i)
        for i in range(1, count + 1)
    )
    return lab_module.Lab(config=config, hosts=hosts)


def test_addresses_follow_the_subnet() -> None:
    config = lab_module.LabConfig(subnet=ipaddress.IPv4Network("10.99.5.0/24"))
    assert config.gateway == "10.99.5.1"
    assert config.address_of(1) == "10.99.5.11"
    assert config.address_of(3) == "10.99.5.13"


def test_config_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYDASK_LAB_DIR", str(tmp_path / "s"))
    monkeypatch.setenv("PYDASK_LAB_BRIDGE", "br9")
    monkeypatch.setenv("PYDASK_LAB_SUBNET", "10.77.0.0/24")
    config = lab_module.LabConfig.from_env()
    assert config.state_dir == tmp_path / "s"
    assert config.bridge == "br9"
    assert config.gateway == "10.77.0.1"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("10.77.0.0/28", "must be a /24 or larger"), ("not-a-net", "PYDASK_LAB_SUBNET")],
)
def test_config_rejects_bad_subnet(
    monkeypatch: pytest.MonkeyPatch, value: str, fragment: str
) -> None:
    monkeypatch.setenv("PYDASK_LAB_SUBNET", value)
    with pytest.raises(LabUsageError, match=fragment):
        lab_module.LabConfig.from_env()


def test_inventory_puts_first_host_in_scheduler_and_rest_in_workers(tmp_path: Path) -> None:
    lab = make_lab(3, tmp_path)
    path = tmp_path / "inventory" / "lab.yml"
    lab_module.write_inventory(lab, path)
    text = path.read_text()
    assert text.startswith("# Written by `pydask-deploy lab up`")
    data = yaml.safe_load(text)
    children = data["all"]["children"]
    assert children["dask_scheduler"]["hosts"] == {"h1": {"ansible_host": "10.231.0.11"}}
    assert list(children["dask_workers"]["hosts"]) == ["h2", "h3"]
    all_vars = data["all"]["vars"]
    assert all_vars["ansible_user"] == "root"
    assert all_vars["ansible_ssh_private_key_file"] == str(tmp_path / "cache" / "id_lab")
    assert "StrictHostKeyChecking=no" in all_vars["ansible_ssh_common_args"]
    assert all_vars["dask_wheelhouse"] == str(tmp_path / "cache" / "wheelhouse")


def test_one_host_lab_schedules_and_works_on_the_same_host(tmp_path: Path) -> None:
    data = lab_module.inventory_data(make_lab(1, tmp_path))
    children = data["all"]["children"]  # type: ignore[index]
    assert list(children["dask_scheduler"]["hosts"]) == ["h1"]
    assert list(children["dask_workers"]["hosts"]) == ["h1"]


def test_lab_up_rejects_a_bad_host_count() -> None:
    result = CliRunner().invoke(main, ["lab", "up", "--hosts", "0"])
    assert result.exit_code == 2
    assert "--hosts must be between 1 and" in result.output


def test_lab_up_needs_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(lab_module.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("PYDASK_LAB_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["lab", "up", "--hosts", "2"])
    assert result.exit_code == 2
    assert "needs root" in result.output
    assert not (tmp_path / "lab.json").exists()


def test_lab_up_needs_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab_module.platform, "system", lambda: "Darwin")
    result = CliRunner().invoke(main, ["lab", "up"])
    assert result.exit_code == 2
    assert "needs Linux" in result.output


def test_lab_up_needs_nspawn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab_module.os, "geteuid", lambda: 0)
    real_which = lab_module.shutil.which
    monkeypatch.setattr(
        lab_module.shutil,
        "which",
        lambda tool: None if tool == "systemd-nspawn" else real_which(tool),
    )
    result = CliRunner().invoke(main, ["lab", "up"])
    assert result.exit_code == 2
    assert "`systemd-nspawn` not found" in result.output


def test_lab_down_with_nothing_up_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYDASK_LAB_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PYDASK_LAB_BRIDGE", "pdnone0")
    result = CliRunner().invoke(main, ["lab", "down"])
    assert result.exit_code == 0
    assert "no lab is up" in result.output


def test_lab_ssh_without_a_lab(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYDASK_LAB_DIR", str(tmp_path / "state"))
    result = CliRunner().invoke(main, ["lab", "ssh", "h1", "true"])
    assert result.exit_code == 2
    assert "no lab is up" in result.output


def test_ssh_command_finds_hosts_by_name_number_and_address(tmp_path: Path) -> None:
    lab = make_lab(2, tmp_path)
    lab_module._write_record(lab)
    for spelling in ("h2", "2", "10.231.0.12"):
        argv = lab_module.ssh_command(lab.config, spelling, ["uptime"])
        assert argv[0] == "ssh"
        assert argv[-2:] == ["root@10.231.0.12", "uptime"]
    with pytest.raises(LabUsageError, match="no lab host 'h7'; the lab has h1, h2"):
        lab_module.ssh_command(lab.config, "h7", [])
