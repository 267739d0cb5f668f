"""Prove a deployed cluster works: testinfra checks on each host, then the scheduler's view.

Checks read only. Host checks run through testinfra's ssh backend: the ssh client Ansible
runs, with the same address, user, key, host key checking and ssh options from the
inventory (jump hosts included), one connection per host reused by every command (an ssh
ControlMaster), all hosts at once. Which workers each host has registered comes from the
read side (``observe/cluster.py``), as for ``status`` and ``upgrade``.
"""

from __future__ import annotations

import ipaddress
import shlex
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import testinfra

from pydask_deploy.contract import SCHEDULER_UNIT
from pydask_deploy.inventory import Host, Inventory
from pydask_deploy.observe import connection, remote
from pydask_deploy.observe.cluster import (
    ClusterReading,
    client_packages,
    expected_workers,
    host_units,
    read_cluster,
    sections,
    worker_gpus,
)

# Seconds a host's ssh connection outlives its last command (closed at the end anyway).
CONTROL_PERSIST = 30


@dataclass(frozen=True)
class Check:
    """One verified fact: where, what, whether it held, and what was seen."""

    host: str
    name: str
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class VerifyReport:
    """Every check, the versions the cluster runs (the scheduler's Python, distributed and
    dask) and warnings that do not fail it (this machine's client runs other versions)."""

    checks: tuple[Check, ...]
    versions: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.passed,
            "checks": [
                {"host": c.host, "check": c.name, "passed": c.passed, "detail": c.detail}
                for c in self.checks
            ],
            "versions": dict(self.versions),
            "warnings": list(self.warnings),
        }


# What a client must share with the cluster: Python's minor version (pickled functions),
# distributed and dask.
CLIENT_PACKAGES = ("python", "distributed", "dask")


def client_warnings(cluster_versions: Mapping[str, str], here: Mapping[str, str]) -> list[str]:
    """What this machine's client runs differently from the cluster, one warning each."""
    found = []
    for package in CLIENT_PACKAGES:
        theirs, ours = cluster_versions.get(package), here.get(package)
        if not theirs or not ours:
            continue
        if package == "python":
            theirs, ours = (".".join(v.split(".")[:2]) for v in (theirs, ours))
        if theirs != ours:
            found.append(
                f"this machine's client runs {package} {ours}, the cluster {theirs}: "
                + (
                    "functions it pickles may not load on the workers"
                    if package == "python"
                    else "clients, scheduler and workers must run the same version"
                )
            )
    return found


def _testinfra_host(host: Host, control_dir: str) -> Any:
    """A testinfra host over ssh, as Ansible reaches it, its connection kept open in
    ``control_dir`` for every command of the run."""
    target = remote.ssh_target(host)
    user = f"{urllib.parse.quote(target.user)}@" if target.user else ""
    address = f"[{target.address}]" if ":" in target.address else target.address
    extra = [target.ssh_args, "-o BatchMode=yes"]
    if not target.check_host_keys:
        extra.append("-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null")
    return testinfra.get_host(
        f"ssh://{user}{address}:{target.port}",
        ssh_identity_file=target.key_file,
        ssh_extra_args=" ".join(a for a in extra if a),
        # testinfra %-formats the command line: %%C is ssh's %C (a hash of the destination)
        controlpath=f"{control_dir}/%%C",
        controlpersist=CONTROL_PERSIST,
        timeout=int(target.connect_timeout),
        sudo=target.sudo,
    )


def _close_connections(hosts: Sequence[Host], control_dir: str) -> None:
    """Stop the ssh connection kept open for each host (``ssh -O exit``)."""
    for host in hosts:
        target = remote.ssh_target(host)
        argv = ["ssh", "-o", f"ControlPath={control_dir}/%C", "-O", "exit"]
        argv += ["-p", str(target.port), target.address]
        subprocess.run(argv, capture_output=True, timeout=10, check=False)


