"""``upgrade --set``: reading KEY=VALUE and editing the inventory's ``all.vars``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_upgrade import _INVENTORY, _write

from pydask_deploy.errors import UsageError
from pydask_deploy.inventory import load_inventory
from pydask_deploy.inventory.edit import edit_inventory_text, parse_setting, prepare_settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dask_python_packages=[attrs, six]", ("dask_python_packages", ["attrs", "six"])),
        ("dask_version='2026.9.0'", ("dask_version", "2026.9.0")),
        ("dask_worker_nthreads=4", ("dask_worker_nthreads", 4)),
        ("dask_wheelhouse_download=false", ("dask_wheelhouse_download", False)),
        ("dask_worker_resources={GPU: 1}", ("dask_worker_resources", {"GPU": 1})),
    ],
)
def test_parse_setting_reads_the_value_as_yaml(text: str, expected: tuple[str, object]) -> None:
    assert parse_setting(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dask_python_package=[six]", "did you mean `dask_python_packages`"),
        ("no_equals_sign", "KEY=VALUE"),
        ("dask_worker_nthreads=eight", "`dask_worker_nthreads` must be"),
        ("dask_python_packages=[six", "not valid YAML"),
        ("dask_version=2026.9", "quote it"),
    ],
)
def test_parse_setting_rejects_bad_input(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("[", r"\[")):
        parse_setting(text)


def test_edit_keeps_comments_and_replaces_a_block_list() -> None:
    edited, kept = edit_inventory_text(
        _INVENTORY, {"dask_python_packages": ["attrs", "six"], "dask_version": "2026.8.0"}
    )
    assert kept
    assert "    dask_python_packages: [attrs, six]\n" in edited
    assert "      - scikit-learn" not in edited
    assert "    dask_version: 2026.8.0\n" in edited  # a string to YAML, quotes not needed
    for comment in ("# the cluster of the lab", "# lab hosts take root logins", "# extra packages"):
        assert comment in edited
    data = yaml.safe_load(edited)
    assert data["all"]["vars"]["dask_worker_nthreads"] == 2
    assert data["all"]["vars"]["dask_version"] == "2026.8.0"
    assert data["all"]["children"] == yaml.safe_load(_INVENTORY)["all"]["children"]


def test_edit_adds_a_vars_block_when_there_is_none() -> None:
    text = "all:\n  children:\n    dask_scheduler:\n      hosts: {s1: null}\n"
    edited, kept = edit_inventory_text(text, {"dask_worker_nthreads": 3})
    assert kept
    assert yaml.safe_load(edited)["all"]["vars"] == {"dask_worker_nthreads": 3}


def test_edit_keeps_a_flow_style_file_flow_style() -> None:
    text = "{all: {vars: {dask_worker_nthreads: 1}, children: {dask_scheduler: {hosts: {s1: }}}}}\n"
    edited, kept = edit_inventory_text(text, {"dask_worker_nthreads": 3})
    assert kept
    assert edited.startswith("{all: {vars: {dask_worker_nthreads: 3}, children:")
    assert yaml.safe_load(edited)["all"]["vars"] == {"dask_worker_nthreads": 3}


_FLOW_INVENTORY = """\
# groups and hosts as flow mappings, one a line
all:
  vars: {ansible_user: root, dask_worker_nthreads: 1}  # one thread until the upgrade
  children:
    dask_scheduler: {hosts: {s1: {ansible_host: 10.0.0.1}}}  # the head node
    # the workers
    dask_workers: {hosts: {w1: {ansible_host: 10.0.0.2}, w2: {ansible_host: 10.0.0.3}}}
"""


def test_set_keeps_comments_in_a_flow_style_inventory(tmp_path: Path) -> None:
    path = _write(tmp_path / "inv.yml", _FLOW_INVENTORY)
    edit = prepare_settings(path, {"dask_worker_nthreads": 4, "dask_python_packages": ["six"]})
    assert edit.kept_comments
    for comment in ("# groups and hosts", "# one thread until", "# the head node", "# the workers"):
        assert comment in edit.text
    assert "  vars: {ansible_user: root, dask_worker_nthreads: 4, dask_python_packages: [six]}" in (
        edit.text
    )
    assert "    dask_workers: {hosts: {w1: {ansible_host: 10.0.0.2}, w2:" in edit.text
    edit.write()
    inventory = load_inventory(path)
    assert [inventory.dask_vars(w)["dask_worker_nthreads"] for w in ("w1", "w2")] == [4, 4]
    assert inventory.dask_vars("w2")["dask_python_packages"] == ["six"]


def test_comments_inside_a_multi_line_flow_mapping_are_not_claimed_kept() -> None:
    # ruamel.yaml drops comments inside a flow collection that spans lines
    text = "{all: {vars: {dask_worker_nthreads: 1},  # one\n  children: {}}}\n"
    edited, kept = edit_inventory_text(text, {"dask_worker_nthreads": 2})
    assert not kept
    assert yaml.safe_load(edited)["all"]["vars"] == {"dask_worker_nthreads": 2}


_ANCHORED_INVENTORY = """\
# the workers share one machine shape through an anchor
all:
  vars:
    ansible_user: root  # lab logins
    dask_python_packages: &packages [scikit-learn]
  children:
    dask_scheduler:
      vars:
        dask_python_packages: *packages  # the scheduler unpickles what workers hold
      hosts:
        s1: {ansible_host: 10.0.0.1}
    dask_workers:
      hosts:
        w1: &small  # two cores, 4 GB
          ansible_host: 10.0.0.2
          dask_worker_memory_limit: 3GB
        w2:
          <<: *small
          ansible_host: 10.0.0.3
