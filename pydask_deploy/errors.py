"""One root for the errors pydask-deploy expects; the CLI turns them into a clean line.

Each error carries the exit code the command contract gives it: 2 for bad usage or bad
input (nothing was changed on any host), 1 for a failure on a host or an unhealthy cluster.
Anything that is not a ``DeployError`` is a bug and keeps its traceback.
"""


class DeployError(Exception):
    """Base of every error pydask-deploy reports to the user without a traceback."""

    exit_code = 1


class UsageError(DeployError, ValueError):
    """Bad usage or bad input: exit 2, nothing was changed on any host."""

    exit_code = 2


class InventoryError(UsageError):
    """An inventory that cannot be used as written (names the file, the key and the value)."""


class CaMismatchError(UsageError):
    """A host carries another cluster CA than the inventory's: apply would lock every
    existing client out. Exit 2, nothing changed."""


class PythonMismatchError(UsageError):
    """The hosts' Pythons differ in their minor version, which pickled functions do not
    survive. Exit 2, nothing changed."""


class LabError(DeployError):
    """The local lab could not be brought up or down."""


class LabUsageError(LabError, UsageError):
    """The lab cannot run here as asked (not root, not Linux, subnet in use ...): exit 2."""

    exit_code = 2


class PkiError(DeployError):
    """The cluster's certificate directory cannot be used as it is (exit 1)."""


class SchedulerUnreachable(DeployError, OSError):
    """The way to the scheduler (an SSH port forward through the jump host) cannot be opened."""


class UpgradeError(DeployError):
    """The upgrade could not start (no scheduler to talk to): exit 1, nothing was changed."""


class Interrupted(DeployError):
    """SIGINT or SIGTERM stopped a command that changes hosts: exit 130. Ansible was stopped;
    running the same command again completes the job."""

    exit_code = 130


class CondaError(UsageError):
    """A conda environment that cannot be made as written: an environment file, a spec, a
    channel without packages for the hosts' platform, a package whose hash does not match
    its lock (names the file, the spec or the package): exit 2, no host touched."""


class CondaChannelError(DeployError):
    """A conda channel (or a package on it) could not be reached: exit 1, no host touched."""
