"""First contact with hosts that accept only a password: install the deploy key, check sudo
and python3, report per host.

fabric (paramiko underneath) does this one job: its pure-Python password login needs no
``sshpass`` on the controller, which Ansible's ``--ask-pass`` would. Everything after first
contact goes through Ansible and asyncssh with the key this installs.

Each host, all at once: log in as the inventory's ``ansible_user`` with the password (through
the jump host when the inventory has one), append the public key to that user's
``~/.ssh/authorized_keys`` unless it is there, check ``sudo -n true`` (not for root) and
``python3``, then log in again with the key alone to prove it works.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydask_deploy.errors import UsageError
from pydask_deploy.inventory import Host, Inventory
from pydask_deploy.observe import remote

CONNECT_TIMEOUT = 10.0
DEFAULT_KEYS = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
OK_SUDO = ("root", "passwordless")


@dataclass(frozen=True)
class BootstrapResult:
    """What first contact did and found on one host.

    ``key`` is ``installed`` or ``present`` (None when the host was not reached); ``sudo``
    is ``root`` (no sudo needed), ``passwordless``, ``needs a password`` or ``refused``;
    ``python`` the python3 version, or None when there is none; ``key_login`` whether a
    login with the key alone worked afterwards; ``error`` why the host is not ready.
    """

    host: str
    user: str
    key: str | None = None
    sudo: str | None = None
    python: str | None = None
    key_login: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.key_login and self.sudo in OK_SUDO and bool(self.python)

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class DeployKey:
    """The private key Ansible will use and the public line that lets it in."""

    private: Path
    public: str  # "ssh-ed25519 AAAA... comment"

    @property
    def fingerprint_part(self) -> str:
        """The key type and its base64 body: what identifies it in authorized_keys."""
        return " ".join(self.public.split()[:2])


def find_deploy_key(inventory: Inventory, key_file: str | None = None) -> DeployKey:
    """The deploy key: ``key_file``, else the inventory's ``ansible_ssh_private_key_file``,
    else the first of ``~/.ssh/id_ed25519``, ``id_ecdsa``, ``id_rsa``; its public line from
    ``<key>.pub`` or read from the private key. UsageError when there is none."""
    if key_file:
        candidates = [(key_file, "--key")]
    else:
        files = {str(h.vars.get("ansible_ssh_private_key_file") or "") for h in inventory.hosts}
        files.discard("")
        if len(files) > 1:
            raise UsageError(
                f"{inventory.path}: the hosts use different `ansible_ssh_private_key_file`s "
                f"({', '.join(sorted(files))}); bootstrap installs one key: pass --key FILE"
            )
        where = f"{inventory.path}: `ansible_ssh_private_key_file`"
        candidates = [(f, where) for f in files] or [(k, "default key") for k in DEFAULT_KEYS]
    for name, where in candidates:
        private = Path(os.path.expanduser(name))
        if private.is_file():
            return DeployKey(private, _public_line(private, where))
        if where != "default key":
            raise UsageError(f"{where}: no such key file {name!r}")
    raise UsageError(
        f"{inventory.path}: no deploy key; set `ansible_ssh_private_key_file` or pass --key FILE "
        "(make one with `ssh-keygen -t ed25519`)"
    )


def _public_line(private: Path, where: str) -> str:
    public = private.with_name(private.name + ".pub")
    if public.is_file():
        line = public.read_text().strip()
        if len(line.split()) >= 2:
            return line
    from pydask_deploy.deploy.pki import ssh_public_key

    try:
        body = ssh_public_key(private.read_bytes())
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"{where}: cannot read the public half of {str(private)!r} ({exc}); "
            f"put it beside the key as {public.name}"
        ) from None
    return f"{body} pydask-deploy"


def install_command(public: str) -> str:
    """The shell command that adds ``public`` to ``~/.ssh/authorized_keys`` unless that key
    (type and body, whatever its comment) is there; prints ``installed`` or ``present``."""
    line = shlex.quote(public)
    body = shlex.quote(" ".join(public.split()[:2]))
    return (
        # sshd ignores keys in files others may write: 700 and 600, as ssh-copy-id leaves them
        'set -e; umask 077; mkdir -p ~/.ssh; f=~/.ssh/authorized_keys; touch "$f"; '
        'chmod 700 ~/.ssh; chmod 600 "$f"; '
        f'if grep -qF {body} "$f"; then echo present; else '
        '[ -s "$f" ] && [ -n "$(tail -c1 "$f")" ] && echo >> "$f"; '
        f"printf '%s\\n' {line} >> \"$f\"; echo installed; fi"
    )


PYTHON_COMMAND = "python3 -c 'import sys; print(\"%d.%d.%d\" % sys.version_info[:3])'"


def sudo_verdict(user: str, without_password: int, with_password: int | None) -> str:
    """What sudo allows, from ``sudo -n true``'s exit status and, when that failed and a
    password is known, ``sudo -S true``'s."""
    if user == "root":
        return "root"
    if without_password == 0:
        return "passwordless"
    if with_password == 0:
        return "needs a password"
    return "refused"


