"""What the command modules (``cli``, ``cli_inventory``, ``cli_cloud``) share: how a command
reports a known error, and the options and the last step of every ``inventory`` generator.

Its own module so that they share it without importing one another.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from pydask_deploy.errors import DeployError
from pydask_deploy.inventory.generate.render import check_output, write_inventory
from pydask_deploy.inventory.generate.spec import ClusterSpec

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(func: F) -> F:
    """Turn a ``DeployError`` raised by a command into one line on stderr and its exit code
    (2 for bad usage or input, 1 for failures); anything else is a bug and keeps its
    traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DeployError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class GeneratorOptions:
    """The options every inventory generator takes: how Ansible logs in to the hosts
    (``--user``, ``--key``, ``--jump``) and where the inventory goes (``-o FILE``,
    ``--force``)."""

    user: str | None
    key: str | None
    jump: str | None
    output: Path | None
    force: bool

    @property
    def connection(self) -> dict[str, object]:
        """``--user``, ``--key`` and ``--jump`` by name, for ``command_line``."""
        return {"user": self.user, "key": self.key, "jump": self.jump}

    def check_output(self) -> None:
        """Refuse an existing ``-o FILE`` before any host or service is asked anything."""
        if self.output is not None:
            check_output(self.output, self.force)


def generator_options(
    *, user_help: str, jump_help: str
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command ``--user``, ``--key``, ``--jump``, ``-o`` and ``--force`` (the first and
    the third with the command's own help), passed to it as one keyword argument
    ``options: GeneratorOptions``."""
    decorators = (
        click.option("--user", metavar="USER", help=user_help),
        click.option(
            "--key",
            metavar="FILE",
            help="Private key to log in with (ansible_ssh_private_key_file); it must exist. "
            "Default: what SSH picks (agent, ~/.ssh/id_*).",
        ),
        click.option("--jump", metavar="[USER@]HOST[:PORT]", help=jump_help),
        click.option(
            "-o",
            "--output",
            type=click.Path(dir_okay=False, path_type=Path),
            metavar="FILE",
            help="Write the inventory to FILE (its directory is created) instead of printing it "
            "on stdout.",
        ),
        click.option("--force", is_flag=True, help="Overwrite FILE when it exists."),
    )

    def decorate(func: Callable[..., None]) -> Callable[..., None]:
        @wraps(func)
        def command(
            *args: Any,
            user: str | None,
            key: str | None,
            jump: str | None,
            output: Path | None,
            force: bool,
            **kwargs: Any,
        ) -> None:
            func(*args, options=GeneratorOptions(user, key, jump, output, force), **kwargs)

        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return decorate


def command_line(words: Sequence[str], values: Mapping[str, object]) -> str:
    """The command line that makes the inventory again, for its header's ``source``:
    ``pydask-deploy inventory``, ``words``, then each value that is not None or False after
    its flag (``-o`` for ``output``, else ``--name-with-dashes``; a tuple's items each after
    the flag, True the flag alone)."""
    argv = ["pydask-deploy", "inventory", *words]
    for name, value in values.items():
        if value is None or value is False:
            continue
        flag = "-o" if name == "output" else "--" + name.replace("_", "-")
        for item in value if isinstance(value, tuple) else (value,):
            argv += [flag] if item is True else [flag, str(item)]
    return shlex.join(argv)


def write_and_summarize(
    spec: ClusterSpec, options: GeneratorOptions, found_in: str | None = None
) -> None:
    """Write the inventory to ``-o FILE`` (else stdout), show the spec's warnings, and say on
    stderr what was written and what is next. Given ``found_in`` (where a cloud's VMs were
    listed), the summary names the scheduler and says where the hosts came from."""
    output = options.output
    text = write_inventory(spec, output, force=options.force)
    for warning in spec.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    if output is None:
        click.echo(text, nl=False)
        return
    workers = len(spec.workers)
    counted = f"{workers} worker{'' if workers == 1 else 's'}"
    if found_in is None:
        wrote = f"1 scheduler, {counted}"
    else:
        head = spec.scheduler
        wrote = f"scheduler {head.name} ({head.address}), {counted} from {found_in}"
    click.echo(
        f"wrote {output}: {wrote}; next: pydask-deploy check {shlex.quote(str(output))}",
        err=True,
    )
