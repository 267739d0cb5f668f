"""The worker unit as the role renders it (roles/dask/templates/dask-worker.service.j2),
through Ansible's own templating, for the settings the users' work needs: data paths, home
directories, an existing account, GPUs. The lab tests (test_users.py) run these units."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from pydask_deploy.resources import roles_path

ROLE = roles_path() / "dask"


def _trusted(mapping: dict[str, Any]) -> dict[str, Any]:
    from ansible.template import trust_as_template  # type: ignore[import-untyped]

    return {k: trust_as_template(v) if isinstance(v, str) else v for k, v in mapping.items()}


def render(passwd: str = "", earlier_apply: bool = False, **variables: Any) -> str:
    """The worker unit of host ``h2`` (scheduler ``h1``) with ``variables`` over the role's
    defaults; ``passwd`` is what ``getent passwd`` and ``id -gn`` say of ``dask_user``
    (empty: no such account yet); ``earlier_apply``: the host has apply's runtimes."""
    from ansible.parsing.dataloader import DataLoader  # type: ignore[import-untyped]
    from ansible.template import Templar, trust_as_template

    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    facts = {
        # what runtime.yml and account.yml leave for the template
        "__dask_runtime_id": "b28e9268f4b0",
        "__dask_runtime_exec": "/opt/dask/envs/b28e9268f4b0/bin/dask",
        "__dask_runtime_exec_pre": [],
        "__dask_runtime_unit_user": variables.get("dask_user", "dask"),
        "__dask_passwd": {"rc": 0 if passwd else 2, "stdout_lines": passwd.splitlines()},
        "__dask_account_record_file": {},
        "__dask_account_earlier_apply": {"stat": {"exists": earlier_apply}},
        "groups": {"dask_scheduler": ["h1"], "dask_workers": ["h2"]},
        "hostvars": {"h1": {"ansible_host": "10.0.0.1"}},
        "inventory_hostname": "h2",
        "dask_tls": False,
    }
    templar = Templar(
        loader=DataLoader(),
        variables={**_trusted(defaults), **_trusted(role_vars), **facts, **variables},
    )
    template = (ROLE / "templates" / "dask-worker.service.j2").read_text()
    return str(templar.template(trust_as_template(template)))


def lines(unit: str, key: str) -> list[str]:
    return [line.partition("=")[2] for line in unit.splitlines() if line.startswith(f"{key}=")]


def exec_args(unit: str) -> list[str]:
    start = unit.index("ExecStart=")
    text = unit[start : unit.index("\n\n", start)].replace("\\\n", " ")
    return text.split()[1:]


def test_by_default_the_workers_read_home_directories_and_no_device() -> None:
    unit = render()
    assert lines(unit, "ProtectHome") == ["read-only"]
    assert lines(unit, "ReadWritePaths") == ["/var/lib/dask -/var/lib/dask/worker"]
    assert lines(unit, "ReadOnlyPaths") == []
    assert lines(unit, "PrivateDevices") == ["yes"]
    assert lines(unit, "DevicePolicy") == lines(unit, "DeviceAllow") == []
    assert lines(unit, "RemoveIPC") == ["yes"]  # an account apply made
    assert lines(unit, "Group") == ["dask"]
    assert lines(unit, "After") == ["network-online.target remote-fs.target"]


def test_declared_paths_may_be_missing_and_keep_their_percent_signs() -> None:
    unit = render(
        dask_worker_read_write_paths=["/srv/out", "/home/alice/100%"],
        dask_worker_read_only_paths=["/srv/data"],
    )
    assert lines(unit, "ReadWritePaths") == [
        "/var/lib/dask -/var/lib/dask/worker -/srv/out -/home/alice/100%%"
    ]
    assert lines(unit, "ReadOnlyPaths") == ["-/srv/data"]


@pytest.mark.parametrize(
    ("value", "word"),
    [(True, "yes"), (False, "no"), ("yes", "yes"), ("tmpfs", "tmpfs"), ("no", "no")],
)
def test_protect_home_takes_yamls_booleans(value: object, word: str) -> None:
    assert lines(render(dask_worker_protect_home=value), "ProtectHome") == [word]


def test_an_existing_account_runs_with_its_own_group_and_keeps_its_ipc() -> None:
    unit = render("alice:x:2001:2001::/home/alice:/bin/bash\nstaff", dask_user="alice")
    assert lines(unit, "User") == ["alice"]
    assert lines(unit, "Group") == ["staff"]
    assert lines(unit, "RemoveIPC") == []
    assert lines(
        render(
            "alice:x:2001:2001::/home/alice:/bin/bash\nstaff",
            dask_user="alice",
            dask_group="science",
        ),
        "Group",
    ) == ["science"]


def test_an_account_shaped_as_apply_made_it_is_the_roles() -> None:
    unit = render("dask:x:999:997::/var/lib/dask:/usr/sbin/nologin\ndask", earlier_apply=True)
    assert lines(unit, "RemoveIPC") == ["yes"]


def test_the_same_account_on_a_host_apply_never_converged_is_left_as_it_is() -> None:
    """An admin made it by hand to the pattern apply uses: it is not claimed."""
    unit = render("dask:x:999:997::/var/lib/dask:/usr/sbin/nologin\ndask", earlier_apply=False)
    assert lines(unit, "RemoveIPC") == []
    shaped_but_other_group = render(
        "dask:x:999:100::/var/lib/dask:/usr/sbin/nologin\nusers", earlier_apply=True
    )
    assert lines(shaped_but_other_group, "RemoveIPC") == []
    assert lines(shaped_but_other_group, "Group") == ["users"]


def test_a_gpu_host_renders_one_worker_per_instance_with_its_own_gpu() -> None:
    unit = render(dask_worker_gpus=4, dask_worker_resources={"MEM": 2})
    assert lines(unit, "Description") == ["Dask worker on GPU %i"]
    assert lines(unit, "Environment") == [
        "HOME=/var/lib/dask",
        "CUDA_VISIBLE_DEVICES=%i CUDA_DEVICE_ORDER=PCI_BUS_ID",
    ]
    args = exec_args(unit)
    for flag, value in [
        ("--nworkers", "1"),
        ("--nthreads", "1"),
        ("--memory-limit", "0.25"),
        ("--resources", '"GPU=1'),
        ("--name", "%H-gpu%i"),
    ]:
        assert args[args.index(flag) + 1] == value, flag
    assert 'MEM=2"' in args
    assert lines(unit, "PrivateDevices") == []
    assert lines(unit, "DevicePolicy") == ["closed"]
    assert lines(unit, "DeviceAllow") == [
        "/dev/nvidiactl rw",
        "/dev/nvidia-uvm rw",
        "/dev/nvidia-uvm-tools rw",
        "/dev/nvidia0 rw",
        "/dev/nvidia1 rw",
        "/dev/nvidia2 rw",
        "/dev/nvidia3 rw",
        "char-nvidia-caps r",
    ]
    # the rest of the hardening stays
    for key in ("NoNewPrivileges", "ProtectKernelModules", "RestrictNamespaces", "ProtectProc"):
        assert lines(unit, key), key


def test_a_gpu_hosts_own_settings_apply_to_each_worker() -> None:
    args = exec_args(
        render(
            dask_worker_gpus=2,
            dask_worker_nthreads=4,
            dask_worker_memory_limit="16GiB",
            dask_worker_name="gpunode",
        )
    )
    assert args[args.index("--nthreads") + 1] == "4"
    assert args[args.index("--memory-limit") + 1] == "16GiB"
    assert args[args.index("--name") + 1] == "gpunode-gpu%i"
