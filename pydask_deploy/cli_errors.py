"""How every command reports a known error: one clean line on stderr and its exit code.

Its own module so that the command modules (``cli``, ``cli_inventory``, ``cli_cloud``)
share it without importing one another.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from pydask_deploy.errors import DeployError

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
