"""The fast path of ``apply``: leave out the hosts that are provably already in sync.

After a host converges in a real run (not ``--check``, restarts not deferred), the last
tasks of ``playbooks/site.yml`` write a record on it (``<dask_config_dir>/.pydask-deploy-applied``,
root 0600): the **fingerprint** of what apply was asked to do (``fingerprint``, computed here
from the controller's files) and the **state** the host was left in (the output of
``state_script``: checksums of the unit files and of every file under ``dask_config_dir``,
owners and modes, units enabled and active, the runtime the units start).

Before Ansible starts, ``apply`` makes one SSH round (``probe_command``, parsed by the pure
``parse_probe``) that prints the record and the same state as it is now. A host is in sync
when its record carries today's fingerprint, the state is unchanged since the record was
written, and the units are enabled and active. Such hosts are left out of the playbook's
``--limit``; when every host is in sync, Ansible is not started at all. Anything else (no
record, another fingerprint, a changed file, a stopped unit, an unreachable host, a value only
Ansible can compute, a docker image named by a tag that may have moved) runs the playbook as
before. ``apply --full`` skips the round and runs every host.

Not covered (``--full`` catches these): changes on a host outside the files and units above
(packages, the runtime's contents beyond its marker file, systemd drop-ins, sysctls), the
controller's environment (``ANSIBLE_*`` variables, ``ansible.cfg``, ``~/.ssh/config``),
extra vars given to a plain ``ansible-playbook`` run, and the contents of the controller's
wheelhouse (it is only read while a venv is missing, which the state check sees).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydask_deploy import __version__, contract
from pydask_deploy.deploy.conda import lock_path as conda_lock_path
from pydask_deploy.deploy.pki import Pki
from pydask_deploy.inventory import Host, Inventory
from pydask_deploy.observe import cluster, remote
from pydask_deploy.resources import ansible_dir

RECORD_NAME = contract.RECORD_NAME
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 15.0
SCHEDULER_UNIT = contract.unit_file(contract.SCHEDULER_UNIT)
WORKER_UNIT = contract.unit_file(contract.WORKER_UNIT)
UNIT_DIR = contract.UNIT_DIR

# The variables the state script reads; a Jinja value there is known only to Ansible.
_PATH_VARS = ("dask_base_dir", "dask_config_dir", "dask_data_dir", "dask_user")
_JINJA = re.compile(r"{{|{%|{#")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Controller files the role copies or reads, hashed into the fingerprint: (variable, whole).
# A whole file is hashed; a large one (an image tarball) by size and mtime.
_CONTROLLER_FILES = (
    ("dask_conda_environment_file", True),
    ("dask_docker_image_tarball", False),
)


# --------------------------------------------------------------------------- the fingerprint


def _add(digest: Any, label: str, data: bytes) -> None:
    """Feed one labelled, length-prefixed item, so that no two inputs read the same."""
    digest.update(f"{label}\0{len(data)}\0".encode())
    digest.update(data)


def _tree_files(root: Path) -> list[Path]:
    """Every file under ``root`` in a stable order (byte-compiled caches left out)."""
    if not root.is_dir():
        return []
    found = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        found += [Path(directory) / f for f in sorted(files) if not f.endswith(".pyc")]
    return found


def _add_tree(digest: Any, label: str, root: Path) -> None:
    for path in _tree_files(root):
        _add(digest, f"{label}/{path.relative_to(root).as_posix()}", path.read_bytes())


def _ansible_version() -> str:
    from ansible.release import __version__ as version  # type: ignore[import-untyped]

    return str(version)


def shared_inputs(inventory: Inventory, ansible_tree: Path | None = None) -> bytes:
    """The digest of what every host's fingerprint shares.

    The inventory file's bytes and every file under ``group_vars/`` and ``host_vars/`` beside
    it (any edit re-runs every host: conservative, and it needs no Jinja), the shipped
    ``roles/`` and ``playbooks/`` (``resources.ansible_dir``), the pydask-deploy and
    ansible-core versions.
    """
    digest = hashlib.sha256()
    tree = ansible_tree or ansible_dir()
    _add(digest, "pydask-deploy", __version__.encode())
    _add(digest, "ansible-core", _ansible_version().encode())
    _add(digest, "inventory", inventory.path.read_bytes())
    for sub in ("group_vars", "host_vars"):
        _add_tree(digest, sub, inventory.path.parent / sub)
    for sub in ("roles", "playbooks"):
        _add_tree(digest, sub, tree / sub)
    return digest.digest()


def _controller_path(inventory: Inventory, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else inventory.path.parent / path


def fingerprint(inventory: Inventory, host: Host, shared: bytes, pki: Pki | None) -> str:
    """The sha256 of everything one host's converge is computed from (hex).

    ``shared`` from ``shared_inputs``; then the host's name, with TLS its certificate, key
    and the cluster CA's certificate, and the controller files its variables name
    (``dask_conda_environment_file`` by content, ``dask_docker_image_tarball`` by size and
    mtime, too large to read on every apply); for a conda host, the conda lock file beside
    the inventory (a new lock is a new environment).
    """
    digest = hashlib.sha256()
    _add(digest, "shared", shared)
    _add(digest, "host", host.name.encode())
    if pki is not None:
        hosts_dir = pki.directory / "hosts"
        cert, key = pki.hosts.get(host.name) or (
            hosts_dir / f"{host.name}.crt",
            hosts_dir / f"{host.name}.key",
        )
        for label, path in (("ca.crt", pki.ca_cert), ("host.crt", cert), ("host.key", key)):
            _add(digest, label, path.read_bytes() if path.is_file() else b"(missing)")
    variables = inventory.dask_vars(host)
    for name, whole in _CONTROLLER_FILES:
        value = variables.get(name)
        if not isinstance(value, str) or not value:
            continue
        path = _controller_path(inventory, value)
        if not path.is_file():
            data = b"(missing)"
        elif whole:
            data = path.read_bytes()
        else:
            stat = path.stat()
            data = f"{stat.st_size} {stat.st_mtime_ns}".encode()
        _add(digest, name, data)
    if variables.get("dask_runtime") == "conda":
        lock = conda_lock_path(inventory)
        _add(digest, "conda-lock", lock.read_bytes() if lock.is_file() else b"(missing)")
    return digest.hexdigest()


# --------------------------------------------------------------------------- what is checked


@dataclass(frozen=True)
class HostCheck:
    """How one host's sync is checked: its fingerprint, record path, units and state script.

    ``reason`` is set (and the rest unused) when the host cannot take the fast path at all.
    """

    host: str
    fingerprint: str = ""
    record: str = ""
    units: tuple[str, ...] = ()
    state: str = ""
    reason: str = ""

    @property
    def eligible(self) -> bool:
        return not self.reason


def host_units(inventory: Inventory, host: Host) -> tuple[str, ...]:
    """The dask units a host runs: the scheduler's first."""
    units = []
    if host.name == inventory.scheduler.name:
        units.append(SCHEDULER_UNIT)
    if any(w.name == host.name for w in inventory.workers):
        units.append(WORKER_UNIT)
    return tuple(units)


