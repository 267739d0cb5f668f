"""Mutual TLS on a real cluster: who gets in, who does not, and what the hosts hold."""

from __future__ import annotations

import json
import re
import socket
import ssl
from pathlib import Path

import pytest
from distributed import Client, Security
from helpers import Cluster, cli, edit_inventory, ssh, wait_for_workers

from pydask_deploy.deploy import pki
from pydask_deploy.inventory import load_inventory

pytestmark = pytest.mark.lab

# The hardened units' exposure, measured with `systemd-analyze security` (README: Security);
# the unit as it was before hardening scored 8.4 EXPOSED.
MAX_EXPOSURE = 2.0


def refused(address: str, security: Security | None) -> BaseException:
    """Connect as a client and return why it failed (the test fails if it got in)."""
    try:
        with Client(address, security=security, timeout=5) as client:  # type: ignore[no-untyped-call]
            client.submit(lambda: 1).result(timeout=5)
    except (OSError, TimeoutError) as exc:
        return exc
    raise AssertionError(f"a client got into {address} with {security!r}")


def test_a_client_with_the_client_certificate_computes(cluster: Cluster) -> None:
    assert cluster.address.startswith("tls://")
    with cluster.client() as client:
        wait_for_workers(client, len(cluster.lab.hosts) - 1)
        assert client.submit(lambda x: x * 2, 21).result(timeout=30) == 42
        workers = client.scheduler_info()["workers"]
        assert workers and all(address.startswith("tls://") for address in workers)


def test_a_plain_tcp_client_is_refused(cluster: Cluster) -> None:
    plain = cluster.address.replace("tls://", "tcp://")
    refused(plain, None)


def first_bytes(address: str, ca_file: str, cert: tuple[str, str] | None) -> bytes:
    """Open a TLS connection to the scheduler trusting its CA, and read what it sends first.

    distributed cannot make a TLS client without a certificate, so this one is plain ssl.
    """
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False
    if cert is not None:
        context.load_cert_chain(*cert)
    with socket.create_connection((host, int(port)), 5) as raw, context.wrap_socket(raw) as tls:
        tls.settimeout(5)
        return tls.recv(1)


def test_a_tls_client_without_a_certificate_is_refused(cluster: Cluster) -> None:
    security = cluster.security()
    assert security is not None
    ca_file, cert = security.tls_ca_file, (security.tls_client_cert, security.tls_client_key)
    assert first_bytes(cluster.address, ca_file, cert)  # with the certificate: it talks
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
        first_bytes(cluster.address, ca_file, None)


def test_a_client_certificate_from_another_ca_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    # the same hosts and names, but a CA of its own: a certificate that looks right
    copy = edit_inventory(
        cluster.inventory, tmp_path / "stranger.yml", dask_tls_pki_dir=str(tmp_path / "pki")
    )
    stranger = pki.ensure_pki(load_inventory(copy))
    assert stranger.directory != pki.pki_dir(load_inventory(cluster.inventory))
    security = cluster.security()
    assert security is not None
    forged = Security(  # type: ignore[no-untyped-call]
        tls_ca_file=security.tls_ca_file,  # it trusts the real scheduler ...
        tls_client_cert=str(stranger.client_cert),  # ... but shows a stranger's certificate
        tls_client_key=str(stranger.client_key),
        require_encryption=True,
    )
    refused(cluster.address, forged)


def test_hosts_hold_their_own_certificate_and_never_the_ca_key(cluster: Cluster) -> None:
    made = pki.ensure_pki(load_inventory(cluster.inventory), write=False)
    assert made.issued == ()
    for host in cluster.lab.hosts:
        listing = ssh(cluster.lab, host.name, "stat -c '%n %U %G %a' /etc/dask/tls/*")
        assert listing.split("\n")[:3] == [
            "/etc/dask/tls/ca.crt root dask 644",
            "/etc/dask/tls/host.crt root dask 644",
            "/etc/dask/tls/host.key root dask 640",
        ]
        on_host = ssh(cluster.lab, host.name, "cat /etc/dask/tls/host.crt")
        assert on_host == made.hosts[host.name][0].read_text()
        ca_key = (made.directory / "ca.key").read_text().strip().splitlines()[1]
        found = ssh(cluster.lab, host.name, f"grep -rlF {ca_key!r} /etc /opt /var/lib || true")
        assert found == ""


