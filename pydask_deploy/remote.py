"""Reads from many hosts at once over SSH (asyncssh): one round per host, all hosts together.

This module only reads; every change on a host is an Ansible task.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from pydask_deploy.inventory import Host


@dataclass(frozen=True)
class BootState:
    """What ``systemctl is-system-running`` said once a host answered, and how long it took."""

    state: str
    seconds: float


async def _connect(address: str, key: Path, timeout: float) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        address,
        username="root",
        client_keys=[str(key)],
        known_hosts=None,
        connect_timeout=timeout,
    )


async def _wait_one(address: str, key: Path, deadline: float, started: float) -> BootState:
    last = "unreachable"
    while time.monotonic() < deadline:
        try:
            async with await _connect(address, key, timeout=2) as conn:
                result = await conn.run("systemctl is-system-running --wait", check=False)
                state = str(result.stdout or "").strip() or "unknown"
                return BootState(state, time.monotonic() - started)
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            last = f"unreachable ({type(exc).__name__})"
            await asyncio.sleep(0.2)
    return BootState(last, time.monotonic() - started)


def wait_until_booted(
    hosts: Sequence[tuple[str, str]], key: Path, timeout: float
) -> dict[str, BootState]:
    """Wait until each (name, address) answers SSH and has finished booting."""

    async def main() -> dict[str, BootState]:
        started = time.monotonic()
        deadline = started + timeout
        states = await asyncio.gather(
            *(_wait_one(address, key, deadline, started) for _, address in hosts)
        )
        return {name: state for (name, _), state in zip(hosts, states, strict=True)}

    return asyncio.run(main())


def system_states(hosts: Sequence[tuple[str, str]], key: Path) -> dict[str, str]:
    """``systemctl is-system-running`` of each (name, address), or ``unreachable``."""

    async def one(address: str) -> str:
        try:
            async with await _connect(address, key, timeout=3) as conn:
                result = await conn.run("systemctl is-system-running", check=False)
        except (TimeoutError, OSError, asyncssh.Error):
            return "unreachable"
        return str(result.stdout or "").strip() or "unknown"

    async def main() -> list[str]:
        return await asyncio.gather(*(one(address) for _, address in hosts))

    states = asyncio.run(main())
    return {name: state for (name, _), state in zip(hosts, states, strict=True)}


# --------------------------------------------------------------------------- inventory hosts


@dataclass(frozen=True)
class SSHTarget:
    """How to reach one inventory host, read from its Ansible connection variables.

    ``known_hosts`` None means host keys are not checked (the inventory asked for that with
    ``StrictHostKeyChecking=no``, ``UserKnownHostsFile=/dev/null`` or
    ``ansible_host_key_checking: false``); otherwise ``~/.ssh/known_hosts`` is used.
    ``user`` None lets SSH decide (``~/.ssh/config``, else the local user), as ``ssh`` does.
    """

    address: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    check_host_keys: bool = True
    connect_timeout: float = 5.0
    jump: str | None = None


@dataclass(frozen=True)
class CommandResult:
    """What one command printed on one host: its output, exit status and wall time."""

    stdout: str
    stderr: str
    exit_status: int | None
    seconds: float


@dataclass(frozen=True)
class Unreachable:
    """A host that could not be reached or did not answer in time, and why (one line)."""

    reason: str


HostResult = CommandResult | Unreachable
_FALSE = {"no", "false", "0", "off"}


def ssh_options(args: str) -> dict[str, str]:
    """The options in an ssh argument string such as ``ansible_ssh_common_args``.

    ``-o Key=Value`` (or ``-o "Key Value"``) gives ``key`` (lower-cased, as ssh reads it);
    ``-J X`` gives ``proxyjump``, ``-i X`` ``identityfile``, ``-p X`` ``port`` and ``-l X``
    ``user``. The first occurrence wins, as in ssh. Other flags are ignored.
    """
    flags = {"-o": "", "-J": "proxyjump", "-i": "identityfile", "-p": "port", "-l": "user"}
    try:
        words = shlex.split(args)
    except ValueError:  # unbalanced quotes: read it as ssh would see plain words
        words = args.split()
    found: dict[str, str] = {}
    rest = iter(words)
    for word in rest:
        flag, attached = word[:2], word[2:]
        if flag not in flags:
            continue
        value = attached or next(rest, "")
        if flag == "-o":
            key, _, setting = value.replace("=", " ", 1).partition(" ")
            found.setdefault(key.strip().lower(), setting.strip())
        else:
            found.setdefault(flags[flag], value)
    return found


def ssh_target(host: Host, connect_timeout: float = 5.0) -> SSHTarget:
    """The SSH settings Ansible's ssh connection uses for an inventory host.

    Reads ``ansible_host``/``ansible_port``/``ansible_user`` (already on ``host``),
    ``ansible_ssh_private_key_file``, ``ansible_host_key_checking`` (else the
    ``ANSIBLE_HOST_KEY_CHECKING`` environment variable) and the ssh options in
    ``ansible_ssh_common_args``/``ansible_ssh_extra_args``. A ``ConnectTimeout`` there
    shortens ``connect_timeout``, never lengthens it.
    """
    args = " ".join(
        str(host.vars.get(name) or "")
        for name in ("ansible_ssh_common_args", "ansible_ssh_extra_args")
    )
    options = ssh_options(args)
    key = host.vars.get("ansible_ssh_private_key_file") or options.get("identityfile")
    checking = host.vars.get("ansible_host_key_checking")
    if checking is None:
        checking = os.environ.get("ANSIBLE_HOST_KEY_CHECKING", "true")
    check_host_keys = (
        str(checking).strip().lower() not in _FALSE
        and options.get("stricthostkeychecking", "").lower() not in _FALSE
        and options.get("userknownhostsfile", "") != "/dev/null"
    )
    timeout = connect_timeout
    with_timeout = options.get("connecttimeout", "")
    if with_timeout.isdigit() and int(with_timeout) > 0:
        timeout = min(timeout, float(with_timeout))
    jump = options.get("proxyjump", "")
    return SSHTarget(
        address=host.address,
        port=host.port,
        user=host.user or options.get("user") or None,
        key_file=os.path.expanduser(str(key)) if key else None,
        check_host_keys=check_host_keys,
        connect_timeout=timeout,
        jump=jump if jump and jump.lower() != "none" else None,
    )


def describe_error(exc: BaseException, timeout: float) -> str:
    """One short line saying why a host could not be reached."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, asyncssh.PermissionDenied):
        return f"permission denied: {exc.reason}"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return f"host key not verifiable: {exc.reason}"
    if isinstance(exc, asyncssh.Error):
        return f"{exc.reason or type(exc).__name__}"
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc) or type(exc).__name__
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        return text[:1].lower() + text[1:] if text else type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