# One command a unit: what systemctl says, and its exit code, which is what testinfra's
# Service.is_running and is_enabled test (0: active; 0: enabled, static, indirect ...).
_UNIT_STATE = (
    'a=$(systemctl is-active "$1"); ra=$?; e=$(systemctl is-enabled "$1" 2>/dev/null); re=$?; '
    'printf "%s %s\\n%s %s\\n" "$ra" "$a" "$re" "$e"'
)


def _unit_checks(machine: Any, host: str, unit: str) -> list[Check]:
    lines = machine.run("sh -c %s sh %s", _UNIT_STATE, unit).stdout.splitlines()
    (active_rc, _, active), (enabled_rc, _, enabled) = (
        line.partition(" ") for line in [*lines, "1 ", "1 "][:2]
    )
    return [
        Check(host, f"{unit} is running", active_rc == "0", active or "not found"),
        Check(host, f"{unit} is enabled at boot", enabled_rc == "0", enabled or "not found"),
    ]


def _listening(machine: Any, host: str, port: int, what: str) -> Check:
    sockets = machine.socket.get_listening_sockets()
    found = [s for s in sockets if s.startswith("tcp://") and s.rsplit(":", 1)[-1] == str(port)]
    return Check(host, f"{what} listens on port {port}", bool(found), ", ".join(found))


# --------------------------------------------------------------------------- data paths

# The variables that declare the workers' data paths, and what each promises: read and write,
# or read and never write.
PATH_VARIABLES = (
    ("dask_worker_read_write_paths", "rw"),
    ("dask_worker_read_only_paths", "ro"),
)

# POSIX sh, run as root: each declared path tried by the worker's own account from inside the
# running worker's sandbox. nsenter joins the mount namespace of the unit's main process, where
# systemd applied ProtectSystem, ProtectHome, ReadWritePaths, ReadOnlyPaths and PrivateDevices;
# setpriv takes on that process's uid, gid and supplementary groups, as read from /proc (root
# gives up its capabilities in the change, as the unit's process never had them). One line per
# path: VARIABLE, MODE, RESULT, PATH and the last error line, tab-separated.
_PATHS_SCRIPT = r"""
LC_ALL=C; export LC_ALL
echo "@@paths"
pid=$(systemctl show -p MainPID --value {unit} 2>/dev/null)
case "$pid" in ''|0) echo "@@paths-unavailable {unit} is not running"; exit 0;; esac
ids() {{ awk -v k="$1:" '$1 == k {{ $1 = ""; print }}' "/proc/$pid/status"; }}
uid=$(ids Uid | awk '{{print $1}}'); gid=$(ids Gid | awk '{{print $1}}')
groups=$(ids Groups | tr -s ' 	' ',' | sed 's/^,//; s/,$//')
if [ -n "$groups" ]; then grp="--groups=$groups"; else grp=--clear-groups; fi
as_worker() {{ setpriv --reuid="$uid" --regid="$gid" "$grp" -- sh -c "$1" sh "$2" 2>&1; }}
inside() {{ nsenter -t "$pid" -m -- setpriv --reuid="$uid" --regid="$gid" "$grp" -- \
  sh -c "$1" sh "$2" 2>&1; }}
read='if [ -d "$1" ]; then ls -A -- "$1" >/dev/null; else : < "$1"; fi'
write='if [ -d "$1" ]; then t=$(mktemp -p "$1" .pydask-deploy-verify.XXXXXX) &&
  rm -f -- "$t"; else : >> "$1"; fi'
check() {{
  if [ ! -e "$3" ] && ! as_worker 'test -e "$1"' "$3" >/dev/null; then
    printf '%s	%s	%s	%s	%s
' "$1" "$2" missing "$3" ""; return; fi
  if ! out=$(inside "$read" "$3"); then
    printf '%s	%s	%s	%s	%s
' "$1" "$2" unreadable "$3" "$(echo "$out" | tail -n 1)"; return; fi
  out=$(inside "$write" "$3"); wrote=$?
  if [ "$2" = rw ] && [ $wrote != 0 ]; then
    printf '%s	%s	%s	%s	%s
' "$1" "$2" unwritable "$3" "$(echo "$out" | tail -n 1)"; return; fi
  if [ "$2" = ro ] && [ $wrote = 0 ]; then
    printf '%s	%s	%s	%s	%s
' "$1" "$2" writable "$3" ""; return; fi
  printf '%s	%s	%s	%s	%s
' "$1" "$2" ok "$3" ""
}}
"""

