"""apply's fast path: hosts proved in sync over SSH are left out of the playbook."""

# The probe output below is recorded as the hosts printed it: its lines are long.
# ruff: noqa: E501

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import cli, edit_inventory, ssh
from lab_factory import LabFactory

from pydask_deploy import lab as lab_module
from pydask_deploy.deploy import insync
from pydask_deploy.deploy import pki as pki_module
from pydask_deploy.inventory import load_inventory
from pydask_deploy.resources import ansible_dir, playbook_path

_INVENTORY = """\
all:
  vars:
    dask_worker_nthreads: 2
  children:
    dask_scheduler:
      hosts:
        s1: {ansible_host: 10.0.0.1}
    dask_workers:
      hosts:
        w1: {ansible_host: 10.0.0.2}
        w2: {ansible_host: 10.0.0.3}
"""


def _inventory(tmp_path: Path, text: str = _INVENTORY) -> Path:
    path = tmp_path / "inv.yml"
    path.write_text(text)
    return path


def _fingerprints(path: Path, tree: Path | None = None, tls: bool = False) -> dict[str, str]:
    inventory = load_inventory(path)
    shared = insync.shared_inputs(inventory, tree)
    pki = pki_module.ensure_pki(inventory, write=True) if tls else None
    return {h.name: insync.fingerprint(inventory, h, shared, pki) for h in inventory.hosts}


# --------------------------------------------------------------------------- the fingerprint


def test_fingerprint_is_stable_and_per_host(tmp_path: Path) -> None:
    path = _inventory(tmp_path)
    first = _fingerprints(path)
    assert first == _fingerprints(path)
    assert len(set(first.values())) == 3  # the host's name is an input


def test_fingerprint_changes_with_the_inventory_and_vars_files(tmp_path: Path) -> None:
    path = _inventory(tmp_path)
    before = _fingerprints(path)
    path.write_text(_INVENTORY.replace("nthreads: 2", "nthreads: 3"))
    edited = _fingerprints(path)
    assert all(edited[n] != before[n] for n in before)  # any edit re-runs every host
    path.write_text(_INVENTORY)
    assert _fingerprints(path) == before
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "w2.yml").write_text("dask_worker_nthreads: 4\n")
    with_vars = _fingerprints(path)
    assert all(with_vars[n] != before[n] for n in before)


def test_fingerprint_changes_with_the_roles(tmp_path: Path) -> None:
    tree = tmp_path / "ansible"
    for sub in ("roles", "playbooks"):
        shutil.copytree(ansible_dir() / sub, tree / sub)
    path = _inventory(tmp_path)
    before = _fingerprints(path, tree)
    assert before == _fingerprints(path, ansible_dir())
    template = tree / "roles/dask/templates/dask-worker.service.j2"
    template.write_text(template.read_text() + "# a new line\n")
    after = _fingerprints(path, tree)
    assert all(after[n] != before[n] for n in before)


def test_fingerprint_changes_with_the_host_certificate(tmp_path: Path) -> None:
    path = _inventory(tmp_path)
    before = _fingerprints(path, tls=True)
    assert before == _fingerprints(path, tls=True)  # nothing re-issued: the same
    inventory = load_inventory(path)
    pki = pki_module.ensure_pki(inventory, write=True)
    cert, key = pki.hosts["w1"]
    cert.unlink()
    key.unlink()  # ensure_pki issues w1 again
    after = _fingerprints(path, tls=True)
    assert after["w1"] != before["w1"]
    assert after["w2"] == before["w2"] and after["s1"] == before["s1"]


def test_a_docker_image_by_tag_is_never_in_sync(tmp_path: Path) -> None:
    tagged = _INVENTORY.replace(
        "dask_worker_nthreads: 2", "dask_runtime: docker\n    dask_docker_image: 'r.example/dask:1'"
    )
    checks = insync.host_checks(load_inventory(_inventory(tmp_path, tagged)), None)
    assert all("tag" in c.reason and not c.eligible for c in checks.values())
    pinned = tagged.replace("dask:1'", "dask@sha256:" + "a" * 64 + "'")
    checks = insync.host_checks(load_inventory(_inventory(tmp_path, pinned)), None)
    assert all(c.eligible for c in checks.values())
    assert "docker image inspect" in checks["w1"].state


