"""The ``pydask-deploy`` command line: parse, call one library function, render.

Known errors (``DeployError``) become one clean line on stderr and their exit code
(2 for bad usage or input, 1 for failures); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from pydask_deploy import __version__
from pydask_deploy.errors import DeployError

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(func: F) -> F:
    """Turn a ``DeployError`` raised by a command into one line on stderr and its exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DeployError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pydask-deploy")
def main() -> None:
    """Deploy a long-lived Dask cluster on machines you already have, over SSH.

    Declare the cluster in an Ansible inventory, then `apply` converges every host.
    Try it locally first: `pydask-deploy lab up --hosts 3` boots test hosts and writes
    inventory/lab.yml.
    """