_RESULTS = {
    "ok": "",
    "missing": "missing on the host",
    "unreadable": "the workers cannot read it",
    "unwritable": "the workers cannot write it",
    "writable": "the workers can write it",
}


def data_paths(inventory: Inventory, host: Host) -> tuple[tuple[str, str, str], ...]:
    """The paths a worker host declares: (variable, mode ``rw``/``ro``, path), in order."""
    variables = inventory.dask_vars(host)
    found = []
    for variable, mode in PATH_VARIABLES:
        value = variables.get(variable)
        for path in value if isinstance(value, list) else []:
            found.append((variable, mode, str(path)))
    return tuple(found)


def paths_script(unit: str, paths: Sequence[tuple[str, str, str]]) -> str:
    """The script that tries each path from inside ``unit``'s sandbox (run as root)."""
    calls = "".join(
        f"check {shlex.quote(variable)} {mode} {shlex.quote(path)}\n"
        for variable, mode, path in paths
    )
    return _PATHS_SCRIPT.format(unit=shlex.quote(unit)) + calls


def path_checks(host: str, stdout: str, paths: Sequence[tuple[str, str, str]]) -> list[Check]:
    """One check per declared path from ``paths_script``'s output (pure)."""
    found = sections(stdout)
    unavailable = next((k for k in found if k.startswith("paths-unavailable ")), None)
    results = {}
    for line in found.get("paths", []):
        fields = line.split("\t", 4)  # the error, last, may be empty and stripped
        if len(fields) >= 4:
            results[(fields[0], fields[3])] = (fields[2], fields[4] if len(fields) > 4 else "")
    checks = []
    for variable, mode, path in paths:
        name = f"workers can read {'and write ' if mode == 'rw' else 'but not write '}{path}"
        if unavailable is not None:
            reason = unavailable.removeprefix("paths-unavailable ")
            checks.append(Check(host, name, False, f"`{variable}`: not checked, {reason}"))
            continue
        result, error = results.get((variable, path), ("unchecked", "the check did not finish"))
        what = _RESULTS.get(result, result)
        detail = f"`{variable}`" + (f": {what}" if what else "") + (f" ({error})" if error else "")
        checks.append(Check(host, name, result == "ok", detail))
    return checks


def _path_checks(machine: Any, host: Host, inventory: Inventory, unit: str) -> list[Check]:
    """The declared paths, tried in ``unit``'s sandbox: on a GPU host its first instance's,
    which every instance shares (one template)."""
    paths = data_paths(inventory, host)
    if not paths:
        return []
    done = machine.run("sh -c %s", paths_script(unit, paths))
    return path_checks(host.name, done.stdout, paths)


def _host_checks(inventory: Inventory, host: Host, control_dir: str) -> list[Check]:
    """The checks on one host: its units running and enabled, the scheduler's ports."""
    try:
        machine = _testinfra_host(host, control_dir)
        checks: list[Check] = []
        units = host_units(inventory, host)
        if SCHEDULER_UNIT in units:
            variables = inventory.dask_vars(host)
            checks += _unit_checks(machine, host.name, SCHEDULER_UNIT)
            checks.append(
                _listening(machine, host.name, int(variables["dask_scheduler_port"]), "scheduler")  # type: ignore[call-overload]
            )
            checks.append(
                _listening(machine, host.name, int(variables["dask_dashboard_port"]), "dashboard")  # type: ignore[call-overload]
            )
        workers = [unit for unit in units if unit != SCHEDULER_UNIT]
        for unit in workers:
            checks += _unit_checks(machine, host.name, unit)
        if workers:
            checks += _path_checks(machine, host, inventory, workers[0])
        return checks
    except Exception as exc:  # testinfra raises plain RuntimeError/AssertionError on SSH trouble
        return [Check(host.name, "host is reachable", False, _first_line(exc))]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


