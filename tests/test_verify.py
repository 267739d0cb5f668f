"""verify's versions line, its warnings about this machine's client and how it reads the
data path checks (pydask_deploy/observe/verify.py); the checks themselves run against lab
hosts in test_apply.py, test_tls.py, test_reach.py and test_users.py."""

from __future__ import annotations

import subprocess

import pytest

from pydask_deploy.observe import verify
from pydask_deploy.observe.verify import client_warnings, path_checks, paths_script

CLUSTER = {"python": "3.11.2", "distributed": "2026.8.0", "dask": "2026.8.0"}


def test_a_client_on_the_same_versions_gets_no_warning() -> None:
    assert client_warnings(CLUSTER, {**CLUSTER, "python": "3.11.9"}) == []


def test_a_client_on_other_versions_is_warned_once_per_package() -> None:
    here = {"python": "3.13.1", "distributed": "2026.9.0", "dask": "2026.8.0"}
    found = client_warnings(CLUSTER, here)
    assert found == [
        "this machine's client runs python 3.13, the cluster 3.11: functions it pickles may "
        "not load on the workers",
        "this machine's client runs distributed 2026.9.0, the cluster 2026.8.0: clients, "
        "scheduler and workers must run the same version",
    ]
    assert client_warnings({}, here) == []  # nothing known of the cluster: nothing to say


_PATHS = (
    ("dask_worker_read_write_paths", "rw", "/srv/out"),
    ("dask_worker_read_write_paths", "rw", "/srv/gone"),
    ("dask_worker_read_only_paths", "ro", "/srv/data"),
    ("dask_worker_read_only_paths", "ro", "/home/alice/data.csv"),
)


def test_each_declared_path_is_a_check_naming_the_path_and_its_variable() -> None:
    out = "\n".join(
        [
            "@@paths",
            "dask_worker_read_write_paths\trw\tunwritable\t/srv/out\tmktemp: failed to "
            "create file via template '/srv/out/.x': Read-only file system",
            "dask_worker_read_write_paths\trw\tmissing\t/srv/gone",  # empty error, stripped
            "dask_worker_read_only_paths\tro\tok\t/srv/data\t",
            "@@end",
        ]
    )
    checks = path_checks("h2", out, _PATHS)
    assert [(c.host, c.name, c.passed, c.detail) for c in checks] == [
        (
            "h2",
            "workers can read and write /srv/out",
            False,
            "`dask_worker_read_write_paths`: the workers cannot write it (mktemp: failed to "
            "create file via template '/srv/out/.x': Read-only file system)",
        ),
        (
            "h2",
            "workers can read and write /srv/gone",
            False,
            "`dask_worker_read_write_paths`: missing on the host",
        ),
        ("h2", "workers can read but not write /srv/data", True, "`dask_worker_read_only_paths`"),
        (
            "h2",
            "workers can read but not write /home/alice/data.csv",
            False,
            "`dask_worker_read_only_paths`: unchecked (the check did not finish)",
        ),
    ]


def test_no_running_worker_fails_every_path_and_says_why() -> None:
    out = "@@paths\n@@paths-unavailable dask-worker is not running\n"
    checks = path_checks("h3", out, _PATHS[:1])
    assert [(c.passed, c.detail) for c in checks] == [
        (False, "`dask_worker_read_write_paths`: not checked, dask-worker is not running")
    ]


def test_the_paths_script_is_valid_sh_and_quotes_the_paths() -> None:
    script = paths_script("dask-worker@0", [("dask_worker_read_only_paths", "ro", "/srv/it's")])
    assert "check dask_worker_read_only_paths ro '/srv/it'\"'\"'s'" in script
    done = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


class _Answers:
    """A testinfra host that answers every command with one output."""

    def __init__(self, stdout: str) -> None:
        self.stdout = stdout

    def run(self, command: str, *args: str) -> _Answers:
        return self


@pytest.mark.parametrize(
    ("stdout", "running", "enabled", "details"),
    [
        ("0 active\n0 enabled\n", True, True, ("active", "enabled")),
        ("0 active\n0 static\n", True, True, ("active", "static")),
        ("3 inactive\n1 \n", False, False, ("inactive", "not found")),
        ("3 failed\n1 disabled\n", False, False, ("failed", "disabled")),
        ("", False, False, ("not found", "not found")),  # the command did not run
    ],
)
def test_a_units_checks_follow_systemctls_exit_codes(
    stdout: str, running: bool, enabled: bool, details: tuple[str, str]
) -> None:
    checks = verify._unit_checks(_Answers(stdout), "h2", "dask-worker.service")
    assert [c.passed for c in checks] == [running, enabled]
    assert tuple(c.detail for c in checks) == details
    assert [c.name for c in checks] == [
        "dask-worker.service is running",
        "dask-worker.service is enabled at boot",
    ]