def test_the_state_script_holds_no_jinja(tmp_path: Path) -> None:
    # it travels to Ansible as an extra var: a double brace would be templated
    for runtime in ("venv", "docker"):
        text = _INVENTORY.replace(
            "dask_worker_nthreads: 2",
            f"dask_runtime: {runtime}\n    dask_docker_image: 'r.example/d@sha256:{'a' * 64}'",
        )
        for check in insync.host_checks(load_inventory(_inventory(tmp_path, text)), None).values():
            assert not any(d in check.state for d in ("{{", "{%", "{#")), check.state
            done = subprocess.run(["sh", "-n", "-c", check.state], capture_output=True)
            assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- the probe parser

# Recorded from lab hosts right after apply: a worker (h2) and the scheduler (h1). The
# record a host keeps is its state when apply finished, so both halves start the same.
_RECORD_HEADER = """\
# Written by pydask-deploy apply when this host converged; apply compares it with
# the host as it is now to leave the host out (apply --full runs it anyway).
"""
_WORKER_STATE = """\
user 999 997
dir /opt/dask root root 755 directory
dir /etc/dask root dask 750 directory
dir /var/lib/dask dask dask 750 directory
dir /opt/dask/envs root root 755 directory
dir /var/lib/dask/worker dask dask 750 directory
current /opt/dask/envs/b28e9268f4b0
entry tls d root dask 750
entry tls/ca.crt f root dask 644
entry tls/host.crt f root dask 644
entry tls/host.key f root dask 640
file 79568b33e0ce182032ac222c2824221e1c9f35670e02e3a425a2d2236c47697b  /etc/dask/tls/ca.crt
file e10af3154c8c511ed973a49ea794d3ebd9ec57a1814501619b663200ac885582  /etc/dask/tls/host.crt
file df12ff4e5d9af7a2e22868d39a05e25944a82f47b607328791564ff7ea7c8d9c  /etc/dask/tls/host.key
unit dask-worker.service ae3f7eea79f8905c2c29028f60566e77877d73ed499965f154b66caca4fa58bb enabled active
runtime dask-worker.service /opt/dask/envs/b28e9268f4b0/bin/dask present c2cc52b2d7f7b9f78a35081ed5726f4be726c02fde3220228d6d641a6d3ef04f
"""
_SCHEDULER_STATE = """\
user 999 997
dir /opt/dask root root 755 directory
dir /etc/dask root dask 750 directory
dir /var/lib/dask dask dask 750 directory
dir /opt/dask/envs root root 755 directory
current /opt/dask/envs/b28e9268f4b0
entry tls d root dask 750
entry tls/ca.crt f root dask 644
entry tls/host.crt f root dask 644
entry tls/host.key f root dask 640
file 79568b33e0ce182032ac222c2824221e1c9f35670e02e3a425a2d2236c47697b  /etc/dask/tls/ca.crt
file 2eaa5a73e41c8624ba84f36b7c9c79653931d4ac6d9b4691c6557b9bc407b466  /etc/dask/tls/host.crt
file 96ed8d04af0001980a8be73acc9404335624dc2d8d7fa002f6c274a706d43603  /etc/dask/tls/host.key
unit dask-scheduler.service 7382cc6a2f364a6d771801f0146ba14b3dc5b666dd9b04a79d3d8ce831d55761 enabled active
runtime dask-scheduler.service /opt/dask/envs/b28e9268f4b0/bin/dask present c2cc52b2d7f7b9f78a35081ed5726f4be726c02fde3220228d6d641a6d3ef04f
"""


def _probe(fingerprint: str, state: str) -> str:
    """What the in-sync probe prints on a host whose record and state are ``state``."""
    return f"@@record\n{_RECORD_HEADER}fingerprint {fingerprint}\n{state}@@state\n{state}@@end\n"