def test_units_run_as_dask_with_tls_and_hardening(cluster: Cluster) -> None:
    for host, unit in [
        (cluster.lab.hosts[0], "dask-scheduler"),
        (cluster.lab.hosts[1], "dask-worker"),
    ]:
        shown = ssh(cluster.lab, host.name, f"systemctl show -p User -p ExecStart {unit}")
        assert "User=dask" in shown
        assert "--tls-key /etc/dask/tls/host.key" in shown
        report = ssh(cluster.lab, host.name, f"systemd-analyze security --no-pager {unit}")
        score = float(re.findall(r"Overall exposure level for \S+: ([\d.]+)", report)[0])
        assert score <= MAX_EXPOSURE, report[-3000:]


def test_a_reissued_certificate_reaches_its_host_and_no_key_is_shown(cluster: Cluster) -> None:
    made = pki.ensure_pki(load_inventory(cluster.inventory), write=False)
    worker = cluster.lab.hosts[-1].name
    for path in made.hosts[worker]:
        path.unlink()
    secrets = [p.read_text() for p in made.directory.rglob("*.key")]
    result = cli("apply", str(cluster.inventory), "--diff")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{worker} (missing)" in result.stderr
    key = made.hosts[worker][1].read_text()
    for text in (result.stdout, result.stderr):
        assert "PRIVATE KEY" not in text
        for secret in [*secrets, key]:
            assert secret.strip().splitlines()[1] not in text
    assert (
        ssh(cluster.lab, worker, "cat /etc/dask/tls/host.crt") == made.hosts[worker][0].read_text()
    )
    with cluster.client() as client:  # the worker restarted with its new certificate
        wait_for_workers(client, len(cluster.lab.hosts) - 1)
        assert client.submit(lambda: 2 + 2).result(timeout=30) == 4
    again = cli("apply", str(cluster.inventory), "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads(again.stdout)
    assert report["totals"]["changed"] == 0
    assert report["certificates_issued"] == [] and report["warnings"] == []


def test_client_config_gives_what_security_takes(cluster: Cluster) -> None:
    result = cli("client-config", str(cluster.inventory), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["address"] == cluster.address
    names = ("tls_ca_file", "tls_client_cert", "tls_client_key")
    security = Security(**{k: document[k] for k in names}, require_encryption=True)  # type: ignore[no-untyped-call]
    with Client(document["address"], security=security, timeout=30) as client:  # type: ignore[no-untyped-call]
        assert client.submit(lambda: "ok").result(timeout=30) == "ok"


def test_a_renamed_inventory_is_refused_before_anything_changes(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A copy of the inventory under another name has no certificate directory of its own:
    apply would make a new CA and lock every client out. It stops, changing nothing."""
    renamed = tmp_path / "prod-new.yml"
    renamed.write_text(cluster.inventory.read_text().replace("dask_tls_pki_dir", "# was"))
    worker = cluster.lab.hosts[1].name
    ca_before = ssh(cluster.lab, worker, "cat /etc/dask/tls/ca.crt")
    pid_before = ssh(cluster.lab, worker, "systemctl show -p MainPID --value dask-worker")
    for args in ([], ["--check"]):
        refused_apply = cli("apply", str(renamed), *args)
        assert refused_apply.returncode == 2, refused_apply.stderr[-3000:]
        message = refused_apply.stderr
        ours = pki.fingerprint(ca_before.encode())
        assert f"{worker}" in message and ours in message  # the host and the CA it carries
        assert f"{tmp_path / 'prod-new-pki'} holds no CA" in message
        assert "`dask_tls_pki_dir`" in message and f"apply {renamed} --new-ca" in message
        assert "PLAY" not in message and "Converge" not in message
    assert not (tmp_path / "prod-new-pki").exists()
    assert ssh(cluster.lab, worker, "cat /etc/dask/tls/ca.crt") == ca_before
    assert ssh(cluster.lab, worker, "systemctl show -p MainPID --value dask-worker") == pid_before


def test_rotating_the_ca_reissues_everything_and_refuses_the_old_clients(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The README's procedure: move ca.crt and ca.key aside, apply --new-ca."""
    directory = pki.pki_dir(load_inventory(cluster.inventory))
    old = {name: (directory / name).read_bytes() for name in ("ca.crt", "client.crt", "client.key")}
    for name, content in old.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "client.key").chmod(0o600)
    aside = tmp_path / "aside"
    aside.mkdir()
    for name in ("ca.crt", "ca.key"):
        (directory / name).rename(aside / name)

    # without --new-ca, apply sees the hosts on another CA than the inventory's and stops
    stopped = cli("apply", str(cluster.inventory))
    assert stopped.returncode == 2 and "--new-ca" in stopped.stderr, stopped.stderr[-3000:]
    assert not (directory / "ca.crt").exists()
    rotated = cli("apply", str(cluster.inventory), "--new-ca", "--json")
    assert rotated.returncode == 0, rotated.stderr[-3000:]
    issued = {i["name"] for i in json.loads(rotated.stdout)["certificates_issued"]}
    assert issued == {"CA", "client", *(h.name for h in cluster.lab.hosts)}
    new_ca = (directory / "ca.crt").read_text()
    assert new_ca.encode() != old["ca.crt"]
    for host in cluster.lab.hosts:  # every host holds the new CA and runs on it
        assert ssh(cluster.lab, host.name, "cat /etc/dask/tls/ca.crt") == new_ca
    with cluster.client() as client:
        wait_for_workers(client, len(cluster.lab.hosts) - 1)
        assert client.submit(lambda: 5 * 5).result(timeout=30) == 25
    before = Security(  # type: ignore[no-untyped-call]
        tls_ca_file=str(tmp_path / "ca.crt"),
        tls_client_cert=str(tmp_path / "client.crt"),
        tls_client_key=str(tmp_path / "client.key"),
        require_encryption=True,
    )
    assert refused(cluster.address, before)  # the users' old files no longer get in

    again = cli("apply", str(cluster.inventory), "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads(again.stdout)
    assert report["totals"]["changed"] == 0 and report["certificates_issued"] == []


def test_dask_tls_false_works_and_warns(cluster: Cluster, tmp_path: Path) -> None:
    """Runs last: turns TLS off on the session cluster, then back on as the others expect it."""
    plain = edit_inventory(cluster.inventory, tmp_path / "plain.yml", dask_tls=False)
    try:
        result = cli("apply", str(plain), "--json")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "warning: dask_tls is false" in result.stderr
        report = json.loads(result.stdout)
        assert report["warnings"] and "dask_tls is false" in report["warnings"][0]
        address = f"tcp://{cluster.lab.hosts[0].address}:8786"
        with Client(address, timeout=30) as client:  # type: ignore[no-untyped-call]
            wait_for_workers(client, len(cluster.lab.hosts) - 1)
            assert client.submit(lambda: 3 * 3).result(timeout=30) == 9
        verified = cli("verify", str(plain))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        gone = ssh(cluster.lab, cluster.lab.hosts[1].name, "test -e /etc/dask/tls || echo gone")
        assert gone.strip() == "gone"
        human = cli("apply", str(plain))  # the warning comes on every apply
        assert human.returncode == 0 and "warning: dask_tls is false" in human.stderr
    finally:
        back = cli("apply", str(cluster.inventory))
        assert back.returncode == 0, back.stderr[-3000:]
    with cluster.client() as client:
        wait_for_workers(client, len(cluster.lab.hosts) - 1)
    verified = cli("verify", str(cluster.inventory))
    assert verified.returncode == 0, verified.stdout + verified.stderr