"""


def test_set_keeps_comments_anchors_and_aliases(tmp_path: Path) -> None:
    path = _write(tmp_path / "inv.yml", _ANCHORED_INVENTORY)
    edit = prepare_settings(path, {"dask_worker_nthreads": 2})
    assert edit.kept_comments
    for kept in ("# the workers share", "# lab logins", "# the scheduler unpickles", "# two cores"):
        assert kept in edit.text
    for anchor in ("&packages [scikit-learn]", "*packages", "w1: &small", "<<: *small"):
        assert anchor in edit.text
    assert "    dask_worker_nthreads: 2\n  children:\n" in edit.text
    edit.write()
    inventory = load_inventory(path)
    w2 = inventory.dask_vars("w2")
    assert (w2["dask_worker_nthreads"], w2["dask_worker_memory_limit"]) == (2, "3GB")
    assert inventory.dask_vars("s1")["dask_python_packages"] == ["scikit-learn"]


@pytest.mark.parametrize(
    ("setting", "written"),
    [
        ("dask_python_packages=[attrs, six]", "[attrs, six]"),
        ("dask_python_packages=[]", "[]"),
        ("dask_version='2026.8.0'", "2026.8.0"),  # a string to YAML 1.1 and 1.2 alike
        ("dask_version='2026.10'", "'2026.10'"),  # bare, 2026.10 would be the float 2026.1
        ("dask_version='2026'", "'2026'"),
        ("dask_wheelhouse_download=false", "false"),
        ("dask_wheelhouse_download=yes", "true"),
        ("dask_worker_resources={GPU: 1}", "{GPU: 1}"),
    ],
)
def test_set_writes_the_yaml_value_asked_for(setting: str, written: str) -> None:
    key, value = parse_setting(setting)
    edited, kept = edit_inventory_text(_INVENTORY, {key: value})
    assert kept
    assert f"    {key}: {written}\n" in edited
    assert yaml.safe_load(edited)["all"]["vars"][key] == value
    assert type(yaml.safe_load(edited)["all"]["vars"][key]) is type(value)


@pytest.mark.parametrize("text", ["yes", "off", "1:20", "0755", "~", "2026.9", "1e3", "[x]", ""])
def test_a_string_that_yaml_11_reads_otherwise_is_quoted(text: str) -> None:
    # Ansible reads YAML 1.1, where `yes` and `off` are booleans and 1:20 is 80
    edited, kept = edit_inventory_text(_INVENTORY, {"dask_worker_name": text})
    assert kept
    assert yaml.safe_load(edited)["all"]["vars"]["dask_worker_name"] == text


def test_a_layout_the_round_trip_cannot_keep_is_rewritten_through_pyyaml() -> None:
    # ruamel.yaml refuses a duplicate key that PyYAML (and Ansible) let the last one win
    text = "# dropped\nall:\n  vars:\n    dask_worker_nthreads: 1\n    dask_worker_nthreads: 2\n"
    edited, kept = edit_inventory_text(text, {"dask_version": "2026.8.0"})
    assert not kept
    assert "# dropped" not in edited
    assert yaml.safe_load(edited)["all"]["vars"] == {
        "dask_worker_nthreads": 2,
        "dask_version": "2026.8.0",
    }


def test_prepare_settings_validates_without_writing(tmp_path: Path) -> None:
    path = _write(tmp_path / "inv.yml", _INVENTORY)
    edit = prepare_settings(path, {"dask_worker_nthreads": 4})
    assert path.read_text() == _INVENTORY  # nothing written yet
    assert edit.inventory.path == path
    assert edit.inventory.dask_vars("w1")["dask_worker_nthreads"] == 4
    edit.write()
    assert load_inventory(path).dask_vars("w3")["dask_worker_nthreads"] == 4
    assert "# lab hosts take root logins" in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inv.yml"]  # no temporary left


def test_a_setting_overridden_elsewhere_is_refused(tmp_path: Path) -> None:
    text = _INVENTORY.replace(
        "w2: {ansible_host: 10.0.0.3}", "w2: {ansible_host: 10.0.0.3, dask_worker_nthreads: 8}"
    )
    path = _write(tmp_path / "inv.yml", text)
    with pytest.raises(UsageError, match="would not take effect on w2"):
        prepare_settings(path, {"dask_worker_nthreads": 4})
    assert path.read_text() == text