_WORKER_PROBE = _probe(
    "41e2fa4ce1cec57c546c8dd54e8d3613912e4238d9f2f9727f0cc843897a6508", _WORKER_STATE
)
_SCHEDULER_PROBE = _probe(
    "91643d21bd9dd7621473aad26040e2412a79abb10f1eb8616eaae579b34b42aa", _SCHEDULER_STATE
)
_FP = "41e2fa4ce1cec57c546c8dd54e8d3613912e4238d9f2f9727f0cc843897a6508"
_UNIT_SHA = "ae3f7eea79f8905c2c29028f60566e77877d73ed499965f154b66caca4fa58bb"
_KEY_SHA = "df12ff4e5d9af7a2e22868d39a05e25944a82f47b607328791564ff7ea7c8d9c"
_CHECK = insync.HostCheck(
    "h2", fingerprint=_FP, record="/etc/dask/.pydask-deploy-applied", units=("dask-worker.service",)
)


def _output(now: Callable[[str], str] = lambda s: s, fingerprint: str = _FP) -> str:
    """The worker's recorded output with its current state (after @@state) edited."""
    record, state = _WORKER_PROBE.split("@@state\n")
    return record.replace(_FP, fingerprint) + "@@state\n" + now(state)


def test_parse_probe_in_sync() -> None:
    assert insync.parse_probe(_WORKER_PROBE, _CHECK) == insync.Verdict(True)
    scheduler = insync.HostCheck(
        "h1",
        fingerprint="91643d21bd9dd7621473aad26040e2412a79abb10f1eb8616eaae579b34b42aa",
        units=("dask-scheduler.service",),
    )
    assert insync.parse_probe(_SCHEDULER_PROBE, scheduler).in_sync
    # the worker's output does not prove the scheduler's unit
    assert (
        "dask-scheduler.service is not installed"
        in insync.parse_probe(_WORKER_PROBE.replace(_FP, scheduler.fingerprint), scheduler).reason
    )


@pytest.mark.parametrize(
    ("stdout", "reason"),
    [
        (_WORKER_PROBE[_WORKER_PROBE.index("@@state") :], "no record"),
        (_output(fingerprint="e" * 64), "inventory, roles or certificates changed"),
        (_output(lambda s: s.replace(_UNIT_SHA, "9" * 64)), "dask-worker.service changed"),
        (_output(lambda s: s.replace("enabled active", "enabled inactive")), "is inactive"),
        (_output(lambda s: s.replace("enabled active", "enabled failed")), "is failed"),
        (_output(lambda s: s.replace("enabled active", "disabled active")), "disabled at boot"),
        (_output(lambda s: s.replace(f"{_UNIT_SHA} enabled active", "")), "not installed"),
        (_output(lambda s: s.replace(" present ", " missing ")), "runtime of dask-worker"),
        (
            _output(lambda s: s.replace("host.key f root dask 640", "host.key f root dask 644")),
            "tls/host.key (owner, mode",
        ),
        (_output(lambda s: s.replace(_KEY_SHA, "4" * 64)), "/etc/dask/tls/host.key changed"),
        (_output(lambda s: s.replace("user 999 997", "user missing missing")), "user changed"),
        (_output(lambda s: s.replace("@@end", "entry x.yaml f root root 644\n@@end")), "x.yaml"),
        (_output(lambda s: s.replace("@@end\n", "")), "did not finish"),
    ],
)
def test_parse_probe_not_in_sync(stdout: str, reason: str) -> None:
    verdict = insync.parse_probe(stdout, _CHECK)
    assert not verdict.in_sync
    assert reason in verdict.reason


def test_probe_command_runs_the_state_script_after_the_record(tmp_path: Path) -> None:
    check = insync.HostCheck(
        "w1",
        fingerprint=_FP,
        record=str(tmp_path / "record"),
        units=(),
        state="echo current /x\n",
    )
    (tmp_path / "record").write_text(f"fingerprint {_FP}\ncurrent /x\n")
    done = subprocess.run(
        insync.probe_command(check), shell=True, capture_output=True, text=True, check=True
    )
    assert insync.parse_probe(done.stdout, check).in_sync
    (tmp_path / "record").write_text(f"fingerprint {_FP}\ncurrent /y\n")
    done = subprocess.run(
        insync.probe_command(check), shell=True, capture_output=True, text=True, check=True
    )
    assert insync.parse_probe(done.stdout, check).reason == "current changed since the last apply"


