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


def test_edit_falls_back_to_yaml_for_a_flow_style_file() -> None:
    text = "{all: {vars: {dask_worker_nthreads: 1}, children: {dask_scheduler: {hosts: {s1: }}}}}\n"
    edited, kept = edit_inventory_text(text, {"dask_worker_nthreads": 3})
    assert not kept
    assert yaml.safe_load(edited)["all"]["vars"] == {"dask_worker_nthreads": 3}


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