def _connect_kwargs(password: str | None, key: Path | None) -> dict[str, Any]:
    if key is not None:
        return {"key_filename": [str(key)], "look_for_keys": False, "allow_agent": False}
    if password is not None:
        return {"password": password, "look_for_keys": False, "allow_agent": False}
    return {}


def _connection(target: remote.SSHTarget, user: str, password: str | None, key: Path | None) -> Any:
    from fabric import Connection

    gateway = None
    if target.jump is not None:
        jump = target.jump
        jump_key = Path(jump.key_file) if jump.key_file else key
        gateway = _connection(jump, jump.user or user, password, jump_key)
    return Connection(
        target.address,
        user=user,
        port=target.port,
        gateway=gateway,
        connect_timeout=CONNECT_TIMEOUT,
        connect_kwargs=_connect_kwargs(password, key),
    )


def _run(conn: Any, command: str, stdin: str | None = None) -> tuple[int, str, str]:
    from io import StringIO

    done = conn.run(
        command, hide=True, warn=True, in_stream=StringIO(stdin) if stdin is not None else False
    )
    return int(done.exited), str(done.stdout).strip(), str(done.stderr).strip()


def _why(exc: BaseException) -> str:
    from paramiko.ssh_exception import AuthenticationException, NoValidConnectionsError

    if isinstance(exc, AuthenticationException):
        return "authentication failed (wrong password, or password login is off)"
    if isinstance(exc, NoValidConnectionsError | ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def bootstrap_host(host: Host, key: DeployKey, password: str | None) -> BootstrapResult:
    """First contact with one host (module docstring); never raises for a host's trouble."""
    target = remote.ssh_target(host)
    user = host.user or os.environ.get("USER") or "root"
    found: dict[str, Any] = {"host": host.name, "user": user}
    try:
        # the password when given; else the deploy key (a re-run, checking only)
        first_key = None if password is not None else key.private
        with _connection(target, user, password, first_key) as conn:
            status, out, err = _run(conn, install_command(key.public))
            if status != 0:
                return BootstrapResult(**found, error=f"could not install the key: {err or out}")
            found["key"] = out.splitlines()[-1] if out else "installed"
            without = 0 if user == "root" else _run(conn, "sudo -n true")[0]
            with_password = None
            if without != 0 and password is not None:
                with_password = _run(conn, "sudo -S -p '' true", stdin=password + "\n")[0]
            found["sudo"] = sudo_verdict(user, without, with_password)
            status, out, _ = _run(conn, PYTHON_COMMAND)
            found["python"] = out if status == 0 and out else None
    except Exception as exc:  # paramiko raises many kinds; each is this host's trouble
        return BootstrapResult(**found, error=_why(exc))
    try:
        with _connection(target, user, None, key.private) as conn:
            found["key_login"] = _run(conn, "true")[0] == 0
    except Exception as exc:
        return BootstrapResult(**found, error=f"the key does not log in: {_why(exc)}")
    return BootstrapResult(**found, error=_problem(found))


def _problem(found: Mapping[str, Any]) -> str | None:
    if found.get("sudo") == "needs a password":
        return (
            "sudo asks for a password; give the user passwordless sudo, or set "
            "`ansible_become_password` (kept in an ansible-vault file)"
        )
    if found.get("sudo") == "refused":
        return f"{found['user']} may not use sudo; apply needs root on the host"
    if not found.get("python"):
        return "no python3; Ansible needs it on the host (apt install python3)"
    return None


def bootstrap_hosts(
    inventory: Inventory,
    password: str | None,
    key_file: str | None = None,
    limit: Sequence[str] = (),
) -> list[BootstrapResult]:
    """First contact with every host of the inventory (or those named in ``limit``), all at
    once; one result per host, in inventory order."""
    key = find_deploy_key(inventory, key_file)
    hosts = list(inventory.hosts)
    if limit:
        unknown = sorted(set(limit) - {h.name for h in hosts})
        if unknown:
            raise UsageError(f"{inventory.path}: no host {', '.join(unknown)} in the inventory")
        hosts = [h for h in hosts if h.name in limit]
    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        return list(pool.map(lambda h: bootstrap_host(h, key, password), hosts))