# --------------------------------------------------------------------------- the record tasks


def _record_playbook(tmp_path: Path) -> Path:
    """site.yml's post_tasks, as a play on this machine (the roles are not needed)."""
    site = yaml.safe_load(playbook_path("site.yml").read_text())
    play = {
        "name": "The in-sync record tasks.",
        "hosts": "localhost",
        "gather_facts": False,
        "connection": "local",
        "post_tasks": site[0]["post_tasks"],
    }
    path = tmp_path / "record.yml"
    path.write_text(yaml.safe_dump([play], sort_keys=False))
    return path


def _run_record(tmp_path: Path, *args: str, **extravars: Any) -> dict[str, int]:
    playbook = _record_playbook(tmp_path)
    variables = {
        "dask_config_dir": str(tmp_path),
        "ansible_python_interpreter": sys.executable,
        **extravars,
    }
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "localhost,",
            "-e",
            json.dumps(variables),
            *args,
            str(playbook),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    recap = re.search(r"^localhost\s*:(.*)$", done.stdout, re.M)
    assert recap is not None, done.stdout
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", recap[1])}


@pytest.mark.skipif(os.geteuid() != 0, reason="the record is written root:root")
def test_the_record_is_written_once_and_removed_while_restarts_are_deferred(
    tmp_path: Path,
) -> None:
    record = tmp_path / insync.RECORD_NAME
    records = {
        "__dask_insync": {
            "localhost": {"fingerprint": _FP, "record": str(record), "state": "echo unit x\n"}
        }
    }
    # bookkeeping, not a change to the cluster: never counted as a change
    assert _run_record(tmp_path, **records)["changed"] == 0
    assert f"fingerprint {_FP}\nunit x\n" in record.read_text()
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    # upgrade stages with restarts deferred: the host is not in sync, whatever apply passed
    assert _run_record(tmp_path, __dask_defer_restart=True, **records)["changed"] == 0
    assert not record.exists()
    # --check writes nothing
    assert _run_record(tmp_path, "--check", **records)["changed"] == 0 and not record.exists()
    # plain ansible-playbook (no __dask_insync) writes nothing
    _run_record(tmp_path)
    assert not record.exists()


# --------------------------------------------------------------------------- on real hosts

_UNIT = "/etc/systemd/system/dask-worker.service"


@pytest.fixture(scope="module")
def fast_lab(lab_factory: LabFactory) -> Iterator[tuple[lab_module.Lab, Path]]:
    """Two lab hosts of their own (h1 the scheduler, h2 a worker); not converged yet."""
    with lab_factory.boot(2) as (lab, inventory):
        yield lab, inventory


