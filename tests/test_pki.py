"""The cluster's certificates (pki.py) and the client's view of them (connection.py)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from pydask_deploy.deploy import pki
from pydask_deploy.deploy.plan import plan_apply
from pydask_deploy.errors import UsageError
from pydask_deploy.inventory import Host, Inventory, role_defaults
from pydask_deploy.observe import connection, scheduler

NOW = datetime.datetime(2026, 9, 1, tzinfo=datetime.UTC)


def make_inventory(path: Path, **all_vars: object) -> Inventory:
    """An inventory value (no file needed): h1 the scheduler, h2 and w3 workers."""
    defaults = {k: v for k, v in role_defaults().items() if k.startswith("dask_")}

    def host(name: str, address: str) -> Host:
        return Host(name, address, vars=MappingProxyType({"ansible_host": address, **all_vars}))

    return Inventory(
        path=path,
        scheduler=host("h1", "10.0.0.11"),
        workers=(host("h2", "10.0.0.12"), host("w3", "w3.example.org")),
        defaults=MappingProxyType(defaults),
    )


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def names(certificate: x509.Certificate) -> set[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*san.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


def fingerprints(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*.*"))}


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    return make_inventory(tmp_path / "prod.yml")


def test_first_call_makes_ca_hosts_and_client_beside_the_inventory(
    inventory: Inventory, tmp_path: Path
) -> None:
    made = pki.ensure_pki(inventory, now=NOW)
    assert made.directory == tmp_path / "prod-pki"
    assert [i.name for i in made.issued] == ["CA", "h1", "h2", "w3", "client"]
    for path in (
        "ca.crt",
        "ca.key",
        "client.crt",
        "client.key",
        "hosts/h1.crt",
        "hosts/h1.key",
        "hosts/w3.key",
    ):
        assert (made.directory / path).is_file(), path
    assert made.hosts["h2"] == (made.directory / "hosts/h2.crt", made.directory / "hosts/h2.key")
    assert "issued 5 certificate(s)" in made.summary()


def test_private_keys_are_0600_and_the_directory_0700(inventory: Inventory) -> None:
    made = pki.ensure_pki(inventory, now=NOW)
    assert stat.S_IMODE(made.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((made.directory / "hosts").stat().st_mode) == 0o700
    keys = [*made.directory.glob("*.key"), *made.directory.glob("hosts/*.key")]
    assert len(keys) == 5
    assert {stat.S_IMODE(k.stat().st_mode) for k in keys} == {0o600}
    # a loosened key is tightened again on the next call
    (made.directory / "client.key").chmod(0o644)
    pki.ensure_pki(inventory, now=NOW)
    assert stat.S_IMODE((made.directory / "client.key").stat().st_mode) == 0o600


def test_certificates_carry_names_addresses_and_usages(inventory: Inventory) -> None:
    made = pki.ensure_pki(inventory, now=NOW)
    ca = cert(made.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.not_valid_after_utc - NOW > datetime.timedelta(days=3600)
    h1 = cert(made.hosts["h1"][0])
    assert names(h1) == {"h1", "10.0.0.11"}
    san = h1.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.11")]
    assert names(cert(made.hosts["w3"][0])) == {"w3", "w3.example.org"}
    usages = h1.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    client = cert(made.client_cert)
    usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert h1.not_valid_after_utc - NOW == datetime.timedelta(days=825)
    for leaf in (h1, client):
        leaf.verify_directly_issued_by(ca)
    assert not h1.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_the_scheduler_certificate_names_the_configured_scheduler_address(
    tmp_path: Path,
) -> None:
    inventory = make_inventory(tmp_path / "c.yml", dask_scheduler_address="sched.example.org")
    made = pki.ensure_pki(inventory, now=NOW)
    assert names(cert(made.hosts["h1"][0])) == {"h1", "10.0.0.11", "sched.example.org"}
    assert names(cert(made.hosts["h2"][0])) == {"h2", "10.0.0.12"}


def test_python_ssl_accepts_the_files_both_ways(inventory: Inventory) -> None:
    """The files load into ssl contexts the way distributed builds them (mutual TLS)."""
    made = pki.ensure_pki(inventory, now=NOW)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(made.ca_cert))
    server.load_cert_chain(*map(str, made.hosts["h1"]))
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(made.ca_cert))
    client.load_cert_chain(str(made.client_cert), str(made.client_key))


def test_second_call_issues_nothing_and_changes_no_file(inventory: Inventory) -> None:
    made = pki.ensure_pki(inventory, now=NOW)
    before = fingerprints(made.directory)
    again = pki.ensure_pki(inventory, now=NOW + datetime.timedelta(days=100))
    assert again.issued == ()
    assert "none issued" in again.summary()
    assert fingerprints(made.directory) == before


def test_a_new_host_gets_a_certificate_and_the_others_keep_theirs(
    inventory: Inventory, tmp_path: Path
) -> None:
    made = pki.ensure_pki(inventory, now=NOW)
    before = fingerprints(made.directory)
    bigger = make_inventory(tmp_path / "prod.yml")
    extra = Host("h4", "10.0.0.14", vars=MappingProxyType({"ansible_host": "10.0.0.14"}))
    bigger = Inventory(bigger.path, bigger.scheduler, (*bigger.workers, extra), bigger.defaults)
    again = pki.ensure_pki(bigger, now=NOW)
    assert again.issued == (pki.Issued("h4", "missing"),)
    after = fingerprints(made.directory)
    assert {k: v for k, v in after.items() if "h4" not in k} == before


def test_a_changed_address_reissues_that_host_only(inventory: Inventory, tmp_path: Path) -> None:
    pki.ensure_pki(inventory, now=NOW)
    moved = Host("h2", "10.0.0.99", vars=MappingProxyType({"ansible_host": "10.0.0.99"}))
    changed = Inventory(inventory.path, inventory.scheduler, (moved, inventory.workers[1]))
    changed = Inventory(changed.path, changed.scheduler, changed.workers, inventory.defaults)
    again = pki.ensure_pki(changed, now=NOW)
    assert again.issued == (pki.Issued("h2", "names changed"),)
    assert names(cert(again.hosts["h2"][0])) == {"h2", "10.0.0.99"}


def test_certificates_near_expiry_are_reissued(inventory: Inventory) -> None:
    pki.ensure_pki(inventory, now=NOW)
    later = NOW + datetime.timedelta(days=825 - 29)  # inside the 30-day renewal window
    again = pki.ensure_pki(inventory, now=later)
    assert [i.name for i in again.issued] == ["h1", "h2", "w3", "client"]
    assert all(i.reason.startswith("expires ") for i in again.issued)
    assert pki.ensure_pki(inventory, now=later).issued == ()


def test_lifetime_and_renewal_window_come_from_the_inventory(tmp_path: Path) -> None:
    inventory = make_inventory(tmp_path / "p.yml", dask_tls_cert_days=90, dask_tls_renew_days=10)
    made = pki.ensure_pki(inventory, now=NOW)
    assert cert(made.client_cert).not_valid_after_utc - NOW == datetime.timedelta(days=90)
    assert pki.ensure_pki(inventory, now=NOW + datetime.timedelta(days=79)).issued == ()
    assert len(pki.ensure_pki(inventory, now=NOW + datetime.timedelta(days=81)).issued) == 4
    bad = make_inventory(tmp_path / "q.yml", dask_tls_cert_days=30, dask_tls_renew_days=30)
    with pytest.raises(UsageError, match="dask_tls_renew_days"):
        pki.ensure_pki(bad, now=NOW)


def test_a_certificate_from_another_ca_is_reissued(inventory: Inventory, tmp_path: Path) -> None:
    made = pki.ensure_pki(inventory, now=NOW)
    other = pki.ensure_pki(make_inventory(tmp_path / "other.yml"), now=NOW)
    for suffix in (".crt", ".key"):
        (made.directory / f"hosts/h2{suffix}").write_bytes(
            (other.directory / f"hosts/h2{suffix}").read_bytes()
        )
    again = pki.ensure_pki(inventory, now=NOW)
    assert again.issued == (pki.Issued("h2", "not signed by the current CA"),)
    cert(again.hosts["h2"][0]).verify_directly_issued_by(cert(made.ca_cert))


def test_a_key_that_does_not_match_its_certificate_is_reissued(inventory: Inventory) -> None:
    made = pki.ensure_pki(inventory, now=NOW)
    made.client_key.write_bytes(made.hosts["h1"][1].read_bytes())
    assert pki.ensure_pki(inventory, now=NOW).issued == (
        pki.Issued("client", "key does not match"),
    )


def test_rotating_the_ca_reissues_everything(inventory: Inventory) -> None:
    made = pki.ensure_pki(inventory, now=NOW)
    old_ca = made.ca_cert.read_bytes()
    # README, "Rotating the CA": move the CA pair aside, then apply
    for name in ("ca.crt", "ca.key"):
        (made.directory / name).rename(made.directory / f"{name}.old")
    again = pki.ensure_pki(inventory, now=NOW)
    assert again.ca_cert.read_bytes() != old_ca
    assert [i.name for i in again.issued] == ["CA", "h1", "h2", "w3", "client"]
    assert {i.reason for i in again.issued[1:]} == {"not signed by the current CA"}


def test_half_a_ca_is_an_error_not_silently_replaced(inventory: Inventory) -> None:
    made = pki.ensure_pki(inventory, now=NOW)
    (made.directory / "ca.key").unlink()
    with pytest.raises(pki.PkiError, match=r"ca\.key is missing"):
        pki.ensure_pki(inventory, now=NOW)


def test_dask_tls_pki_dir_moves_the_directory(tmp_path: Path) -> None:
    absolute = make_inventory(tmp_path / "a.yml", dask_tls_pki_dir=str(tmp_path / "shared"))
    assert pki.ensure_pki(absolute, now=NOW).directory == tmp_path / "shared"
    relative = make_inventory(tmp_path / "b.yml", dask_tls_pki_dir="shared")
    assert pki.pki_dir(relative) == tmp_path / "shared"
    assert pki.ensure_pki(relative, now=NOW).issued == ()  # the same cluster: nothing new
    assert connection.client_config(relative).tls_ca_file == tmp_path / "shared" / "ca.crt"


def test_check_mode_writes_nothing_and_says_what_it_would_issue(inventory: Inventory) -> None:
    dry = pki.ensure_pki(inventory, write=False, now=NOW)
    assert not dry.directory.exists()
    assert [i.name for i in dry.issued] == ["CA", "h1", "h2", "w3", "client"]
    assert dry.summary(check=True).startswith("would issue 5")
    plan = plan_apply(inventory, check=True, pki=dry)
    assert plan.extravars["__dask_tls_src_dir"] == str(dry.directory)
    assert plan.extravars["__dask_tls_pending"] is True
    pki.ensure_pki(inventory, now=NOW)
    current = pki.ensure_pki(inventory, write=False, now=NOW)
    assert current.issued == ()
    assert "__dask_tls_pending" not in plan_apply(inventory, check=True, pki=current).extravars


def test_no_key_material_in_the_summary(inventory: Inventory) -> None:
    made = pki.ensure_pki(inventory, now=NOW)
    text = made.summary() + repr(made)
    assert "PRIVATE KEY" not in text and "BEGIN" not in text


# --------------------------------------------------------------------------- connection


def test_client_config_with_tls(inventory: Inventory) -> None:
    with pytest.raises(pki.PkiError, match="pydask-deploy apply"):
        connection.client_config(inventory)
    made = pki.ensure_pki(inventory, now=NOW)
    config = connection.client_config(inventory)
    assert config.address == "tls://10.0.0.11:8786"
    assert connection.cluster_address(inventory) == config.address
    assert (config.tls_ca_file, config.tls_client_cert, config.tls_client_key) == (
        made.ca_cert,
        made.client_cert,
        made.client_key,
    )
    assert config.dashboard == "http://10.0.0.11:8787"
    security = scheduler.client_security(inventory)
    assert security is not None and security.require_encryption
    assert security.tls_client_key == str(made.client_key)


def test_client_config_without_tls(tmp_path: Path) -> None:
    inventory = make_inventory(tmp_path / "open.yml", dask_tls=False)
    assert connection.cluster_address(inventory) == "tcp://10.0.0.11:8786"
    assert scheduler.client_security(inventory) is None
    assert connection.client_config(inventory).to_json()["tls_ca_file"] is None


def test_dashboard_address_and_scheduler_address_from_the_inventory(tmp_path: Path) -> None:
    inventory = make_inventory(
        tmp_path / "c.yml", dask_scheduler_address="sched", dask_dashboard_address="127.0.0.1"
    )
    assert connection.cluster_address(inventory) == "tls://sched:8786"
    assert connection.dashboard_url(inventory) == "http://127.0.0.1:8787"


def test_tls_must_be_the_same_on_every_host(tmp_path: Path) -> None:
    inventory = make_inventory(tmp_path / "c.yml")
    mixed = Host("h2", "10.0.0.12", vars=MappingProxyType({"dask_tls": False}))
    inventory = Inventory(
        inventory.path, inventory.scheduler, (mixed, inventory.workers[1]), inventory.defaults
    )
    with pytest.raises(UsageError, match="`dask_tls` must be the same on every host"):
        connection.tls_enabled(inventory)


def test_client_config_command_prints_json_and_a_python_example(tmp_path: Path) -> None:
    inventory_file = tmp_path / "lab.yml"
    inventory_file.write_text(
        "all:\n  children:\n"
        "    dask_scheduler:\n      hosts:\n        h1: {ansible_host: 10.0.0.11}\n"
        "    dask_workers:\n      hosts:\n        h2: {ansible_host: 10.0.0.12}\n"
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "pydask_deploy", "client-config", str(inventory_file)]
        return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=120)

    missing = run("--json")
    assert missing.returncode == 1 and "pydask-deploy apply" in missing.stderr
    assert missing.stdout == ""
    from pydask_deploy.inventory import load_inventory

    made = pki.ensure_pki(load_inventory(inventory_file))
    document = json.loads(run("--json").stdout)
    assert document["address"] == "tls://10.0.0.11:8786"
    assert document["tls_ca_file"] == str(made.ca_cert)
    assert document["tls_client_cert"] == str(made.client_cert)
    assert document["tls_client_key"] == str(made.client_key)
    human = run()
    assert human.returncode == 0
    assert "ca-file: " + str(made.ca_cert) in human.stdout
    assert "from distributed import Client, Security" in human.stdout
    assert "ssh -N -L 8787:10.0.0.11:8787 10.0.0.11" in human.stdout
    assert "PRIVATE KEY" not in human.stdout + json.dumps(document)
