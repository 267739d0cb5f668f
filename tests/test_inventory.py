"""Tests for pydask_deploy.inventory and `pydask-deploy check`.

Data-driven: every inventory in tests/data/inventories/bad/ (``*.yml``, or ``*/*.yml`` for
cases that need group_vars/ or host_vars/ beside them) starts with ``# expect: FRAGMENT``
lines, each a fragment the error message must contain. Those in good/ must load.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pydask_deploy.cli import main
from pydask_deploy.errors import InventoryError
from pydask_deploy.inventory import VAR_TYPES, Inventory, load_inventory
from pydask_deploy.inventory import load as inventory_module
from pydask_deploy.resources import roles_path

DATA = Path(__file__).parent / "data" / "inventories"
BAD = DATA / "bad"
GOOD = DATA / "good"
REPO = Path(__file__).parent.parent


def _cases(root: Path) -> list[str]:
    """Inventory files under root, relative to it, skipping group_vars/ and host_vars/."""
    found = [*root.glob("*.yml"), *root.glob("*/*.yml")]
    return sorted(
        str(p.relative_to(root))
        for p in found
        if not {"group_vars", "host_vars"} & set(p.relative_to(root).parts)
    )


def _expected(path: Path) -> list[str]:
    return re.findall(r"^# expect: (.*)$", path.read_text(encoding="utf-8"), re.MULTILINE)


BAD_CASES = _cases(BAD)
GOOD_CASES = _cases(GOOD)


def _check(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["check", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


# --------------------------------------------------------------------------- bad inventories


def test_there_are_enough_bad_cases() -> None:
    assert len(BAD_CASES) >= 12
    for case in BAD_CASES:
        assert _expected(BAD / case), f"{case} has no `# expect:` line"


@pytest.mark.parametrize("case", BAD_CASES)
def test_check_reports_bad_inventory(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Run from the data directory: messages name the file as the user gave it.
    monkeypatch.chdir(BAD)
    code, stdout, stderr = _check(case)
    assert code == 2
    assert stdout == ""
    assert stderr.startswith("error: ")
    for fragment in _expected(BAD / case):
        assert fragment in stderr
    assert str(BAD) not in stderr  # a relative path stays relative


@pytest.mark.parametrize("case", BAD_CASES)
def test_check_json_reports_bad_inventory(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(BAD)
    code, stdout, _ = _check("--json", case)
    assert code == 2
    document = json.loads(stdout)
    assert document["ok"] is False
    assert document["scheduler"] is None
    errors = "\n".join(document["errors"])
    for fragment in _expected(BAD / case):
        assert fragment in errors


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(InventoryError) as caught:
        load_inventory(BAD / "many_problems.yml")
    assert len(str(caught.value).splitlines()) == 4


def test_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InventoryError, match=r"^inventory/prod.yml: cannot read file: No such"):
        load_inventory("inventory/prod.yml")


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yml"
    path.write_bytes(b"all: \xff\xfe\n")
    with pytest.raises(InventoryError, match="cannot read file"):
        load_inventory(path)


def test_directory_is_not_an_inventory(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="is a directory; give the inventory file"):
        load_inventory(tmp_path)


def test_inventory_error_exits_2() -> None:
    assert InventoryError.exit_code == 2


# --------------------------------------------------------------------------- good inventories


@pytest.mark.parametrize("case", GOOD_CASES)
def test_check_accepts_good_inventory(case: str) -> None:
    code, stdout, _ = _check(str(GOOD / case))
    assert code == 0
    assert stdout.startswith(f"{GOOD / case}: ok\n")
    assert "scheduler: " in stdout


@pytest.mark.parametrize("case", GOOD_CASES)
def test_check_json_good_inventory(case: str) -> None:
    code, stdout, _ = _check("--json", str(GOOD / case))
    assert code == 0
    document = json.loads(stdout)
    inventory = load_inventory(GOOD / case)
    assert document["ok"] is True
    assert document["errors"] == []
    assert document["scheduler"]["name"] == inventory.scheduler.name
    assert [w["name"] for w in document["workers"]] == [w.name for w in inventory.workers]


@pytest.mark.parametrize("name", ["static.yml", "docker.yml"])
def test_example_inventories_load(name: str) -> None:
    inventory = load_inventory(REPO / "inventory" / name)
    assert inventory.workers


def test_ranges_expand_as_ansible_does() -> None:
    inventory = load_inventory(GOOD / "ranges.yml")
    names = [w.name for w in inventory.workers]
    assert names[:2] == ["node01.example.org", "node02.example.org"]
    assert names[15] == "node16.example.org"
    assert names[16:] == ["gpu-a", "gpu-b", "gpu-c"]
    scheduler = inventory.scheduler
    assert (scheduler.address, scheduler.port, scheduler.user) == (
        "head.example.org",
        2222,
        "admin",
    )
    assert inventory.dask_vars("gpu-b")["dask_worker_resources"] == {"GPU": 1}


def test_nested_children_resolve_with_ansible_precedence() -> None:
    inventory = load_inventory(GOOD / "nested.yml")
    assert inventory.scheduler.address == "192.0.2.1"
    assert [w.name for w in inventory.workers] == ["cpu1", "cpu2", "gpu1"]
    scheduler = inventory.dask_vars("head")
    assert scheduler["dask_worker_nthreads"] == 2  # parent group over all
    cpu = inventory.dask_vars("cpu1")
    assert cpu["dask_worker_nthreads"] == 4  # child group over parent
    assert cpu["dask_worker_nworkers"] == 2
    assert cpu["dask_worker_memory_limit"] == "auto"
    gpu = inventory.dask_vars("gpu1")
    assert gpu["dask_worker_nthreads"] == 8  # host over groups
    assert gpu["dask_worker_memory_limit"] == 0.8
    assert gpu["dask_worker_resources"] == {"GPU": 2}


def test_host_in_both_groups() -> None:
    inventory = load_inventory(GOOD / "both_groups.yml")
    assert [h.name for h in inventory.hosts] == ["alpha", "beta"]
    assert [w.name for w in inventory.workers] == ["alpha", "beta"]
    assert inventory.scheduler.user == "dask-admin"
    assert inventory.host("beta").address == "10.1.0.2"


def test_group_vars_and_host_vars_beside_the_inventory() -> None:
    inventory = load_inventory(GOOD / "vars_dirs" / "inventory.yml")
    assert inventory.dask_vars("sched")["dask_runtime"] == "conda"
    assert inventory.dask_vars("w1")["dask_worker_nthreads"] == 4
    assert inventory.dask_vars("w1")["dask_worker_nworkers"] == 2
    assert inventory.dask_vars("w2")["dask_worker_nthreads"] == 16
    assert inventory.host("w2").address == "10.9.0.2"


def test_templated_values_are_left_to_ansible() -> None:
    inventory = load_inventory(GOOD / "templated.yml")
    w2 = inventory.host("w2")
    assert w2.vars["dask_worker_nthreads"] == "{{ ansible_processor_vcpus | default(2) }}"
    assert inventory.host("w1").user == "ops"


def test_scheduler_alone() -> None:
    inventory = load_inventory(GOOD / "scheduler_only.yml")
    assert inventory.workers == ()
    assert inventory.hosts == (inventory.scheduler,)


def test_values_are_plain_and_frozen() -> None:
    inventory = load_inventory(GOOD / "nested.yml")
    gpu = inventory.host("gpu1")
    assert type(gpu.vars["dask_worker_nthreads"]) is int
    assert type(gpu.vars["dask_runtime"]) is str
    assert type(gpu.vars["dask_worker_resources"]) is dict
    with pytest.raises(TypeError):
        gpu.vars["dask_runtime"] = "conda"  # type: ignore[index]
    assert len({gpu, inventory.host("gpu1")}) == 1  # hashable despite the vars mapping
    assert "inventory_hostname" not in gpu.vars and "group_names" not in gpu.vars


def test_dask_vars_fall_back_to_role_defaults() -> None:
    inventory = load_inventory(GOOD / "scheduler_only.yml")
    settings = inventory.dask_vars(inventory.scheduler)
    assert settings["dask_scheduler_port"] == 8786
    assert settings["dask_dashboard_port"] == 8787
    assert isinstance(inventory, Inventory)


# --------------------------------------------------------------------------- known variables


def _role_defaults() -> dict[str, object]:
    path = roles_path() / "dask/defaults/main.yml"
    return dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def test_every_role_default_has_a_type() -> None:
    defaults = _role_defaults()
    assert defaults, f"no roles/dask/defaults/main.yml under {roles_path()}"
    missing = sorted(k for k in defaults if k.startswith("dask_") and k not in VAR_TYPES)
    assert not missing, f"add these to VAR_TYPES in pydask_deploy/inventory/load.py: {missing}"


def test_role_defaults_pass_their_own_checks() -> None:
    for key, value in _role_defaults().items():
        check = VAR_TYPES.get(key)
        if check is None or (isinstance(value, str) and "{{" in value):
            continue
        assert check(value) is None, f"default of {key} fails its check: {value!r}"


def test_known_variables_include_role_defaults() -> None:
    assert set(_role_defaults()) <= inventory_module.known_variables()
    assert "dask_tls" in inventory_module.known_variables()


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("dask_worker_nthreads", 0, True),
        ("dask_worker_nthreads", True, False),
        ("dask_worker_nworkers", 3, True),
        ("dask_worker_memory_limit", "auto", True),
        ("dask_worker_memory_limit", "4GiB", True),
        ("dask_worker_memory_limit", "500 MB", True),
        ("dask_worker_memory_limit", 8_000_000_000, True),
        ("dask_worker_memory_limit", 0.5, True),
        ("dask_worker_memory_limit", 0.0, False),
        ("dask_worker_memory_limit", "eight", False),
        ("dask_scheduler_port", 1, True),
        ("dask_scheduler_port", 0, False),
        ("dask_scheduler_port", 65536, False),
        ("dask_version", "2026.8.0", True),
        ("dask_version", "2026.8.0rc1", True),
        ("dask_version", "latest", False),
        ("dask_docker_image", "daskdev/dask", True),
        ("dask_docker_image", "localhost:5000/dask/dask:2026.8.0", True),
        ("dask_docker_image", "[::1]:5000/dask:1", True),
        ("dask_docker_image", "ghcr.io/dask/dask@sha256:" + "a" * 64, True),
        ("dask_docker_image", "dask:bad tag", False),
        ("dask_docker_image", "dask/Dask", False),
        ("dask_docker_image", "dask//dask", False),
        ("dask_worker_resources", {"GPU": 2, "MEM": 1e9}, True),
        ("dask_worker_resources", {"GPU": True}, False),
        ("dask_worker_resources", ["GPU"], False),
        ("dask_worker_death_timeout", 60, True),
        ("dask_worker_death_timeout", "2 minutes", True),
        ("dask_worker_death_timeout", -1, False),
        ("dask_user", "dask", True),
        ("dask_user", "Dask User", False),
        ("dask_tls", False, True),
        ("dask_tls", "false", False),
    ],
)
def test_value_checks(key: str, value: object, ok: bool) -> None:
    assert (VAR_TYPES[key](value) is None) is ok


# --------------------------------------------------------------------------- no network


def test_check_does_no_network_io(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("check must not open network connections")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for case in GOOD_CASES:
        assert _check(str(GOOD / case))[0] == 0
    assert _check(str(BAD / "duplicate_address.yml"))[0] == 2


# --------------------------------------------------------------------------- the cache


def test_a_validated_inventory_is_read_back_from_the_cache_until_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYDASK_DEPLOY_CACHE", str(tmp_path / "cache"))
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "dask_workers.yml").write_text("dask_worker_nthreads: 2\n")
    path = tmp_path / "inv.yml"
    path.write_text(
        "all:\n  children:\n    dask_scheduler:\n      hosts:\n"
        "        s1: {ansible_host: 10.0.0.1}\n    dask_workers:\n      hosts:\n"
        "        w1: {ansible_host: 10.0.0.2}\n"
    )
    first = load_inventory(path)
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1

    def no_ansible(_: Path) -> None:
        raise AssertionError("Ansible was asked again")

    monkeypatch.setattr(inventory_module, "_resolve", no_ansible)
    again = load_inventory(path)
    assert again == first and again.workers[0].vars == first.workers[0].vars
    assert again.dask_vars("w1")["dask_worker_nthreads"] == 2

    (tmp_path / "group_vars" / "dask_workers.yml").write_text("dask_worker_nthreads: 3\n")
    with pytest.raises(AssertionError, match="asked again"):
        load_inventory(path)  # a vars file beside it changed: resolved afresh
    monkeypatch.setenv("ANSIBLE_HOST_KEY_CHECKING", "False")
    with pytest.raises(AssertionError, match="asked again"):
        load_inventory(path)  # Ansible's settings are part of the key too


def test_the_cache_keeps_no_vault_values_and_can_be_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydask_deploy.inventory import cache as inventory_cache

    path = tmp_path / "inv.yml"
    path.write_text(
        "all:\n  vars:\n    ansible_become_password: !vault |\n      $ANSIBLE_VAULT;1.1\n"
    )
    monkeypatch.setenv("PYDASK_DEPLOY_CACHE", str(tmp_path / "cache"))
    assert inventory_cache.cache_key(path) is None
    monkeypatch.setenv("PYDASK_DEPLOY_CACHE", "off")
    assert inventory_cache.cache_dir() is None
    inventory_cache.write(tmp_path / "other.yml", {"hosts": {}})
    assert not (tmp_path / "cache").exists()