def _templated(value: object) -> bool:
    return not isinstance(value, str | int | float | bool | list | dict | type(None)) or (
        isinstance(value, str) and bool(_JINJA.search(value))
    )


def _why_not(variables: Mapping[str, object]) -> str:
    """Why a host can never be in sync by this check, or ''."""
    for name in (*_PATH_VARS, "dask_runtime", "dask_worker_local_directory"):
        if _templated(variables.get(name)):
            return f"`{name}` is computed by Ansible"
    runtime = variables.get("dask_runtime")
    if runtime not in ("venv", "conda", "docker"):
        return f"dask_runtime {runtime!r}"
    if runtime == "docker":
        image = variables.get("dask_docker_image")
        tarball = variables.get("dask_docker_image_tarball")
        if _templated(image) or _templated(tarball):
            return "the docker image is computed by Ansible"
        if not tarball and "@" not in str(image):
            return "docker image named by a tag: apply pulls it to notice a moved tag"
    return ""


# The state script's octal escapes stand for braces: the script travels to Ansible as an
# extra var, and Ansible would read a double brace in it as Jinja.
_DOCKER_ID_FORMAT = r"$(printf '\173\173.Id\175\175')"


def state_script(variables: Mapping[str, object], units: Sequence[str], record: str) -> str:
    """The POSIX sh script that prints a host's converged state, one fact a line, stably.

    The same text runs in the marker task (what the record holds) and in the probe (what is
    true now), so both are computed alike. Holds no Jinja delimiters.
    """
    q = shlex.quote
    base, config, data = (str(variables[k]).rstrip("/") or "/" for k in _PATH_VARS[:3])
    user = str(variables["dask_user"])
    runtime = str(variables["dask_runtime"])
    local = str(variables.get("dask_worker_local_directory") or "") or f"{data}/worker"
    dirs = [base, config, data, f"{base}/{contract.ENVS_DIR}"]
    if WORKER_UNIT in units:
        dirs.append(local)
    lines = [
        f"LC_ALL=C; export LC_ALL; cfg={q(config)}; rec={q(record)}",
        f'echo "user $(id -u {q(user)} 2>/dev/null || echo missing) '
        f'$(id -g {q(user)} 2>/dev/null || echo missing)"',
        *(
            f"stat -c 'dir %n %U %G %a %F' {q(d)} 2>/dev/null || echo {q(f'dir {d} missing')}"
            for d in dirs
        ),
        f'echo "current $(readlink {q(f"{base}/{contract.CURRENT_LINK}")} || echo missing)"',
        'find "$cfg" -mindepth 1 ! -path "$rec" -printf \'entry %P %y %u %g %m\\n\' '
        "2>/dev/null | sort",
        'find "$cfg" -type f ! -path "$rec" -exec sha256sum {} + 2>/dev/null | '
        "sort -k 2 | sed 's/^/file /'",
    ]
    for unit in units:
        path = f"{UNIT_DIR}/{unit}"
        lines += [
            f"f={q(path)}; u={q(unit)}",
            'echo "unit $u $(sha256sum "$f" 2>/dev/null | cut -c 1-64) '
            '$(systemctl is-enabled "$u" 2>/dev/null) $(systemctl is-active "$u" 2>/dev/null)"',
        ]
        if runtime != "docker":
            lines += [
                "exe=$(sed -n 's/^ExecStart=\\([^ ]*\\).*/\\1/p' \"$f\" 2>/dev/null | head -n 1)",
                'env="${exe%/bin/*}"',
                'if [ -n "$exe" ] && [ -x "$exe" ] && [ -x "$env/bin/python" ]; '
                "then ok=present; else ok=missing; fi",
                f'echo "runtime $u $exe $ok $(sha256sum "$env/{contract.RUNTIME_MARKER}" '
                '2>/dev/null | cut -c 1-64)"',
            ]
    if runtime == "docker":
        image = str(variables.get("dask_docker_image"))
        lines.append(
            f'echo "image $(docker image inspect --format "{_DOCKER_ID_FORMAT}" {q(image)} '
            '2>/dev/null || echo missing)"'
        )
    return "\n".join(lines) + "\n"


