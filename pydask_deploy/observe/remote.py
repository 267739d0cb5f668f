"""Reads from many hosts at once over SSH (asyncssh): one round per host, all hosts together.

This module only reads; every change on a host is an Ansible task.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import re
import shlex
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
    ``jump`` is the host the connection goes through (``ProxyJump`` or an ``ssh -W``
    ``ProxyCommand``), itself possibly behind another. ``sudo`` runs commands through
    ``sudo -n``: the login user is not root, and reads need root as the playbooks do.
    ``ssh_args`` are the inventory's ssh options as written (``ansible_ssh_common_args``
    and ``ansible_ssh_extra_args``), for tools that run the ssh client as Ansible does.
    """

    address: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    check_host_keys: bool = True
    connect_timeout: float = 5.0
    jump: SSHTarget | None = None
    sudo: bool = False
    ssh_args: str = ""

    def command(self, command: str) -> str:
        """``command`` as this host runs it: through ``sudo -n`` when the target asks for it."""
        return f"sudo -n {command}" if self.sudo else command


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
SSHError = asyncssh.Error  # for callers that catch what a port forward raises
_FALSE = {"no", "false", "0", "off"}


_JUMP = re.compile(
    r"^(?:(?P<user>[a-z_][a-z0-9_.-]*)@)?(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9a-fA-F:]+\])(?::(?P<port>\d{1,5}))?$"
)


@dataclass(frozen=True)
class Jump:
    """A jump host (login node, bastion) written ``[user@]host[:port]``."""

    host: str
    user: str | None = None
    port: int = 22

    @classmethod
    def parse(cls, spec: str) -> Jump:
        """Read ``[user@]host[:port]``; ValueError naming the problem when it is not that."""
        found = _JUMP.match(spec.strip())
        if not found:
            raise ValueError(f"a jump host is written [user@]host[:port], got {spec!r}")
        port = int(found["port"] or 22)
        if not 0 < port < 65536:
            raise ValueError(f"the jump host port must be 1-65535, got {port}")
        return cls(found["host"].strip("[]"), found["user"], port)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port != 22 else ""
        return f"{user}{self.host}{port}"


def jump_ssh_args(jump: Jump, key_file: str | None = None, check_host_keys: bool = True) -> str:
    """The ``ansible_ssh_common_args`` value that reaches a host through ``jump``.

    A ``ProxyCommand`` rather than ``ProxyJump``: options given on ssh's command line (the
    key, host key checking) do not apply to a ProxyJump hop, so a key kept outside
    ``~/.ssh`` would not be offered to the jump host. ``ssh_target`` reads it back.
    """
    words = ["ssh", "-W", "%h:%p", "-q"]
    if key_file:
        words += ["-i", key_file]
    if not check_host_keys:
        words += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    if jump.port != 22:
        words += ["-p", str(jump.port)]
    words.append(f"{jump.user}@{jump.host}" if jump.user else jump.host)
    return f"-o ProxyCommand={shlex.quote(shlex.join(words))}"


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


def _jump_targets(options: Mapping[str, str], timeout: float) -> SSHTarget | None:
    """The jump chain in ssh options: ``ProxyJump a,b`` or ``ProxyCommand ssh ... -W %h:%p b``.

    As in ssh, command-line options of the connection (its key, host key checking) do not
    apply to ProxyJump hops; an ``ssh -W`` ProxyCommand carries its own.
    """
    proxy = options.get("proxyjump", "")
    if proxy and proxy.lower() != "none":
        chain: SSHTarget | None = None
        for hop in proxy.split(","):
            jump = Jump.parse(hop.removeprefix("ssh://"))
            chain = SSHTarget(jump.host, jump.port, jump.user, connect_timeout=timeout, jump=chain)
        return chain
    command = options.get("proxycommand", "")
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if len(words) < 2 or Path(words[0]).name != "ssh" or "-W" not in words:
        return None
    inner = ssh_options(shlex.join(words[1:]))
    destination = next(
        (
            w
            for i, w in enumerate(words[1:], 1)
            if not w.startswith("-") and not _takes_value(words[i - 1])
        ),
        None,
    )
    if destination is None:
        return None
    jump = Jump.parse(destination)
    port = int(inner["port"]) if inner.get("port", "").isdigit() else jump.port
    return SSHTarget(
        jump.host,
        port,
        inner.get("user") or jump.user,
        key_file=os.path.expanduser(inner["identityfile"]) if "identityfile" in inner else None,
        check_host_keys=_checks_host_keys(inner, True),
        connect_timeout=timeout,
        jump=_jump_targets(inner, timeout),
    )


def _takes_value(word: str) -> bool:
    """Whether ssh's flag ``word`` takes the next word as its value (``-i key``, ``-W h:p``)."""
    return len(word) == 2 and word[0] == "-" and word[1] in "BbcDEeFIiJLlmOopQRSWw"


def _checks_host_keys(options: Mapping[str, str], checking: object) -> bool:
    return (
        str(checking).strip().lower() not in _FALSE
        and options.get("stricthostkeychecking", "").lower() not in _FALSE
        and options.get("userknownhostsfile", "") != "/dev/null"
    )