def _apply(inventory: Path, *args: str) -> dict[str, Any]:
    done = cli("apply", str(inventory), "--json", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _in_sync(report: dict[str, Any]) -> list[str]:
    return sorted(report["in_sync_hosts"])


@pytest.mark.lab
def test_fast_path_on_real_hosts(fast_lab: tuple[lab_module.Lab, Path], tmp_path: Path) -> None:
    lab, inventory = fast_lab
    scheduler, worker = (h.name for h in lab.hosts)
    both = sorted([scheduler, worker])

    # cold apply: every host runs and gets its record
    cold = _apply(inventory)
    assert cold["ok"] and cold["ansible_started"] and _in_sync(cold) == []
    assert all(c["changed"] > 0 for c in cold["hosts"].values())
    for host in both:
        mode = ssh(lab, host, f"stat -c %a /etc/dask/{insync.RECORD_NAME}").strip()
        assert mode == "600"

    # no-op: both in sync, nothing changed, Ansible not started
    noop = _apply(inventory)
    assert noop["ok"] and noop["changed"] is False and noop["ansible_started"] is False
    assert _in_sync(noop) == both
    assert {n: (c["changed"], c["in_sync"]) for n, c in noop["hosts"].items()} == {
        n: (0, True) for n in both
    }
    human = cli("apply", str(inventory))
    assert human.returncode == 0, human.stderr[-3000:]
    assert "Converge the Dask cluster" not in human.stderr and "[ 1]" not in human.stderr
    assert "2 host(s) ok, 0 task(s) changed" in human.stderr
    assert "(2 in sync, checked over SSH; --full runs every task)" in human.stderr

    # a hand edit of the worker's unit: only that host runs, and the file is put back
    clean = ssh(lab, worker, f"sha256sum {_UNIT}")
    ssh(lab, worker, f"echo '# edited by hand' >> {_UNIT} && systemctl daemon-reload")
    edited = _apply(inventory)
    assert _in_sync(edited) == [scheduler] and edited["ansible_started"]
    assert edited["hosts"][worker]["changed"] > 0 and not edited["hosts"][worker]["in_sync"]
    assert edited["hosts"][scheduler]["changed"] == 0 and edited["hosts"][scheduler]["in_sync"]
    assert "dask-worker.service changed" in edited["sync_check"]["ran"][worker]
    assert ssh(lab, worker, f"sha256sum {_UNIT}") == clean
    assert _in_sync(_apply(inventory)) == both

    # a stopped worker is started again
    ssh(lab, worker, "systemctl stop dask-worker")
    stopped = _apply(inventory)
    assert _in_sync(stopped) == [scheduler]
    assert "inactive" in stopped["sync_check"]["ran"][worker]
    assert ssh(lab, worker, "systemctl is-active dask-worker").strip() == "active"
    assert _in_sync(_apply(inventory)) == both

    # --check with an edited inventory: both would run, nothing changes on the host
    threads = edit_inventory(inventory, tmp_path / "threads.yml", dask_worker_nthreads=3)
    pid = ssh(lab, worker, "systemctl show -p MainPID --value dask-worker")
    checked = _apply(threads, "--check")
    assert checked["check"] and _in_sync(checked) == [] and checked["changed"] is True
    assert checked["hosts"][worker]["changed"] > 0
    assert ssh(lab, worker, f"sha256sum {_UNIT}") == clean
    assert ssh(lab, worker, "systemctl show -p MainPID --value dask-worker") == pid

    # the inventory edit applied: both hosts run (any edit re-runs everyone), then in sync
    applied = _apply(threads)
    assert _in_sync(applied) == [] and applied["hosts"][worker]["changed"] > 0
    assert "--nthreads 3" in ssh(lab, worker, f"cat {_UNIT}")
    again = _apply(threads)
    assert _in_sync(again) == both and again["ansible_started"] is False

    # --full runs every host and every task: still 0 changed (the record is rewritten as is)
    full = _apply(threads, "--full")
    assert full["ansible_started"] and _in_sync(full) == [] and full["changed"] is False
    assert full["sync_check"]["checked"] is False
    assert all(c["ok"] > 0 for c in full["hosts"].values())

    # --check in sync: nothing run; --limit intersects
    assert _apply(threads, "--check")["ansible_started"] is False
    limited = _apply(threads, "--limit", worker)
    assert list(limited["hosts"]) == [worker] and _in_sync(limited) == [worker]

    # an upgrade-style stage (restarts deferred) leaves the host not in sync
    from pydask_deploy.deploy.plan import plan_apply
    from pydask_deploy.deploy.run import run_playbook

    loaded = load_inventory(threads)
    pki = pki_module.ensure_pki(loaded, write=True)
    staged = run_playbook(
        plan_apply(
            loaded,
            limit=worker,
            pki=pki,
            extravars={
                "__dask_defer_restart": True,
                **insync.record_extravars(insync.host_checks(loaded, pki)),
            },
        ),
        lambda _: None,
    )
    assert staged.succeeded
    assert ssh(lab, worker, f"ls /etc/dask/{insync.RECORD_NAME} 2>/dev/null || true") == ""
    after = _apply(threads)
    assert _in_sync(after) == [scheduler]
    assert "no record" in after["sync_check"]["ran"][worker]
