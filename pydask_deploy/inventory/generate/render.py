"""Write a ``ClusterSpec`` as a commented Ansible YAML inventory, validated before it lands.

The text is built by hand around PyYAML-dumped values: PyYAML cannot write comments, and a
generated inventory is meant to be read, edited and kept in git.
"""

from __future__ import annotations

import os
import re
import shlex
import tempfile
import textwrap
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import yaml

from pydask_deploy import __version__
from pydask_deploy.errors import InventoryError, UsageError
from pydask_deploy.inventory import SCHEDULER_GROUP, WORKERS_GROUP, load_inventory
from pydask_deploy.inventory.generate.spec import (
    HOST_NAME_RULE,
    ClusterSpec,
    HostEntry,
    valid_host_name,
)

_WIDTH = 96
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _plain(value: object) -> object:
    """Mappings and sequences as dicts and lists, which PyYAML's safe dumper writes."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _dump(mapping: Mapping[str, object], indent: int) -> list[str]:
    """YAML lines for ``mapping`` in block style, indented by ``indent`` spaces."""
    if not mapping:
        return []
    text = yaml.safe_dump(_plain(mapping), default_flow_style=False, sort_keys=False, width=1 << 30)
    return [" " * indent + line for line in text.splitlines()]


def _key(name: str) -> str:
    """A mapping key as YAML writes it (quoted only when it must be)."""
    text = yaml.safe_dump(name, default_flow_style=True, width=1 << 30)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _comment(text: str, indent: int = 0, wrap: bool = False, lead: str = "") -> list[str]:
    """Comment lines for ``text``: control characters can never end the comment early."""
    line = _CONTROL.sub(" ", text).strip()
    prefix = " " * indent + "# " + lead
    if not wrap:
        return [prefix + line]
    return textwrap.wrap(
        line,
        _WIDTH,
        initial_indent=prefix,
        subsequent_indent=prefix + "  ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def _merged_scheduler(spec: ClusterSpec) -> HostEntry:
    """The scheduler's entry, with its worker entry's address, vars and comment folded in.

    A host in both groups is defined once, where it is first listed (under dask_scheduler),
    so what its worker entry carries must be written there.
    """
    sched = spec.scheduler
    twin = next((w for w in spec.workers if w.name == sched.name), None)
    if twin is None:
        return sched
    if sched.address and twin.address and sched.address != twin.address:
        raise UsageError(
            f"host '{sched.name}' has two addresses: {sched.address} as the scheduler and "
            f"{twin.address} as a worker"
        )
    return HostEntry(
        name=sched.name,
        address=sched.address or twin.address,
        vars={**twin.vars, **sched.vars},
        comment=sched.comment or twin.comment,
    )


def _check(spec: ClusterSpec) -> None:
    seen: set[str] = set()
    for entry in (spec.scheduler, *spec.workers):
        if not valid_host_name(entry.name):
            raise UsageError(f"host name {entry.name!r} cannot be used: {HOST_NAME_RULE}")
    for worker in spec.workers:
        if worker.name in seen:
            raise UsageError(f"host '{worker.name}' is listed twice among the workers")
        seen.add(worker.name)


def _host_lines(entry: HostEntry, indent: int) -> list[str]:
    lines = _comment(entry.comment, indent) if entry.comment else []
    lines.append(" " * indent + _key(entry.name) + ":")
    host_vars: dict[str, object] = {}
    if entry.address and entry.address != entry.name:
        host_vars["ansible_host"] = entry.address
    host_vars.update(entry.vars)
    return lines + _dump(host_vars, indent + 2)


def _header(spec: ClusterSpec, path: str | None, now: datetime) -> list[str]:
    shown = _CONTROL.sub(" ", shlex.quote(path)) if path else "THIS-FILE"
    workers = len(spec.workers)
    also = any(w.name == spec.scheduler.name for w in spec.workers)
    role = " (it also runs a worker)" if also else " (scheduler only)"
    lines = [line for text in spec.preamble for line in _comment(text, wrap=True)]
    lines += ["#"] if lines else []
    lines += _comment(
        f"A Dask cluster inventory written by pydask-deploy {__version__} on "
        f"{now.astimezone(UTC):%Y-%m-%d %H:%M} UTC with:"
    )
    lines += _comment(spec.source, lead="  ")
    lines.append("#")
    lines += _comment(
        f"Scheduler: {spec.scheduler.name}{role}; "
        f"{workers} worker host{'' if workers == 1 else 's'}.",
        wrap=True,
    )
    for note in (*spec.warnings, *spec.notes):
        lines += _comment(note, wrap=True)
    lines += [
        "#",
        "# A standard Ansible YAML inventory: edit it and keep it in git. Next:",
        f"#   pydask-deploy check {shown}    # validate it; no SSH",
        f"#   pydask-deploy apply {shown}    # converge every host into the cluster",
        "# Options for all hosts go under `all.vars`, for one host under its name; every",
        "# dask_* variable and its default is listed in the README's 'Role variables'.",
    ]
    return lines


def render(spec: ClusterSpec, path: str | None = None, now: datetime | None = None) -> str:
    """The inventory text for ``spec``: header comment, ``all.vars``, both groups.

    ``path`` is where it will be written, for the "next" commands in the header. A host in
    both groups is defined (with its variables) under dask_scheduler and named bare under
    dask_workers, as Ansible merges a host listed in two groups.
    """
    _check(spec)
    scheduler = _merged_scheduler(spec)
    lines = _header(spec, path, now or datetime.now(UTC))
    lines.append("all:")
    if spec.common_vars:
        lines += ["  vars:", *_dump(spec.common_vars, 4)]
    lines += ["  children:", f"    {SCHEDULER_GROUP}:", "      hosts:"]
    lines += _host_lines(scheduler, 8)
    lines.append(f"    {WORKERS_GROUP}:")
    if not spec.workers:
        lines += ["      # No workers yet: list hosts here.", "      hosts: {}"]
    else:
        lines.append("      hosts:")
    for worker in spec.workers:
        if worker.name == scheduler.name:
            lines.append(f"        {_key(worker.name)}:  # defined under {SCHEDULER_GROUP} above")
        else:
            lines += _host_lines(worker, 8)
    return "\n".join(lines) + "\n"


def _stage(text: str, directory: Path) -> Path:
    """Write ``text`` to a new temporary file in ``directory`` (same file system: renames)."""
    fd, name = tempfile.mkstemp(prefix=".pydask-inventory-", suffix=".yml", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _validate(staged: Path, shown: str) -> None:
    """Validate a staged inventory with ``load_inventory``; its errors name ``shown``."""
    try:
        load_inventory(staged)
    except InventoryError as exc:
        problems = str(exc).replace(str(staged), shown)
        raise InventoryError(
            f"the generated inventory for {shown} is not valid; nothing was written:\n{problems}"
        ) from None


def check_output(output: Path, force: bool = False) -> None:
    """UsageError when ``output`` is a directory, or exists and ``force`` is not given.

    ``write_inventory`` checks again; commands call this first so that nothing is asked of
    Slurm or a cloud for a file that would be refused.
    """
    if output.is_dir() or not force:
        _refuse_overwrite(output)


def _refuse_overwrite(output: Path) -> None:
    if output.is_dir():
        raise UsageError(f"{output} is a directory; give a file name, such as {output}/prod.yml")
    if output.exists() or output.is_symlink():
        raise UsageError(f"{output} already exists; pass --force to overwrite it")


def write_inventory(
    spec: ClusterSpec, output: Path | None, force: bool = False, now: datetime | None = None
) -> str:
    """Render ``spec``, validate it with ``load_inventory``, write it to ``output``; the text.

    With ``output`` None nothing is written (the caller prints the text). Otherwise the file
    is written atomically (a temporary file beside it, then a link or rename) and an existing
    file is only replaced with ``force``. The inventory is validated in the directory it goes
    to, so the group_vars/ and host_vars/ there count; when it is not valid (InventoryError)
    nothing is written.
    """
    if output is None:
        text = render(spec, None, now)
        with tempfile.TemporaryDirectory(prefix="pydask-inventory-") as scratch:
            _validate(_stage(text, Path(scratch)), "<stdout>")
        return text
    check_output(output, force)
    text = render(spec, str(output), now)
    if output.exists() and not output.is_file():
        # a device or a pipe (`-o /dev/null`): validated elsewhere, then written into; a
        # rename would replace the device node itself with a file
        with tempfile.TemporaryDirectory(prefix="pydask-inventory-") as scratch:
            _validate(_stage(text, Path(scratch)), str(output))
        with output.open("w", encoding="utf-8") as handle:
            handle.write(text)
        return text
    directory = output.parent
    fresh = not directory.is_dir()
    if fresh:  # nothing beside it yet: validate elsewhere, create the directory on success
        with tempfile.TemporaryDirectory(prefix="pydask-inventory-") as scratch:
            _validate(_stage(text, Path(scratch)), str(output))
        directory.mkdir(parents=True, exist_ok=True)
    staged = _stage(text, directory)
    try:
        if not fresh:
            _validate(staged, str(output))
        mask = os.umask(0)
        os.umask(mask)
        staged.chmod(0o666 & ~mask)  # mkstemp makes it 0600; an inventory is no secret
        if force:
            os.replace(staged, output)
        else:
            _link_new(staged, output)
    finally:
        staged.unlink(missing_ok=True)
    return text


def _link_new(staged: Path, output: Path) -> None:
    """Put ``staged`` at ``output`` unless something is there: a hard link fails then."""
    try:
        os.link(staged, output)
    except FileExistsError:
        raise UsageError(f"{output} already exists; pass --force to overwrite it") from None
    except OSError:  # a file system without hard links: check, then rename
        _refuse_overwrite(output)
        os.replace(staged, output)