def ssh_target(host: Host, connect_timeout: float = 5.0) -> SSHTarget:
    """The SSH settings Ansible's ssh connection uses for an inventory host.

    Reads ``ansible_host``/``ansible_port``/``ansible_user`` (already on ``host``),
    ``ansible_ssh_private_key_file``, ``ansible_host_key_checking`` (else the
    ``ANSIBLE_HOST_KEY_CHECKING`` environment variable), ``ansible_become`` and the ssh options
    in ``ansible_ssh_common_args``/``ansible_ssh_extra_args``, jump hosts included. A
    ``ConnectTimeout`` there shortens ``connect_timeout``, never lengthens it.
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
    timeout = connect_timeout
    with_timeout = options.get("connecttimeout", "")
    if with_timeout.isdigit() and int(with_timeout) > 0:
        timeout = min(timeout, float(with_timeout))
    user = host.user or options.get("user") or None
    # the playbooks run as root through become whatever the login user; reads do the same,
    # unless the inventory says ansible_become: false
    login = user or getpass.getuser()
    become = str(host.vars.get("ansible_become", True)).strip().lower() not in _FALSE
    try:
        jump = _jump_targets(options, timeout)
    except ValueError:
        jump = None  # a form this reader does not know: connect directly, as before
    return SSHTarget(
        address=host.address,
        port=host.port,
        user=user,
        key_file=os.path.expanduser(str(key)) if key else None,
        check_host_keys=_checks_host_keys(options, checking),
        connect_timeout=timeout,
        jump=jump,
        sudo=become and login != "root",
        ssh_args=args.strip(),
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


class _Jumps:
    """Connections to jump hosts, opened once and shared by every host behind them.

    A round over fifty hosts behind one login node makes one connection to the login node,
    not fifty; each host gets its own channel through it.
    """

    def __init__(self) -> None:
        self._open: dict[SSHTarget, asyncio.Task[asyncssh.SSHClientConnection]] = {}

    async def through(self, jump: SSHTarget) -> asyncssh.SSHClientConnection:
        if jump not in self._open:
            self._open[jump] = asyncio.ensure_future(self._connect(jump))
        return await asyncio.shield(self._open[jump])

    async def _connect(self, target: SSHTarget) -> asyncssh.SSHClientConnection:
        tunnel = await self.through(target.jump) if target.jump else None
        return await _connect_direct(target, tunnel)

    def close(self) -> None:
        for task in self._open.values():
            if task.done() and not task.cancelled() and task.exception() is None:
                task.result().close()
            else:
                task.cancel()


async def _connect_direct(
    target: SSHTarget, tunnel: asyncssh.SSHClientConnection | None
) -> asyncssh.SSHClientConnection:
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
    if tunnel is not None:
        options["tunnel"] = tunnel
    return await asyncssh.connect(target.address, **options)


def _reach_timeout(target: SSHTarget) -> float:
    """How long reaching a host may take: one connect timeout per hop, and a second spare."""
    hops, jump = 1, target.jump
    while jump is not None:
        hops, jump = hops + 1, jump.jump
    return hops * target.connect_timeout + 1


async def _connect_target(target: SSHTarget, jumps: _Jumps) -> asyncssh.SSHClientConnection:
    tunnel = await jumps.through(target.jump) if target.jump else None
    return await _connect_direct(target, tunnel)


async def _run_one(
    target: SSHTarget,
    jumps: _Jumps,
    command: str,
    timeout: float,
    on_line: Callable[[str], None] | None = None,
) -> HostResult:
    started = time.monotonic()
    try:
        conn = await asyncio.wait_for(_connect_target(target, jumps), _reach_timeout(target))
    except (TimeoutError, OSError, asyncssh.Error, ValueError) as exc:
        return Unreachable(describe_error(exc, target.connect_timeout))
    try:
        async with conn:
            if on_line is not None:
                return await _stream(conn, target.command(command), on_line, started)
            done = await asyncio.wait_for(conn.run(target.command(command), check=False), timeout)
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

    def one(name: str, jumps: _Jumps) -> Awaitable[HostResult]:
        text = command if isinstance(command, str) else command[name]
        return _run_one(targets[name], jumps, text, timeout)

    return await _on_every_host(targets, one)


async def stream_on_hosts(
    targets: Mapping[str, SSHTarget],
    command: str,
    on_line: Callable[[str, str], None],
) -> dict[str, HostResult]:
    """Run a long command (``journalctl -f``) on every host; call ``on_line(host, line)`` for
    each stdout line as it arrives. Returns when every command has ended (or was cancelled).
    """

    def one(name: str, jumps: _Jumps) -> Awaitable[HostResult]:
        return _run_one(
            targets[name], jumps, command, timeout=0, on_line=lambda line: on_line(name, line)
        )

    return await _on_every_host(targets, one)


async def _on_every_host(
    targets: Mapping[str, SSHTarget], one: Callable[[str, _Jumps], Awaitable[HostResult]]
) -> dict[str, HostResult]:
    """Run ``one(name, jumps)`` for every host at once, sharing the jump host connections."""
    names = list(targets)
    jumps = _Jumps()
    try:
        results = await asyncio.gather(*(one(name, jumps) for name in names))
    finally:
        jumps.close()
    return dict(zip(names, results, strict=True))


# --------------------------------------------------------------------------- port forwards


class PortForward:
    """A loopback port that reaches ``host:port`` as the SSH target sees it (``ssh -L``).

    For hosts behind a jump host, whose Dask ports the controller cannot reach directly.
    The forward is served by its own thread and event loop, so synchronous and asynchronous
    callers alike can dial it; use it as a context manager, whose value is the local port.
    """

    def __init__(self, target: SSHTarget, host: str, port: int) -> None:
        self.target, self.host, self.port = target, host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._jumps = _Jumps()
        self._conn: asyncssh.SSHClientConnection | None = None

    async def _open(self) -> int:
        self._conn = await asyncio.wait_for(
            _connect_target(self.target, self._jumps), _reach_timeout(self.target)
        )
        listener = await self._conn.forward_local_port("127.0.0.1", 0, self.host, self.port)
        return int(listener.get_port())

    async def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
        self._jumps.close()

    def __enter__(self) -> int:
        self._thread.start()
        try:
            return asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