def host_checks(
    inventory: Inventory, pki: Pki | None, hosts: Iterable[Host] | None = None
) -> dict[str, HostCheck]:
    """What to check on each host (all, or ``hosts``), fingerprints included."""
    shared = shared_inputs(inventory)
    checks = {}
    for host in hosts if hosts is not None else inventory.hosts:
        variables = inventory.dask_vars(host)
        reason = _why_not(variables)
        if reason:
            checks[host.name] = HostCheck(host.name, reason=reason)
            continue
        units = host_units(inventory, host)
        record = f"{str(variables['dask_config_dir']).rstrip('/')}/{RECORD_NAME}"
        checks[host.name] = HostCheck(
            host.name,
            fingerprint=fingerprint(inventory, host, shared, pki),
            record=record,
            units=units,
            state=state_script(variables, units, record),
        )
    return checks


def record_extravars(checks: Mapping[str, HostCheck]) -> dict[str, object]:
    """The extra var that lets site.yml write each eligible host's record."""
    return {
        "__dask_insync": {
            c.host: {"fingerprint": c.fingerprint, "record": c.record, "state": c.state}
            for c in checks.values()
            if c.eligible
        }
    }


# --------------------------------------------------------------------------- the probe


_PYTHON_VERSION = "import sys; print('%d.%d.%d' % sys.version_info[:3])"


