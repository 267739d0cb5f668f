"""The inventory: load and validate it, cache its resolution, edit it, generate it.

``load_inventory`` turns an Ansible YAML inventory into a validated ``Inventory``; the rest of
the tool reads only that value.
"""

from pydask_deploy.contract import SCHEDULER_GROUP, WORKERS_GROUP
from pydask_deploy.inventory.load import load_inventory
from pydask_deploy.inventory.model import Host, Inventory
from pydask_deploy.inventory.variables import VAR_TYPES, known_variables, role_defaults

__all__ = [
    "SCHEDULER_GROUP",
    "VAR_TYPES",
    "WORKERS_GROUP",
    "Host",
    "Inventory",
    "known_variables",
    "load_inventory",
    "role_defaults",
]
