"""The scheduler's own view of the cluster, and the client that asks it.

This is the one module that imports ``distributed`` (lazily: it takes half a second), and the
one place that builds the client's ``Security`` from the certificates ``apply`` made. Two
ways in: ``SchedulerLink`` (asynchronous, kept open across ``status --watch`` rounds, used by
the read side in ``observe/cluster.py``) and ``SchedulerSession`` (synchronous, for
``upgrade``, which retires workers and computes on the new ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import operator
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydask_deploy.errors import PkiError
from pydask_deploy.inventory import Inventory
from pydask_deploy.observe import connection

if TYPE_CHECKING:
    from distributed import Client, Security

TIMEOUT = 5.0

# Tasks a worker is running, and every task the scheduler has handed it and is not done.
_RUNNING_STATES = ("executing", "long-running")
_PROCESSING_STATES = ("executing", "long-running", "ready", "constrained", "waiting")


@dataclass(frozen=True)
class WorkerView:
    """One worker as the scheduler sees it.

    ``host`` is the address it registered from; ``nanny`` the address of the nanny that
    started it (a new process has a new one); ``status`` the scheduler's word for it
    (``running``, ``closing_gracefully`` ...).
    """

    address: str
    host: str
    name: str
    memory: int
    memory_limit: int
    running: int
    processing: int
    nanny: str = ""
    status: str = ""
    resources: Mapping[str, float] = field(default_factory=dict, hash=False)

    @property
    def gpus(self) -> float:
        """The GPU resource the worker offers (``--resources GPU=1``); 0 without."""
        return float(self.resources.get("GPU", 0))


@dataclass(frozen=True)
class SchedulerView:
    """The scheduler's answer, or why there was none (``error``); ``source`` says where it
    came from: ``dashboard`` (its host read its HTTP server) or ``client``."""

    address: str
    error: str | None = None
    workers: tuple[WorkerView, ...] = ()
    versions: Mapping[str, Any] = field(default_factory=dict, hash=False)
    source: str = "client"

    @property
    def answered(self) -> bool:
        return self.error is None


def workers_from_identity(identity: Mapping[str, Any]) -> tuple[WorkerView, ...]:
    """Read the workers out of ``Scheduler.identity()`` (what ``scheduler_info`` returns)."""
    found = []
    for address, info in sorted((identity.get("workers") or {}).items()):
        metrics = info.get("metrics") or {}
        counts = metrics.get("task_counts") or {}
        found.append(
            WorkerView(
                address=str(address),
                host=str(info.get("host", "")),
                name=str(info.get("name", address)),
                memory=int(metrics.get("memory") or 0),
                memory_limit=int(info.get("memory_limit") or 0),
                running=sum(int(counts.get(s, 0)) for s in _RUNNING_STATES),
                processing=sum(int(counts.get(s, 0)) for s in _PROCESSING_STATES),
                nanny=str(info.get("nanny") or ""),
                status=str(info.get("status") or ""),
                resources={str(k): float(v) for k, v in (info.get("resources") or {}).items()},
            )
        )
    return tuple(found)


def client_security(inventory: Inventory) -> Security | None:
    """A ``distributed.Security`` with the client certificate, or None without TLS.

    Raises ``PkiError`` when the cluster runs TLS and ``apply`` has not made the files yet.
    """
    config = connection.client_config(inventory)
    if not config.tls:
        return None
    from distributed import Security

    return Security(  # type: ignore[no-untyped-call]
        tls_ca_file=str(config.tls_ca_file),
        tls_client_cert=str(config.tls_client_cert),
        tls_client_key=str(config.tls_client_key),
        require_encryption=True,
    )


@contextlib.contextmanager
def quiet_versions() -> Iterator[None]:
    """Silence distributed's VersionMismatchWarning: the tool reports skew itself, precisely."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Mismatched versions found")
        yield


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class SchedulerLink:
    """An asynchronous client to the scheduler, kept open across ``--watch`` rounds.

    One client for the whole watch keeps the scheduler's log free of a connect and a
    disconnect every round. After a failure the client is closed and the next round
    connects afresh. ``dial`` is where this machine reaches the scheduler (a loopback
    forward when the hosts are behind a jump host; ``connection.scheduler_route``).
    """

    def __init__(self, inventory: Inventory, dial: str | None = None, timeout: float = TIMEOUT):
        self.inventory = inventory
        self.address = connection.cluster_address(inventory)
        self.dial = dial or self.address
        self.timeout = timeout
        self._client: Any = None

    async def view(self) -> SchedulerView:
        """Ask the scheduler who is registered and which versions everyone runs."""
        # distributed takes half a second to import: do it in a thread so that an SSH
        # round, waiting on the network meanwhile, keeps moving on the event loop
        await asyncio.to_thread(importlib.import_module, "distributed")
        from distributed import Client

        try:
            if self._client is None:
                self._client = await Client(  # type: ignore[no-untyped-call]
                    self.dial,
                    security=client_security(self.inventory),
                    asynchronous=True,
                    timeout=self.timeout,
                )
            identity, versions = await asyncio.wait_for(
                asyncio.gather(
                    self._client.scheduler.identity(n_workers=-1), self._client.get_versions()
                ),
                self.timeout,
            )
        except (OSError, TimeoutError, PkiError) as exc:
            await self.close()
            return SchedulerView(self.address, error=_first_line(exc))
        return SchedulerView(
            self.address, workers=workers_from_identity(identity), versions=versions
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(OSError, TimeoutError):
                await client.close()


class SchedulerSession:
    """A synchronous client for the upgrade: who is registered, retire, compute, versions.

    ``open`` raises ``OSError``/``TimeoutError`` when the scheduler does not answer, and
    ``PkiError`` when the client certificate is missing.
    """

    def __init__(self, client: Client, address: str) -> None:
        self._client = client
        self.address = address

    @classmethod
    def open(cls, inventory: Inventory, dial: str, timeout: float = 15) -> SchedulerSession:
        from distributed import Client

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # version skew is reported by the caller
            client = Client(  # type: ignore[no-untyped-call]
                dial, security=client_security(inventory), timeout=timeout
            )
        return cls(client, connection.cluster_address(inventory))

    def workers(self) -> tuple[WorkerView, ...]:
        """Every registered worker, as the scheduler sees it now."""
        return workers_from_identity(self._client.scheduler_info(n_workers=-1))

    def versions(self) -> dict[str, Any]:
        """``Client.get_versions``: the packages of the scheduler and of each worker."""
        versions: Any = self._client.get_versions(check=False)
        return dict(versions)

    def version(self) -> str:
        """The distributed version the scheduler runs."""
        return str(self.versions()["scheduler"]["packages"]["distributed"])

    def retire(self, addresses: Sequence[str], timeout: float) -> set[str]:
        """Retire workers through the scheduler (their data moves first); return those it
        retired. ``TimeoutError`` when it takes longer than ``timeout`` seconds."""
        if not addresses:
            return set()
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(
                self._client.retire_workers, workers=list(addresses), close_workers=True
            )
            try:
                return set(future.result(timeout=timeout))
            except FutureTimeout:
                raise TimeoutError(
                    f"retiring {len(addresses)} worker(s) took longer than {timeout:.0f} s"
                ) from None

    def compute_on(self, addresses: Sequence[str]) -> str:
        """Run a small task on each worker; '' when all computed, else why not."""
        futures = [
            # a stdlib function: the scheduler unpickles it, and it cannot import this package
            self._client.submit(operator.add, 1, 1, workers=[a], pure=False)
            for a in addresses
        ]
        try:
            self._client.gather(futures, errors="raise")  # type: ignore[no-untyped-call]
        except Exception as exc:  # the user's cluster: any failure here fails the batch
            return f"a new worker did not compute: {type(exc).__name__}: {exc}"
        return ""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()  # type: ignore[no-untyped-call]
