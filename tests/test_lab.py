"""Unit tests of the lab's pure logic: configuration, inventory writing, argument handling."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pydask_deploy import lab as lab_module
from pydask_deploy.cli import main
from pydask_deploy.errors import LabUsageError
from pydask_deploy.lab.rootfs import own_release, sources_for_release


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


# ------------------------------------------------------------------ releases and reboots


def test_releases_default_to_bookworm_and_name_every_host_or_one() -> None:
    assert lab_module.host_releases(3, []) == ("bookworm",) * 3
    assert lab_module.host_releases(2, ["trixie"]) == ("trixie", "trixie")
    assert lab_module.host_releases(3, ["h3=trixie"]) == ("bookworm", "bookworm", "trixie")
    assert lab_module.host_releases(3, ["trixie", "1=bookworm"]) == (
        "bookworm",
        "trixie",
        "trixie",
    )


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["jessie"], "--release jessie: unknown release 'jessie'; the lab knows bookworm, trixie"),
        (["h4=trixie"], "--release h4=trixie: no host 'h4' in a lab of 3 (h1 to h3)"),
        (["node1=trixie"], "--release node1=trixie: no host 'node1'"),
        (["trixie", "bookworm"], "--release bookworm: every host was already given"),
        (["h2=trixie", "2=bookworm"], "--release 2=bookworm: h2 was already given trixie"),
    ],
)
def test_bad_releases_are_refused(specs: list[str], message: str) -> None:
    with pytest.raises(LabUsageError, match=re.escape(message)):
        lab_module.host_releases(3, specs)


def test_lab_up_with_a_bad_release_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYDASK_LAB_DIR", str(tmp_path / "state"))
    result = CliRunner().invoke(main, ["lab", "up", "--hosts", "2", "--release", "h3=trixie"])
    assert result.exit_code == 2
    assert "no host 'h3' in a lab of 2" in result.output
    assert not (tmp_path / "state").exists()


def test_docker_hosts_stay_on_bookworm(tmp_path: Path) -> None:
    config = lab_module.LabConfig(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    with pytest.raises(LabUsageError, match="--docker hosts run bookworm only, not trixie"):
        lab_module.lab_up(2, True, tmp_path / "i.yml", config, print, ("bookworm", "trixie"))


def test_the_rootfs_cache_is_per_release(tmp_path: Path) -> None:
    config = lab_module.LabConfig(cache_dir=tmp_path)
    assert config.rootfs == tmp_path / "rootfs-bookworm"
    assert config.rootfs_of("trixie") == tmp_path / "rootfs-trixie"


def test_the_inventory_says_how_the_lab_was_made(tmp_path: Path) -> None:
    lab = make_lab(3, tmp_path)
    hosts = (*lab.hosts[:2], replace(lab.hosts[2], release="trixie"))
    path = tmp_path / "lab.yml"
    lab_module.write_inventory(replace(lab, hosts=hosts), path)
    assert "pydask-deploy lab up --hosts 3 --release h3=trixie" in path.read_text()
    trixie = tuple(replace(h, release="trixie") for h in lab.hosts)
    lab_module.write_inventory(replace(lab, hosts=trixie), path)
    assert "pydask-deploy lab up --hosts 3 --release trixie\n" in path.read_text()


_DEB822 = """\
Types: deb
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main
"""


def test_another_release_is_fetched_from_this_machines_mirrors() -> None:
    text = sources_for_release(_DEB822, "bookworm", "trixie", "debian.sources")
    assert "Suites: trixie trixie-updates\n" in text
    assert "Suites: trixie-security\n" in text
    assert text.count("URIs: http://mirror.invalid/debian") == 2
    assert "bookworm" not in text
    one_line = (
        "deb http://mirror.invalid/debian bookworm main\n"
        "deb [signed-by=/k.gpg arch=amd64] http://mirror.invalid/debian-security "
        "bookworm-security main\n"
    )
    assert sources_for_release(one_line, "bookworm", "trixie", "sources.list").splitlines() == [
        "deb http://mirror.invalid/debian trixie main",
        "deb [signed-by=/k.gpg arch=amd64] http://mirror.invalid/debian-security "
        "trixie-security main",
    ]
    with pytest.raises(LabUsageError, match="none of its suites names this machine's release"):
        sources_for_release(_DEB822.replace("bookworm", "stable"), "bookworm", "trixie", "x")


def test_own_release_reads_os_release(tmp_path: Path) -> None:
    (tmp_path / "os-release").write_text('NAME="Debian GNU/Linux"\nVERSION_CODENAME=bookworm\n')
    assert own_release(tmp_path / "os-release") == "bookworm"
    assert own_release(tmp_path / "missing") == ""


def test_lab_reboot_of_an_unknown_host_names_the_lab_s_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = make_lab(3, tmp_path)
    lab_module._write_record(lab)
    monkeypatch.setenv("PYDASK_LAB_DIR", str(lab.config.state_dir))
    result = CliRunner().invoke(main, ["lab", "reboot", "h2", "h7"])
    assert result.exit_code == 2
    assert "no lab host 'h7'; the lab has h1, h2, h3" in result.output


def test_lab_reboot_without_a_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYDASK_LAB_DIR", str(tmp_path / "state"))
    result = CliRunner().invoke(main, ["lab", "reboot", "h1"])
    assert result.exit_code == 2
    assert "no lab is up" in result.output


def test_a_record_from_before_releases_reads_as_bookworm(tmp_path: Path) -> None:
    lab = make_lab(1, tmp_path)
    lab_module._write_record(lab)
    data = json.loads(lab.config.record_path.read_text())
    del data["hosts"][0]["release"]
    lab.config.record_path.write_text(json.dumps(data))
    read = lab_module.read_lab(lab.config)
    assert read is not None and read.hosts[0].release == "bookworm"


# ------------------------------------------------------------------ shared directories


def test_a_share_is_mounted_at_its_own_path_unless_told(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    assert lab_module.parse_share(str(data)) == lab_module.Share(str(data), str(data))
    assert lab_module.parse_share(f"{data}:/srv/data/") == lab_module.Share(str(data), "/srv/data")
    assert lab_module.parse_share(f"{data}:/srv/data").spec == f"{data}:/srv/data"
    assert lab_module.parse_share(str(data)).spec == str(data)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{tmp}/nope", "'{tmp}/nope' is not a directory on this machine"),
        ("{tmp}/file", "'{tmp}/file' is not a directory on this machine"),
        (":/srv/data", "'' is not a directory on this machine"),
        ("{tmp}:srv", "the mount point must be an absolute path other than /, got 'srv'"),
        ("{tmp}:/", "the mount point must be an absolute path other than /, got '/'"),
    ],
)
def test_a_bad_share_is_refused(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "file").write_text("")
    spec, message = spec.format(tmp=tmp_path), message.format(tmp=tmp_path)
    with pytest.raises(LabUsageError, match=re.escape(f"--share {spec}: {message}")):
        lab_module.parse_share(spec)


def test_lab_up_with_a_bad_share_exits_2_before_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYDASK_LAB_DIR", str(tmp_path / "state"))
    result = CliRunner().invoke(main, ["lab", "up", "--share", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "is not a directory on this machine" in result.output
    assert not (tmp_path / "state").exists()


def test_the_record_and_the_inventory_keep_the_shares(tmp_path: Path) -> None:
    share = lab_module.Share(str(tmp_path), "/srv/share")
    lab = replace(make_lab(2, tmp_path), shares=(share,))
    lab_module.write_record(lab)
    assert lab_module.read_lab(lab.config) == lab
    path = tmp_path / "lab.yml"
    lab_module.write_inventory(lab, path)
    text = " ".join(w for w in path.read_text().split() if w != "#")  # comments unwrapped
    assert f"pydask-deploy lab up --hosts 2 --share {tmp_path}:/srv/share" in text
    assert f"Every host mounts {tmp_path} of this machine at /srv/share" in text


def test_lab_down_says_when_it_removed_what_a_crashed_lab_left(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("lab down removes a lab's leftovers as root only")
    state = tmp_path / "state"
    monkeypatch.setenv("PYDASK_LAB_DIR", str(state))
    monkeypatch.setenv("PYDASK_LAB_BRIDGE", "pdnone0")
    (state / "hosts" / "h1").mkdir(parents=True)  # a host directory, no record of the lab
    config = lab_module.LabConfig.from_env()
    assert lab_module.has_leftovers(config)
    result = CliRunner().invoke(main, ["lab", "down"])
    assert result.exit_code == 0, result.output
    assert "removed what a lab left behind" in result.output
    assert not lab_module.has_leftovers(config)
