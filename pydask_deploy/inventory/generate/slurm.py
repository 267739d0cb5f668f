"""An inventory from the nodes of a Slurm partition, as ``sinfo`` reports them.

Reading and deciding are apart: ``read_partition`` runs ``sinfo`` (here, or on a login node
over SSH) and ``parse_sinfo`` is a pure function of its output, tested on recorded output.
Every node in service becomes a worker; GPUs from its GRES become ``dask_worker_gpus``: one
worker per GPU, each with the Dask resource ``GPU=1``. Threads and memory are left to Dask,
which uses all of a node's cores and memory.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from pydask_deploy.errors import UsageError
from pydask_deploy.inventory.generate.spec import (
    ClusterSpec,
    HostEntry,
    connection_vars,
    parse_jump,
)
from pydask_deploy.inventory.generate.static import collect
from pydask_deploy.observe.remote import CommandResult, SSHTarget, run_on_hosts

# Node name, its address (NodeAddr), state, CPUs, memory (MB) and GRES: one node a line.
SINFO_FORMAT = "%N|%o|%T|%c|%m|%G"
SINFO_TIMEOUT = 60.0

# Base states of a node that runs jobs (sinfo's long form, `%T`).
_IN_SERVICE = frozenset({"idle", "mixed", "allocated", "completing", "reserved", "planned"})
# State suffixes: * not responding, ~ powered off, # powering up, % powering down,
# ! power down pending, $ maintenance reservation, @ reboot pending, ^ rebooting.
_OUT_OF_SERVICE_FLAGS = frozenset("*~#%!$@^")
_GRES_SOCKETS = re.compile(r"\([^()]*\)$")  # `(S:0-1)`, `(IDX:0-7)` after the count
_GRES_COUNT = re.compile(r"(\d+)([KMG]?)")
_PARTITION = re.compile(r"[A-Za-z0-9_.,-]+")


@dataclass(frozen=True)
class SlurmNode:
    """One line of ``sinfo -N -o '%N|%o|%T|%c|%m|%G'``.

    ``state`` is sinfo's long form with its flags (``idle``, ``mixed``, ``drained``,
    ``down*`` ...); ``cpus`` and ``memory_mb`` are None when sinfo shows no number;
    ``gres`` is ``(null)`` when the node has none.
    """

    name: str
    address: str
    state: str
    cpus: int | None
    memory_mb: int | None
    gres: str

    @property
    def in_service(self) -> bool:
        """Whether the node takes work: a running state without a down, drain or power flag."""
        return node_in_service(self.state)

    @property
    def gpus(self) -> int:
        """How many GPUs its GRES declares."""
        return gpu_count(self.gres)


def node_in_service(state: str) -> bool:
    """Whether a node in sinfo ``state`` (``idle``, ``mixed-``, ``down*``, ``idle+cloud`` ...)
    takes work. Drained, draining, down, failing, powered-off and not-responding nodes do not.
    """
    text = state.strip().lower()
    flags = set(text) & _OUT_OF_SERVICE_FLAGS
    base, *extra = text.rstrip("".join(_OUT_OF_SERVICE_FLAGS) + "-").split("+")
    bad_extra = {"drain", "draining", "drained", "fail", "maint", "power_down", "powered_down"}
    return base in _IN_SERVICE and not flags and not bad_extra & set(extra)


def _split_gres(gres: str) -> list[str]:
    """Split a GRES list on the commas that are not inside parentheses."""
    items: list[str] = []
    depth, current = 0, ""
    for char in gres:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [*items, current]


def gpu_count(gres: str) -> int:
    """GPUs in a GRES list: ``gpu:2`` is 2, ``gpu:a100:4(S:0-1)`` 4, ``(null)`` 0.

    Several GPU types add up (``gpu:a100:2,gpu:1g.10gb:3`` is 5); a type may be ``(null)``
    and flags may come before the count (``gpu:a100:no_consume:4``); ``gpu`` alone is 1, as
    in gres.conf; ``K``/``M``/``G`` multiply by 1024; other GRES (``mps``, ``shard``) are not
    GPUs.
    """
    total = 0
    for item in _split_gres(gres.strip()):
        parts = _GRES_SOCKETS.sub("", item.strip()).split(":")
        if parts[0] != "gpu":
            continue
        count = _GRES_COUNT.fullmatch(parts[-1]) if len(parts) > 1 else None
        total += int(count[1]) * 1024 ** " KMG".index(count[2] or " ") if count else 1
    return total


def _number(text: str) -> int | None:
    digits = re.match(r"\d+", text.strip())
    return int(digits.group()) if digits else None


def parse_sinfo(text: str) -> tuple[SlurmNode, ...]:
    """Read ``sinfo -h -N -o '%N|%o|%T|%c|%m|%G'`` output: one node a line, each node once.

    ValueError naming the line when a line is not six ``|``-separated fields.
    """
    nodes: dict[str, SlurmNode] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("|")]
        if len(fields) != 6 or not fields[0]:
            raise ValueError(f"line {number} is not {SINFO_FORMAT!r}: {line.strip()!r}")
        name, address, state, cpus, memory, gres = fields
        # A node in two of the partitions asked for is listed once for each.
        nodes.setdefault(
            name,
            SlurmNode(
                name=name,
                address=address if address and address != "N/A" else name,
                state=state,
                cpus=_number(cpus),
                memory_mb=_number(memory),
                gres=gres or "(null)",
            ),
        )
    return tuple(nodes.values())


# --------------------------------------------------------------------------- reading


def sinfo_argv(partition: str) -> list[str]:
    """The ``sinfo`` command that lists the nodes of ``partition``, one a line."""
    return ["sinfo", "--noheader", "--Node", "--partition", partition, "--format", SINFO_FORMAT]


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _run_here(argv: Sequence[str]) -> CommandResult:
    if shutil.which(argv[0]) is None:
        raise UsageError(
            f"{argv[0]} is not installed here (not on PATH); run this on a Slurm login node, "
            "or pass --login HOST to run it there over SSH"
        )
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=SINFO_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise UsageError(
            f"{argv[0]} did not answer within {SINFO_TIMEOUT:g} s; is the Slurm controller up?"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    return CommandResult(done.stdout, done.stderr, done.returncode, 0.0)


def _run_there(argv: Sequence[str], login: SSHTarget, shown: str) -> CommandResult:
    command = shlex.join(argv)
    result = asyncio.run(run_on_hosts({shown: login}, command, timeout=SINFO_TIMEOUT))[shown]
    if not isinstance(result, CommandResult):
        hint = ""
        if result.reason.startswith("host key not verifiable"):
            port = ["-p", str(login.port)] if login.port != 22 else []
            ssh = shlex.join(
                ["ssh", *port, f"{login.user}@{login.address}" if login.user else login.address]
            )
            hint = f"; log in once with `{ssh}` to record its host key"
        raise UsageError(f"cannot reach the login host {shown}: {result.reason}{hint}")
    if result.exit_status == 127:
        raise UsageError(
            f"{argv[0]} is not on the PATH of non-interactive SSH commands on {shown}; add "
            "Slurm's bin directory to that PATH there (for bash: near the top of ~/.bashrc)"
        )
    return result


def _run(argv: Sequence[str], login: SSHTarget | None, shown: str | None) -> str:
    result = _run_here(argv) if login is None else _run_there(argv, login, shown or "")
    if result.exit_status != 0:
        where = f" on {shown}" if shown else ""
        status = "no exit status" if result.exit_status is None else f"exit {result.exit_status}"
        said = _first_line(result.stderr) or _first_line(result.stdout) or "no message"
        raise UsageError(f"`{shlex.join(argv)}` failed{where} ({status}): {said}")
    return result.stdout


def read_partition(
    partition: str, login: SSHTarget | None = None, shown: str | None = None
) -> tuple[SlurmNode, ...]:
    """The nodes of ``partition`` from ``sinfo``, run here or on ``login`` over SSH.

    UsageError (nothing written, exit 2) when sinfo is missing, fails, or the login host
    cannot be reached; and when the partition has no node (sinfo then prints nothing: the
    message lists the partitions that exist).
    """
    if not _PARTITION.fullmatch(partition):
        raise UsageError(f"--partition {partition!r} is not a Slurm partition name")
    argv = sinfo_argv(partition)
    output = _run(argv, login, shown)
    try:
        nodes = parse_sinfo(output)
    except ValueError as exc:
        raise UsageError(f"unexpected output from `{shlex.join(argv)}`: {exc}") from None
    if nodes:
        return nodes
    # sinfo says nothing, and exits 0, for a partition that does not exist: say which do.
    known = _run(["sinfo", "--noheader", "--format", "%R"], login, shown).split()
    if partition not in known:
        listed = ", ".join(dict.fromkeys(known)) or "none"
        raise UsageError(f"Slurm has no partition {partition!r}; partitions: {listed}")
    raise UsageError(f"Slurm partition {partition!r} has no nodes")


# --------------------------------------------------------------------------- deciding


def _comment(node: SlurmNode) -> str:
    cpus = f"{node.cpus} CPUs" if node.cpus is not None else "CPUs unknown"
    memory = f"{node.memory_mb} MB memory" if node.memory_mb is not None else "memory unknown"
    gres = f", GRES {node.gres}" if node.gres != "(null)" else ""
    return f"{cpus}, {memory}{gres}; {node.state}"


def _entry(node: SlurmNode) -> HostEntry:
    return HostEntry(
        name=node.name,
        address=node.address if node.address != node.name else None,
        vars={"dask_worker_gpus": node.gpus} if node.gpus else {},
        comment=_comment(node),
    )


def _by_state(nodes: Sequence[SlurmNode]) -> str:
    """``drained: node[03-04]; down*: node07``."""
    by_state: dict[str, list[str]] = {}
    for node in nodes:
        by_state.setdefault(node.state, []).append(node.name)
    return "; ".join(f"{state}: {collect(names)}" for state, names in by_state.items())


def plan_partition(
    partition: str,
    nodes: Sequence[SlurmNode],
    scheduler: str | None,
    common_vars: dict[str, object],
    source: str,
    where: str,
) -> ClusterSpec:
    """The cluster for a partition's nodes: every node in service is a worker; the scheduler
    (``scheduler``, else the first node in service) runs a worker too. Pure: no Slurm here.
    """
    usable = [n for n in nodes if n.in_service]
    down = [n for n in nodes if not n.in_service]
    if not usable:
        raise UsageError(
            f"Slurm partition {partition!r} has no node in service ({_by_state(down)})"
        )
    if scheduler is None:
        head = usable[0]
    else:
        by_name = {n.name: n for n in nodes}
        if scheduler not in by_name:
            raise UsageError(
                f"--scheduler {scheduler!r} is not a node of partition {partition!r} "
                f"(its nodes: {collect(list(by_name))})"
            )
        head = by_name[scheduler]
        if not head.in_service:
            raise UsageError(
                f"--scheduler {scheduler!r} is {head.state}, not in service; choose one of "
                f"{collect([n.name for n in usable])}"
            )
    notes = (
        f"The nodes in service of Slurm partition '{partition}', as sinfo reported them "
        f"{where}; Slurm's CPUs, memory, GRES and state for each are in its comment.",
        "Each worker uses all of its node's cores and memory (Dask's defaults); a node with "
        "GPUs in its GRES runs one worker per GPU (dask_worker_gpus), each with the resource "
        "GPU=1, for client.submit(..., resources={'GPU': 1}).",
        "The Dask services run beside Slurm, not as Slurm jobs: Slurm does not count what "
        "they use, so give these nodes to Dask (a partition or a reservation of their own).",
    )
    return ClusterSpec(
        scheduler=_entry(head),
        workers=tuple(_entry(n) for n in usable),
        common_vars=common_vars,
        source=source,
        notes=notes,
        warnings=(
            (f"Left out {len(down)} node(s) not in service ({_by_state(down)}).",) if down else ()
        ),
    )


def slurm_spec(
    partition: str,
    scheduler: str | None,
    login: str | None,
    user: str | None,
    key: str | None,
    jump: str | None,
    source: str,
) -> ClusterSpec:
    """The cluster for Slurm partition ``partition``, read with sinfo here or on ``login``.

    Given ``login`` (``[USER@]HOST[:PORT]``), sinfo runs there over SSH, as ``USER`` (else
    ``user``) with ``key``, and the nodes are reached through it (the login host becomes the
    jump host) unless ``jump`` names another or is ``none``.
    """
    hop = parse_jump(login, "--login")
    route = jump
    if jump is None and hop is not None:  # the nodes are reached through the login host
        host = f"[{hop.host}]" if ":" in hop.host else hop.host
        hop_user = hop.user or user
        route = f"{hop_user + '@' if hop_user else ''}{host}:{hop.port}"
    common_vars = connection_vars(user, key, route)
    target = None
    if hop is not None:
        target = SSHTarget(
            address=hop.host,
            port=hop.port,
            user=hop.user or user,
            key_file=os.path.expanduser(key) if key else None,
            connect_timeout=10.0,
        )
    nodes = read_partition(partition, target, str(hop) if hop else None)
    where = f"on {hop}" if hop else "here"
    return plan_partition(partition, nodes, scheduler, common_vars, source, where)
