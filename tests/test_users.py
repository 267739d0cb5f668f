"""The users' work on a deployed cluster: their data on a shared directory, their homes,
their account, their GPUs (stand-in device nodes), on one lab converged once.

One lab of two hosts (h1 the scheduler and a worker, h2 a worker: two hosts, not three,
since every host installs the heavy wheels of the workloads) shares a directory of this
machine at the same path in every host, as an NFS mount would be, and has the account
``alice`` made on every host before the first apply, owning a file only she may read under
her home. Each scenario is an edit of the inventory and an apply, in this order: home
directories hidden and nothing writable (the sandbox blocks the users' work); the variables
set (the work runs: dask.dataframe, Parquet, scikit-learn, XGBoost); GPUs on h2 and a path
that exists on h1 only; destroy.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import cli, cluster_client, edit_inventory, lab_env, ssh, wait_for_workers
from lab_factory import LabFactory

from pydask_deploy import contract
from pydask_deploy import lab as lab_module

pytestmark = pytest.mark.lab

PACKAGES = ["pandas", "pyarrow", "scikit-learn", "xgboost-cpu"]
ALICE = 2001  # uid and gid of the account made on every host before apply
PRIVATE = "/home/alice/private.csv"  # mode 0600, alice's: only she may read it
ONLY_ON_H1 = "/srv/only-on-h1"
CPU_HOST, GPU_HOST = "h1", "h2"  # h1 also schedules

# Before apply, on every host: alice (uid 2001, her own group, a home of her own, a shell),
# and her private file.
_ALICE = f"""
set -e
getent group alice >/dev/null || groupadd -g {ALICE} alice
id alice >/dev/null 2>&1 || useradd -m -u {ALICE} -g alice -s /bin/bash -c 'Alice Analyst' alice
chmod 0700 /home/alice
printf 'secret,42\\n' > {PRIVATE}
chown alice:alice {PRIVATE}
chmod 0600 {PRIVATE}
"""

# Stand-in NVIDIA device nodes: any character device bound at their paths.
_STAND_INS = """
set -e
for d in {nodes}; do
  [ -e /dev/$d ] || touch /dev/$d
  mountpoint -q /dev/$d || mount --bind /dev/null /dev/$d
