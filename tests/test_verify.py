"""verify's versions line and its warnings about this machine's client
(pydask_deploy/observe/verify.py); the checks themselves run against lab hosts in
test_apply.py, test_tls.py and test_reach.py."""

from __future__ import annotations

from pydask_deploy.observe.verify import client_warnings

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