def read_command(ca_file: str, check: HostCheck | None = None, python: str | None = None) -> str:
    """The one shell command apply runs on a host before anything else: the cluster CA
    certificate the host carries (``@@ca``), the version of the ``python`` a venv runtime
    would be made with (``@@python``) and, given the host's check, its in-sync record and
    its state now."""
    script = f"echo @@ca\ncat {shlex.quote(ca_file)} 2>/dev/null\n"
    if python:
        script += f"echo @@python\n{shlex.quote(python)} -c {shlex.quote(_PYTHON_VERSION)} 2>&1\n"
    if check is not None and check.eligible:
        script += (
            f"echo @@record\ncat {shlex.quote(check.record)} 2>/dev/null\necho @@state\n"
            f"{check.state}"
        )
    return "sh -c " + shlex.quote(script + "echo @@end\n")


def probe_command(check: HostCheck) -> str:
    """The one shell command that prints a host's record and its state now."""
    return read_command("/dev/null", check)


def ca_file(inventory: Inventory, host: Host) -> str:
    """Where the host keeps the cluster CA's certificate (the role's ``__dask_tls_dir``)."""
    config = str(inventory.dask_vars(host).get("dask_config_dir", "/etc/dask")).rstrip("/")
    return f"{config}/{contract.TLS_DIR}/{contract.CA_CERT}"


def ca_in(stdout: str) -> bytes | None:
    """The CA certificate (PEM) a host printed in its ``@@ca`` section, or None."""
    text = "\n".join(cluster.sections(stdout).get("ca", [])).strip()
    return text.encode() + b"\n" if "BEGIN CERTIFICATE" in text else None


def python_in(stdout: str) -> str | None:
    """The ``X.Y.Z`` version a host printed in its ``@@python`` section, or None."""
    lines = cluster.sections(stdout).get("python", [])
    found = re.fullmatch(r"\d+\.\d+\.\d+", lines[0].strip()) if lines else None
    return found.group(0) if found else None


def venv_python(inventory: Inventory, host: Host) -> str | None:
    """The interpreter a venv runtime is made with on ``host`` (``dask_venv_python``); None
    for another runtime, or a value only Ansible can compute."""
    variables = inventory.dask_vars(host)
    python = variables.get("dask_venv_python")
    if variables.get("dask_runtime") != "venv" or not isinstance(python, str) or _templated(python):
        return None
    return python


def read_hosts(
    inventory: Inventory, hosts: Sequence[Host], *, with_state: bool
) -> tuple[dict[str, remote.HostResult], float]:
    """One SSH round to ``hosts`` (``read_command``): each host's CA, its venv Python's
    version and, ``with_state``, what the in-sync check needs. Returns each host's output
    and the round's seconds."""
    started = time.monotonic()
    checks = host_checks(inventory, None, hosts) if with_state else {}
    targets = {h.name: remote.ssh_target(h, CONNECT_TIMEOUT) for h in hosts}
    commands = {
        h.name: read_command(ca_file(inventory, h), checks.get(h.name), venv_python(inventory, h))
        for h in hosts
    }
    results = asyncio.run(remote.run_on_hosts(targets, commands, COMMAND_TIMEOUT))
    return results, time.monotonic() - started


