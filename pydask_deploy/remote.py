"""Reads from many hosts at once over SSH (asyncssh): one round per host, all hosts together.

This module only reads; every change on a host is an Ansible task.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh


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
