"""The ``pydask-deploy`` command line: parse, call one library function, render."""

from pydask_deploy.cli.main import main

__all__ = ["main"]