def _health_check(inventory: Inventory, control_dir: str) -> Check:
    scheduler = inventory.scheduler
    url = f"{connection.dashboard_url(inventory)}/health"
    # a dashboard kept to SSH forwarding, or hosts behind a jump host: ask on the scheduler host
    if _loopback(url) or connection.jump_host(inventory):
        return _health_check_on_host(inventory, url, control_dir)
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            body = reply.read().decode().strip()
    except (OSError, urllib.error.URLError) as exc:
        return Check(scheduler.name, "/health answers ok", False, f"{url}: {exc}")
    return Check(scheduler.name, "/health answers ok", body == "ok", f"{url}: {body!r}")


def _loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _health_check_on_host(inventory: Inventory, url: str, control_dir: str) -> Check:
    scheduler = inventory.scheduler
    script = (
        "import sys, urllib.request; "
        f"sys.stdout.write(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
    )
    try:
        done = _testinfra_host(scheduler, control_dir).run("python3 -c %s", script)
    except Exception as exc:  # testinfra raises plain RuntimeError on SSH trouble
        return Check(scheduler.name, "/health answers ok", False, f"{url}: {_first_line(exc)}")
    body = done.stdout.strip() if done.rc == 0 else done.stderr.strip()[-200:]
    return Check(scheduler.name, "/health answers ok", body == "ok", f"{url}: {body!r}")


def _registration_checks(inventory: Inventory, reading: ClusterReading) -> list[Check]:
    """Each worker host has as many workers registered as its ``dask_worker_nworkers`` (one
    per GPU on a GPU host)."""
    scheduler = inventory.scheduler.name
    view = reading.scheduler
    if not view.answered:
        return [Check(scheduler, "scheduler accepts a client", False, str(view.error))]
    checks = [Check(scheduler, "scheduler accepts a client", True, view.address)]
    for worker in inventory.workers:
        expected = expected_workers(inventory, worker)
        count = len(reading.hosts[worker.name].workers)
        checks.append(
            Check(
                worker.name,
                "workers registered with the scheduler",
                count == expected,
                f"{count} of {expected}",
            )
        )
        gpus = worker_gpus(inventory, worker)
        if gpus:
            offered = sum(w.gpus for w in reading.hosts[worker.name].workers)
            checks.append(
                Check(
                    worker.name,
                    "GPUs offered to the scheduler",
                    offered == gpus,
                    f"GPU={offered:g} of {gpus}",
                )
            )
    return checks


def verify_cluster(inventory: Inventory) -> VerifyReport:
    """Run every check against the inventory's hosts and its scheduler."""
    hosts = inventory.hosts
    with (
        tempfile.TemporaryDirectory(prefix="pydask-verify-") as control_dir,
        ThreadPoolExecutor(max_workers=min(32, len(hosts)) + 1) as pool,
    ):
        try:
            reading = pool.submit(read_cluster, inventory)
            results = list(pool.map(lambda h: _host_checks(inventory, h, control_dir), hosts))
            checks = [c for host_checks in results for c in host_checks]
            checks.append(_health_check(inventory, control_dir))
            checks += _registration_checks(inventory, reading.result())
        finally:
            list(pool.map(lambda h: _close_connections([h], control_dir), hosts))
    packages = (reading.result().scheduler.versions.get("scheduler") or {}).get("packages") or {}
    versions = {p: str(packages[p]) for p in CLIENT_PACKAGES if packages.get(p)}
    if "python" in versions:  # distributed says 3.11.2.final.0
        versions["python"] = ".".join(versions["python"].split(".")[:3])
    warnings = client_warnings(versions, client_packages())
    return VerifyReport(tuple(checks), versions, tuple(warnings))