done
"""


@dataclass(frozen=True)
class UsersLab:
    """The lab, its shared directory (the same path here and on every host), where the
    derived inventories go, and ``getent passwd alice`` on each host before any apply."""

    lab: lab_module.Lab
    inventory: Path
    share: Path
    alice: dict[str, str]

    @property
    def data(self) -> Path:
        return self.share / "data"

    @property
    def out(self) -> Path:
        return self.share / "out"

    def getent(self) -> dict[str, str]:
        return {h.name: ssh(self.lab, h.name, "getent passwd alice") for h in self.lab.hosts}

    def apply(
        self,
        name: str,
        *,
        limit: str | None = None,
        host_vars: dict[str, dict[str, Any]] | None = None,
        **all_vars: Any,
    ) -> Path:
        """Write the scenario's inventory (the lab's with ``all_vars``, and ``host_vars`` on
        worker hosts) and apply it."""
        target = edit_inventory(self.inventory, self.inventory.parent / f"{name}.yml", **all_vars)
        data = yaml.safe_load(target.read_text())
        workers = data["all"]["children"]["dask_workers"]["hosts"]
        workers[CPU_HOST] = None  # the scheduler's host works too (defined above)
        for host, values in (host_vars or {}).items():
            workers[host].update(values)
        target.write_text(yaml.safe_dump(data, sort_keys=False))
        args = ["apply", str(target), "--json"] + (["--limit", limit] if limit else [])
        started = time.monotonic()
        done = cli(*args)
        print(f"\napply {name}: {time.monotonic() - started:.1f} s")  # the module's figures
        assert done.returncode == 0, done.stderr[-3000:]
        return target


def _write_csvs(data: Path) -> None:
    """Four CSV files of a key and a value, as the users' data."""
    data.mkdir()
    for part in range(4):
        rows = [f"{'abcde'[(part * 7 + i) % 5]},{(part * 31 + i * 17) % 101}" for i in range(250)]
        (data / f"part{part}.csv").write_text("key,value\n" + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def users_lab(lab_factory: LabFactory) -> Iterator[UsersLab]:
    with lab_factory.boot(2, shares=("share",)) as (lab, inventory):
        share = Path(lab.shares[0].source)
        _write_csvs(share / "data")
        for sub in ("out", "out/result", "out/blocked"):  # alice's, on the "NFS server"
            (share / sub).mkdir()
            os.chown(share / sub, ALICE, ALICE)
        for host in lab.hosts:
            ssh(lab, host.name, _ALICE)
        ssh(lab, CPU_HOST, f"mkdir -p {ONLY_ON_H1} && echo here > {ONLY_ON_H1}/file")
        ssh(lab, CPU_HOST, _STAND_INS.format(nodes="nvidia0"))
        ssh(lab, GPU_HOST, _STAND_INS.format(nodes="nvidia0 nvidia1 nvidiactl nvidia-uvm"))
        users = UsersLab(lab, inventory, share, {})
        yield UsersLab(lab, inventory, share, users.getent())


# Tasks are stdlib functions or functions defined in the tests: the workers cannot import
# this module, so cloudpickle must send a function by value or name one they have.


def _worker(client: Any, lab: lab_module.Lab, name: str) -> str:
    """The address of a worker on host ``name``."""
    address = lab_module.find_host(lab, name).address
    return next(a for a in client.scheduler_info()["workers"] if f"://{address}:" in a)


# --------------------------------------------------------------------------- without the lab


def test_lab_up_with_other_options_says_so_and_exits_2(users_lab: UsersLab) -> None:
    done = cli("lab", "up", "--hosts", "2", env=lab_env(users_lab.lab.config))
    assert done.returncode == 2
    assert f"with --share {users_lab.share} is already up" in done.stderr


# --------------------------------------------------------------------------- home hidden


@pytest.fixture(scope="module")
def closed(users_lab: UsersLab) -> Path:
    """The first apply: alice runs the services, home directories hidden, nothing of the
    share writable (the data directory declared read-only)."""
    return users_lab.apply(
        "closed",
        dask_user="alice",
        dask_python_packages=PACKAGES,
        dask_worker_protect_home=True,  # YAML's unquoted yes
        dask_worker_read_only_paths=[str(users_lab.data)],
    )


def test_apply_leaves_the_existing_account_as_it_was(users_lab: UsersLab, closed: Path) -> None:
    assert users_lab.getent() == users_lab.alice
    for host in users_lab.lab.hosts:  # nothing created, so nothing recorded
        found = ssh(users_lab.lab, host.name, f"ls {contract.ACCOUNT_RECORD} 2>/dev/null || true")
        assert found == ""


def test_an_existing_accounts_key_and_data_are_hers_alone(
    users_lab: UsersLab, closed: Path
) -> None:
    """Her primary group may be shared (``users``): the host's TLS key, with which anyone
    could run code as her on the cluster, and the workers' data are readable by her only."""
    tls = f"/etc/dask/{contract.TLS_DIR}"
    shown = ssh(
        users_lab.lab,
        CPU_HOST,
        f"stat -c '%n %U %G %a' {tls} {tls}/host.key /var/lib/dask /var/lib/dask/worker",
    )
    assert shown.splitlines() == [
        f"{tls} alice root 750",
        f"{tls}/host.key alice root 640",
        "/var/lib/dask alice alice 700",
        "/var/lib/dask/worker alice alice 700",
    ]


def test_the_sandbox_blocks_the_write_and_the_home_read(users_lab: UsersLab, closed: Path) -> None:
    import dask.dataframe as dd

    lab = users_lab.lab
    with cluster_client(closed) as client:
        wait_for_workers(client, 2)
        assert set(client.run(os.getuid).values()) == {ALICE}
        frame = dd.read_csv(f"{users_lab.data}/*.csv")
        assert int(frame.value.sum().compute()) > 0  # the data is readable
        with pytest.raises(OSError, match="Read-only file system"):
            frame.to_parquet(f"{users_lab.out}/blocked")
        home = client.submit(
            Path.read_text, Path(PRIVATE), workers=[_worker(client, lab, CPU_HOST)], pure=False
        )
        with pytest.raises(PermissionError):
            home.result(timeout=60)
    assert not list((users_lab.out / "blocked").iterdir())
    # the same account outside the sandbox reads and writes both: the sandbox is what blocks
    outside = (
        f"runuser -u alice -- sh -c 'cat {PRIVATE} && touch {users_lab.out}/blocked/.probe "
        f"&& rm {users_lab.out}/blocked/.probe'"
    )
    assert ssh(lab, CPU_HOST, outside) == "secret,42\n"


# --------------------------------------------------------------------------- variables set


@pytest.fixture(scope="module")
def opened(users_lab: UsersLab, closed: Path) -> Path:
    """Home directories read-only (the default) and the share's output directory writable."""
    return users_lab.apply(
        "opened",
        limit="dask_workers",
        dask_user="alice",
        dask_python_packages=PACKAGES,
        dask_worker_read_only_paths=[str(users_lab.data)],
        dask_worker_read_write_paths=[str(users_lab.out)],
    )


def test_the_users_data_work_runs_with_the_variables_set(users_lab: UsersLab, opened: Path) -> None:
    import dask.dataframe as dd
    import pandas as pd

    local = pd.concat(pd.read_csv(p) for p in sorted(users_lab.data.glob("*.csv")))
    expected = local.groupby("key").value.sum()
    with cluster_client(opened) as client:
        wait_for_workers(client, 2)
        frame = dd.read_csv(f"{users_lab.data}/*.csv")
        grouped = frame.groupby("key").value.sum().compute()
        assert {str(k): int(v) for k, v in grouped.items()} == {
            str(k): int(v) for k, v in expected.items()
        }
        frame.to_parquet(f"{users_lab.out}/result")
        home = client.submit(
            Path.read_text,
            Path(PRIVATE),
            workers=[_worker(client, users_lab.lab, GPU_HOST)],
            pure=False,
        )
        assert home.result(timeout=60) == "secret,42\n"
    written = sorted((users_lab.out / "result").glob("*.parquet"))
    assert written and {p.stat().st_uid for p in written} == {ALICE}  # alice's files
    back = pd.read_parquet(users_lab.out / "result")
    assert len(back) == len(local) and int(back.value.sum()) == int(local.value.sum())


def test_verify_passes_with_consistent_variables(users_lab: UsersLab, opened: Path) -> None:
    done = cli("verify", str(opened), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    checks = json.loads(done.stdout)["checks"]
    paths = {(c["host"], c["check"]) for c in checks if c["check"].startswith("workers can")}
    assert paths == {
        (host, check)
        for host in (CPU_HOST, GPU_HOST)
        for check in (
            f"workers can read but not write {users_lab.data}",
            f"workers can read and write {users_lab.out}",
        )
    }


def test_grid_search_and_xgboost_train_on_the_cluster(opened: Path) -> None:
    import dask.array as da
    import joblib
    from distributed import get_task_stream
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC
    from xgboost import dask as dxgb

    digits = load_digits()
    grid = {"C": [1e-2, 10], "gamma": [1e-3, 1e-1]}

    def fit() -> GridSearchCV:
        return GridSearchCV(SVC(kernel="rbf"), grid, cv=3).fit(digits.data, digits.target)

    local = fit()
    with cluster_client(opened) as client:
        wait_for_workers(client, 2)
        with joblib.parallel_backend("dask"), get_task_stream(client) as stream:
            remote = fit()
        assert remote.best_params_ == local.best_params_
        assert len({t["worker"] for t in stream.data}) == 2  # both workers fitted

        features = da.random.default_rng(0).random((4000, 8), chunks=(1000, 8))
        labels = (features[:, 0] + features[:, 1] > 1).astype(int)
        train = dxgb.DaskDMatrix(client, features, labels)
        params = {"objective": "binary:logistic", "tree_method": "hist", "nthread": 1}
        booster = dxgb.train(client, params, train, num_boost_round=20)["booster"]
        predicted = dxgb.predict(client, booster, features).compute()
        accuracy = float(((predicted > 0.5) == labels.compute()).mean())
        assert accuracy > 0.9


# --------------------------------------------------------------------------- GPUs, a missing path


@pytest.fixture(scope="module")
def gpus(users_lab: UsersLab, opened: Path) -> Path:
    """h2 gets two GPUs; a read-only path exists on h1 only."""
    return users_lab.apply(
        "gpus",
        limit="dask_workers",
        host_vars={GPU_HOST: {"dask_worker_gpus": 2}},
        dask_user="alice",
        dask_python_packages=PACKAGES,
        dask_worker_read_only_paths=[str(users_lab.data), ONLY_ON_H1],
        dask_worker_read_write_paths=[str(users_lab.out)],
    )


def test_a_declared_path_missing_on_a_host_fails_verify_naming_it(gpus: Path) -> None:
    done = cli("verify", str(gpus))
    assert done.returncode == 1, done.stdout
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1, done.stdout
    assert re.match(
        rf"FAIL\s+{GPU_HOST}\s+workers can read but not write {ONLY_ON_H1}\s+"
        r"`dask_worker_read_only_paths`: missing on the host$",
        failed[0],
    ), failed[0]
    assert re.search(
        rf"PASS\s+{CPU_HOST}\s+workers can read but not write {ONLY_ON_H1}", done.stdout
    )
    # the missing path did not keep the workers down
    registered = rf"PASS\s+{GPU_HOST}\s+workers registered with the scheduler\s+2 of 2"
    assert re.search(registered, done.stdout)


def test_a_gpu_host_runs_one_worker_per_gpu(users_lab: UsersLab, gpus: Path) -> None:
    lab = users_lab.lab
    units = ssh(lab, GPU_HOST, "systemctl list-units --plain --no-legend 'dask-worker*'")
    assert [line.split()[:4] for line in units.splitlines()] == [
        [f"dask-worker@{i}.service", "loaded", "active", "running"] for i in (0, 1)
    ]
    shown = ssh(lab, GPU_HOST, "systemctl show dask-worker@1 -p DevicePolicy -p PrivateDevices")
    assert sorted(shown.split()) == ["DevicePolicy=closed", "PrivateDevices=no"]
    allowed = ssh(lab, GPU_HOST, "systemctl show dask-worker@1 -p DeviceAllow --value")
    for node in ("/dev/nvidiactl rw", "/dev/nvidia-uvm rw", "/dev/nvidia0 rw", "/dev/nvidia1 rw"):
        assert node in allowed

    def gpu() -> tuple[str, str]:
        visible = os.environ["CUDA_VISIBLE_DEVICES"]
        with open(f"/dev/nvidia{visible}", "rb"):
            return visible, os.environ["CUDA_DEVICE_ORDER"]

    host = lab_module.find_host(lab, GPU_HOST)
    with cluster_client(gpus) as client:
        wait_for_workers(client, 3)
        workers = {
            w["name"]: (a, w["resources"])
            for a, w in client.scheduler_info()["workers"].items()
            if f"://{host.address}:" in a
        }
        assert {name: r for name, (_, r) in workers.items()} == {
            f"{GPU_HOST}-gpu0": {"GPU": 1},
            f"{GPU_HOST}-gpu1": {"GPU": 1},
        }
        opened_by = client.run(gpu, workers=[a for a, _ in workers.values()])
        assert sorted(opened_by.values()) == [("0", "PCI_BUS_ID"), ("1", "PCI_BUS_ID")]
        assert client.submit(gpu, resources={"GPU": 1}, pure=False).result(timeout=60)[0] in "01"


def test_a_worker_on_a_host_without_gpus_cannot_open_one(users_lab: UsersLab, gpus: Path) -> None:
    lab = users_lab.lab
    assert ssh(lab, CPU_HOST, "test -c /dev/nvidia0 && echo there").strip() == "there"
    with cluster_client(gpus) as client:
        wait_for_workers(client, 3)
        opening = client.submit(
            Path.read_bytes,
            Path("/dev/nvidia0"),
            workers=[_worker(client, lab, CPU_HOST)],
            pure=False,
        )
        with pytest.raises(FileNotFoundError):  # PrivateDevices: not in its /dev at all
            opening.result(timeout=60)


def _exposure(lab: lab_module.Lab, host: str, unit: str) -> float:
    out = ssh(lab, host, f"systemd-analyze security {unit} --no-pager | tail -n 1")
    found = re.search(r"exposure level for \S+: (\d+\.\d+)", out)
    assert found, out
    return float(found[1])


def test_the_units_stay_hardened_with_data_paths_and_gpus(users_lab: UsersLab, gpus: Path) -> None:
    lab = users_lab.lab
    with_paths = _exposure(lab, CPU_HOST, "dask-worker.service")
    with_gpus = _exposure(lab, GPU_HOST, "dask-worker@0.service")
    print(f"\nsystemd-analyze security: data paths {with_paths}, data paths and GPUs {with_gpus}")
    assert with_paths <= 2.0 and with_gpus <= 2.0


def test_status_shows_the_gpus_and_logs_the_gpu_units(users_lab: UsersLab, gpus: Path) -> None:
    done = cli("status", str(gpus), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    hosts = {h["name"]: h for h in json.loads(done.stdout)["hosts"]}
    assert hosts[GPU_HOST]["gpus"] == {"declared": 2, "registered": 2.0}
    assert [u["unit"] for u in hosts[GPU_HOST]["units"]] == ["dask-worker@0", "dask-worker@1"]
    assert hosts[CPU_HOST]["gpus"] == {"declared": 0, "registered": 0.0}
    table = cli("status", str(gpus))
    assert re.search(rf"{GPU_HOST}\s+worker@1\s+active \(running\).*\s1/1\s+1/1\s", table.stdout)
    logs = cli("logs", str(gpus), GPU_HOST, "-n", "50")
    assert logs.returncode == 0, logs.stderr
    assert " dask-worker@0: " in logs.stdout and " dask-worker@1: " in logs.stdout


# --------------------------------------------------------------------------- destroy


def test_destroy_remove_user_leaves_the_existing_account_exactly_as_it_was(
    users_lab: UsersLab, gpus: Path
) -> None:
    done = cli("destroy", str(gpus), "--yes", "--remove-user")
    assert done.returncode == 0, done.stderr[-3000:]
    assert users_lab.getent() == users_lab.alice
    lab = users_lab.lab
    for host in lab.hosts:
        left = ssh(
            lab,
            host.name,
            "ls /etc/systemd/system | grep dask; systemctl list-units --all --plain "
            "--no-legend 'dask-*'; ls -d /opt/dask /etc/dask /var/lib/dask 2>/dev/null; "
            f"id alice; stat -c '%U %a' {PRIVATE}; true",
        )
        assert left.splitlines() == [
            "uid=2001(alice) gid=2001(alice) groups=2001(alice)",
            "alice 600",
        ], left
