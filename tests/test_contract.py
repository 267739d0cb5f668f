"""The names Python shares with the roles and playbooks (pydask_deploy/contract.py) are the
ones the YAML under roles/ and playbooks/ uses: a rename on either side fails here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pydask_deploy import contract
from pydask_deploy.inventory import role_defaults
from pydask_deploy.resources import ansible_dir, playbook_path, roles_path


def _yaml_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.y*ml") if p.is_file())


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _tasks(items: Any) -> Iterator[dict[str, Any]]:
    """Every task in a task list, blocks, rescues and plays' task sections included."""
    if not isinstance(items, list):
        return
    for item in items:
        if not isinstance(item, dict):
            continue
        yield item
        for key in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers"):
            yield from _tasks(item.get(key))


def _all_tasks() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in _yaml_files(roles_path()) + _yaml_files(playbook_path("site.yml").parent):
        if "/defaults/" in str(path) or "/vars/" in str(path) or "/meta/" in str(path):
            continue
        found += _tasks(_load(path))
    return found


def _role_vars() -> dict[str, Any]:
    return dict(_load(roles_path() / contract.ROLE / "vars" / "main.yml") or {})


def _text(root: Path, pattern: str = "*") -> str:
    return "\n".join(p.read_text() for p in sorted(root.rglob(pattern)) if p.is_file())


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_the_playbooks_exist() -> None:
    for name in (contract.SITE_PLAYBOOK, contract.RESTART_PLAYBOOK, contract.DESTROY_PLAYBOOK):
        assert playbook_path(name).is_file(), name


def test_the_plays_run_on_the_two_groups() -> None:
    for name in (contract.SITE_PLAYBOOK, contract.RESTART_PLAYBOOK, contract.DESTROY_PLAYBOOK):
        plays = _load(playbook_path(name))
        assert [p["hosts"] for p in plays] == [
            f"{contract.SCHEDULER_GROUP}:{contract.WORKERS_GROUP}"
        ], name


def test_the_playbooks_run_the_one_role() -> None:
    assert sorted(p.name for p in roles_path().iterdir() if p.is_dir()) == [contract.ROLE]
    (site,) = _load(playbook_path(contract.SITE_PLAYBOOK))
    assert site["roles"] == [{"role": contract.ROLE}]
    (destroy,) = _load(playbook_path(contract.DESTROY_PLAYBOOK))
    imported = [t["ansible.builtin.import_role"] for t in destroy["tasks"]]
    assert imported == [{"name": contract.ROLE, "tasks_from": "destroy"}]


def test_the_scheduler_and_worker_parts_run_on_their_groups() -> None:
    main = _load(roles_path() / contract.ROLE / "tasks" / "main.yml")
    gates = {t["ansible.builtin.import_tasks"]: t.get("when") for t in main}
    assert gates == {
        "common.yml": None,
        "runtime.yml": None,
        "scheduler.yml": f"inventory_hostname in groups['{contract.SCHEDULER_GROUP}']",
        "worker.yml": f"inventory_hostname in groups['{contract.WORKERS_GROUP}']",
    }


@pytest.mark.parametrize("task", [contract.SCHEDULER_UNIT_TASK, contract.WORKER_UNIT_TASK])
def test_the_tasks_python_waits_for_exist(task: str) -> None:
    names = [t.get("name") for t in _all_tasks()]
    assert names.count(task) == 1, f"no single task named {task!r} in roles/ and playbooks/"


@pytest.mark.parametrize("unit", [contract.SCHEDULER_UNIT, contract.WORKER_UNIT])
def test_the_units_are_installed_and_restarted_where_python_looks(unit: str) -> None:
    assert contract.unit_path(unit) in _role_vars().values()
    restarted = {
        t[module]["name"]
        for t in _all_tasks()
        for module in ("ansible.builtin.systemd_service", "ansible.builtin.systemd")
        if isinstance(t.get(module), dict) and "name" in t[module]
    }
    assert contract.unit_file(unit) in restarted


def test_every_unit_template_names_its_runtime() -> None:
    templates = sorted(roles_path().rglob("*.service.j2"))
    assert {p.name for p in templates} == {
        f"{contract.unit_file(u)}.j2" for u in (contract.SCHEDULER_UNIT, contract.WORKER_UNIT)
    }
    for template in templates:
        lines = template.read_text().splitlines()
        assert any(line.startswith(contract.UNIT_RUNTIME_COMMENT + "{{") for line in lines)


def test_the_in_sync_record_and_the_runtime_marker() -> None:
    site = playbook_path(contract.SITE_PLAYBOOK).read_text()
    assert f"{{{{ dask_config_dir }}}}/{contract.RECORD_NAME}" in site
    roles = _text(roles_path())
    assert contract.RUNTIME_MARKER in roles
    assert _role_vars()["__dask_envs_dir"] == f"{{{{ dask_base_dir }}}}/{contract.ENVS_DIR}"
    assert f"{contract.ENVS_DIR}/current" == contract.CURRENT_LINK
    assert "{{ __dask_envs_dir }}/current" in roles


@pytest.mark.parametrize(
    "name",
    [
        contract.EXTRA_TLS_SRC_DIR,
        contract.EXTRA_TLS_PENDING,
        contract.EXTRA_INSYNC,
        contract.EXTRA_DEFER_RESTART,
        contract.EXTRA_RESTART_UNITS,
        contract.EXTRA_REMOVE_USER,
        contract.EXTRA_CONDA,
    ],
)
def test_every_extra_variable_is_read_by_the_yaml(name: str) -> None:
    used = _text(ansible_dir() / "roles", "*.yml") + _text(ansible_dir() / "playbooks", "*.yml")
    assert re.search(rf"\b{re.escape(name)}\b", used), f"{name} is passed but never read"


def test_every_variable_python_reads_has_a_role_default() -> None:
    missing = sorted(set(contract.VARIABLES_READ) - set(role_defaults()))
    assert not missing, f"no default in roles/{contract.ROLE_DEFAULTS} for {missing}"


def test_the_scheduler_address_fallback_is_the_roles_one() -> None:
    fallback = _squeeze(contract.SCHEDULER_ADDRESS_FALLBACK)
    uses = [k for k, v in _role_vars().items() if fallback in _squeeze(str(v))]
    assert uses, "no role variable computes the scheduler address as contract.py says"


def test_the_last_task_of_site_yml_is_the_one_python_knows() -> None:
    (play,) = _load(playbook_path(contract.SITE_PLAYBOOK))
    last = [*_tasks(play.get("post_tasks") or play.get("tasks") or [])][-1]
    assert last["name"] == contract.LAST_SITE_TASK


def test_the_hosts_ca_file_is_where_the_roles_put_it() -> None:
    assert _role_vars()["__dask_tls_dir"] == f"{{{{ dask_config_dir }}}}/{contract.TLS_DIR}"
    assert f"dest: {contract.CA_CERT}" in _text(roles_path(), "*.yml")
