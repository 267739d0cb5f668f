"""The checks apply and upgrade make before anything changes (pydask_deploy/deploy/apply.py):
the hosts' Python minor versions and the cluster CA they carry, from the first SSH round's
output. Pure logic here; the lab tests refuse a renamed inventory (test_tls.py) and a mixed
Debian cluster (test_releases.py) on real hosts."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pydask_deploy.deploy import insync
from pydask_deploy.deploy import pki as pki_module
from pydask_deploy.deploy.apply import check_ca, check_python
from pydask_deploy.errors import CaMismatchError, PythonMismatchError
from pydask_deploy.inventory import Inventory, load_inventory
from pydask_deploy.observe import remote


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    path = tmp_path / "prod.yml"
    workers = {f"h{i}": {"ansible_host": f"10.0.0.1{i}"} for i in (2, 3)}
    path.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "dask_scheduler": {"hosts": {"h1": {"ansible_host": "10.0.0.11"}}},
                        "dask_workers": {"hosts": workers},
                    }
                }
            }
        )
    )
    return load_inventory(path)


def _answer(*sections: str) -> remote.CommandResult:
    return remote.CommandResult("\n".join([*sections, "@@end"]), "", 0, 0.1)


def test_the_first_round_reads_the_ca_and_the_python_of_this_machine(
    inventory: Inventory, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    command = insync.read_command(str(ca), None, sys.executable)
    done = subprocess.run(shlex.split(command), capture_output=True, text=True, check=True)
    assert insync.python_in(done.stdout) == ".".join(map(str, sys.version_info[:3]))
    assert insync.ca_in(done.stdout) == ca.read_bytes()
    missing = insync.read_command(str(tmp_path / "none"), None, "/no/such/python3")
    done = subprocess.run(shlex.split(missing), capture_output=True, text=True, check=True)
    assert insync.python_in(done.stdout) is None and insync.ca_in(done.stdout) is None


def test_one_python_minor_version_passes(inventory: Inventory) -> None:
    check_python(
        inventory,
        {
            "h1": _answer("@@python", "3.11.2"),
            "h2": _answer("@@python", "3.11.9"),  # a patch level does not matter
            "h3": remote.Unreachable("no answer"),
        },
    )


def test_python_minor_versions_that_differ_are_refused(inventory: Inventory) -> None:
    outputs = {
        "h1": _answer("@@python", "3.11.2"),
        "h2": _answer("@@python", "3.11.2"),
        "h3": _answer("@@python", "3.13.5"),
    }
    with pytest.raises(PythonMismatchError) as refused:
        check_python(inventory, outputs)
    message = str(refused.value)
    assert "h1, h2: Python 3.11.2; h3: Python 3.13.5" in message
    assert "`dask_venv_python`" in message and "dask_runtime: conda" in message
    assert refused.value.exit_code == 2


def test_a_host_on_another_ca_is_refused(inventory: Inventory, tmp_path: Path) -> None:
    pki = pki_module.ensure_pki(inventory)
    ours = pki.ca_cert.read_bytes()
    other = tmp_path / "other" / "other.yml"
    other.parent.mkdir()
    other.write_text(inventory.path.read_text())
    theirs = pki_module.ensure_pki(load_inventory(other)).ca_cert.read_bytes()
    same = {"h1": _answer("@@ca", ours.decode()), "h2": _answer("@@ca"), "h3": _answer()}
    check_ca(inventory, same)  # hosts on our CA, or none yet: fine
    with pytest.raises(CaMismatchError) as refused:
        check_ca(inventory, {**same, "h3": _answer("@@ca", theirs.decode())})
    message = str(refused.value)
    assert f"h3: {pki_module.fingerprint(theirs)}" in message
    assert f"is {pki_module.fingerprint(ours)}" in message
    assert "--new-ca" in message and "`dask_tls_pki_dir`" in message
