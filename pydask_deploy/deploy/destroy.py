"""Remove a Dask cluster from its hosts: what ``pydask-deploy destroy`` runs.

Ansible does the work (``playbooks/destroy.yml``, the role's ``tasks/destroy.yml``): stop and
disable the units, remove them, the runtimes, ``dask_config_dir`` and ``dask_data_dir``, and
optionally the ``dask`` user. A later ``apply`` starts from a clean host. The cluster's
certificates beside the inventory are kept, so that a later ``apply`` reuses the same CA.
"""

from __future__ import annotations

from pydask_deploy.deploy.plan import plan_destroy
from pydask_deploy.deploy.run import OnProgress, RunResult, run_playbook
from pydask_deploy.inventory import Inventory


def destroy_cluster(
    inventory: Inventory, on_progress: OnProgress, *, remove_user: bool = False
) -> RunResult:
    """Remove what ``apply`` installed from every host of the inventory (idempotent)."""
    return run_playbook(plan_destroy(inventory, remove_user=remove_user), on_progress)