async def _connect_target(target: SSHTarget) -> asyncssh.SSHClientConnection:
    options: dict[str, Any] = {
        "port": target.port,
        "connect_timeout": target.connect_timeout,
    }
    if target.user:
        options["username"] = target.user
    if target.key_file:
        options["client_keys"] = [target.key_file]
    if not target.check_host_keys:
        options["known_hosts"] = None
    if target.jump:
        options["tunnel"] = target.jump
    return await asyncssh.connect(target.address, **options)


async def _run_one(
    target: SSHTarget,
    command: str,
    timeout: float,
    on_line: Callable[[str], None] | None = None,
) -> HostResult:
    started = time.monotonic()
    try:
        conn = await asyncio.wait_for(_connect_target(target), target.connect_timeout + 1)
    except (TimeoutError, OSError, asyncssh.Error, ValueError) as exc:
        return Unreachable(describe_error(exc, target.connect_timeout))
    try:
        async with conn:
            if on_line is not None:
                return await _stream(conn, command, on_line, started)
            done = await asyncio.wait_for(conn.run(command, check=False), timeout)
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        return Unreachable(describe_error(exc, timeout))
    return CommandResult(
        str(done.stdout or ""), str(done.stderr or ""), done.exit_status, time.monotonic() - started
    )


async def _stream(
    conn: asyncssh.SSHClientConnection,
    command: str,
    on_line: Callable[[str], None],
    started: float,
) -> CommandResult:
    process = await conn.create_process(command)
    async with process:

        async def errors() -> str:
            return str(await process.stderr.read())

        collecting = asyncio.ensure_future(errors())
        async for line in process.stdout:
            on_line(str(line).rstrip("\n"))
        finished = await process.wait(check=False)
        stderr = await collecting
    return CommandResult("", stderr, finished.exit_status, time.monotonic() - started)


async def run_on_hosts(
    targets: Mapping[str, SSHTarget], command: str | Mapping[str, str], timeout: float = 15
) -> dict[str, HostResult]:
    """Run one command on every host at once; each host gets its output or ``Unreachable``.

    ``command`` is the same for all hosts, or a command per host name. One slow or dead host
    never hides the others: it costs at most its connect timeout plus ``timeout``.
    """
    names = list(targets)

    def command_for(name: str) -> str:
        return command if isinstance(command, str) else command[name]

    results = await asyncio.gather(*(_run_one(targets[n], command_for(n), timeout) for n in names))
    return dict(zip(names, results, strict=True))


async def stream_on_hosts(
    targets: Mapping[str, SSHTarget],
    command: str,
    on_line: Callable[[str, str], None],
) -> dict[str, HostResult]:
    """Run a long command (``journalctl -f``) on every host; call ``on_line(host, line)`` for
    each stdout line as it arrives. Returns when every command has ended (or was cancelled).
    """
    names = list(targets)

    def sink(name: str) -> Callable[[str], None]:
        return lambda line: on_line(name, line)

    results = await asyncio.gather(
        *(_run_one(targets[n], command, timeout=0, on_line=sink(n)) for n in names)
    )
    return dict(zip(names, results, strict=True))