def judge(
    checks: Mapping[str, HostCheck], outputs: Mapping[str, remote.HostResult]
) -> dict[str, Verdict]:
    """Each host's Verdict from what ``read_hosts`` read on it."""
    verdicts = {}
    for name, check in checks.items():
        result = outputs.get(name)
        if not check.eligible:
            verdicts[name] = Verdict(False, check.reason)
        elif result is None:
            verdicts[name] = Verdict(False, "not checked")
        elif isinstance(result, remote.Unreachable):
            verdicts[name] = Verdict(False, f"not reached over SSH ({result.reason})")
        else:
            verdicts[name] = parse_probe(result.stdout, check)
    return verdicts


@dataclass(frozen=True)
class Verdict:
    """Whether one host is in sync and, when not, why (one short phrase)."""

    in_sync: bool
    reason: str = ""


def _first_difference(recorded: Sequence[str], now: Sequence[str]) -> str:
    """A short phrase naming what changed between the recorded state and now."""
    old, new = set(recorded), set(now)
    changed = [line for line in now if line not in old] + [
        line for line in recorded if line not in new
    ]
    words = changed[0].split() if changed else ["state"]
    kind = words[0]
    if kind == "unit" and len(words) > 1:
        return f"{words[1]} changed since the last apply"
    if kind == "file":
        return f"{words[-1]} changed since the last apply"
    if kind == "entry" and len(words) > 1:
        return f"{words[1]} (owner, mode or presence) changed since the last apply"
    if kind == "runtime" and len(words) > 1:
        return f"the runtime of {words[1]} changed since the last apply"
    return f"{kind} changed since the last apply"


def parse_probe(stdout: str, check: HostCheck) -> Verdict:
    """Judge a host from ``probe_command``'s output (pure: tested on recorded output)."""
    sections = cluster.sections(stdout)
    if "end" not in sections:
        return Verdict(False, "the check did not finish")
    record = [line for line in sections.get("record", []) if line and not line.startswith("#")]
    now = [line for line in sections.get("state", []) if line]
    if not record:
        return Verdict(False, "no record of a finished apply")
    head, *recorded = record
    if head != f"fingerprint {check.fingerprint}":
        return Verdict(False, "the inventory, roles or certificates changed since the last apply")
    for unit in check.units:
        line = next((x.split() for x in now if x.startswith(f"unit {unit} ")), None)
        if line is None or len(line) < 3 or not _HEX64.match(line[2]):
            return Verdict(False, f"{unit} is not installed")
        enabled, active = ([*line[3:], "", ""])[:2]
        if active != "active":
            return Verdict(False, f"{unit} is {active or 'in an unknown state'}")
        if enabled != "enabled":
            return Verdict(False, f"{unit} is {enabled or 'not enabled'} at boot")
        runtime = next((x.split() for x in now if x.startswith(f"runtime {unit} ")), None)
        if runtime is not None and (
            len(runtime) != 5 or runtime[3] != "present" or not _HEX64.match(runtime[4])
        ):
            return Verdict(False, f"the runtime of {unit} is missing")
    if any(line.startswith("image ") and line.split()[1:] == ["missing"] for line in now):
        return Verdict(False, "the docker image is missing")
    if recorded != now:
        return Verdict(False, _first_difference(recorded, now))
    return Verdict(True)


def probe(
    inventory: Inventory, checks: Mapping[str, HostCheck]
) -> tuple[dict[str, Verdict], float]:
    """One SSH round to every eligible host; each gets a Verdict. Also the round's seconds."""
    eligible = [inventory.host(n) for n, c in checks.items() if c.eligible]
    outputs, seconds = read_hosts(inventory, eligible, with_state=True) if eligible else ({}, 0.0)
    return judge(checks, outputs), seconds
