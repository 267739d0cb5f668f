"""Every name Python shares with ``roles/`` and ``playbooks/``, in one place.

The role and the playbooks are YAML and Jinja; Python starts them, waits for their tasks,
reads what they leave on the hosts and passes them extra variables. Each such name is written
here once and imported wherever Python needs it; ``tests/test_contract.py`` reads the YAML
under ``roles/`` and ``playbooks/`` and fails when the two drift apart.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- the role

# The one role the playbooks run (``roles/dask``): one role, so that every variable users set
# carries its name as prefix (``dask_*``), as ansible-lint's production profile asks.
ROLE = "dask"
# Under ``roles/``: every variable an inventory may set, with its default.
ROLE_DEFAULTS = f"{ROLE}/defaults/main.yml"

# --------------------------------------------------------------------------- inventory groups

SCHEDULER_GROUP = "dask_scheduler"
WORKERS_GROUP = "dask_workers"

# --------------------------------------------------------------------------- playbooks

SITE_PLAYBOOK = "site.yml"  # apply: converge every host
RESTART_PLAYBOOK = "restart.yml"  # upgrade: restart the units of the hosts in --limit
DESTROY_PLAYBOOK = "destroy.yml"  # destroy: remove what apply installed

# --------------------------------------------------------------------------- systemd units

UNIT_DIR = "/etc/systemd/system"
SCHEDULER_UNIT = "dask-scheduler"
WORKER_UNIT = "dask-worker"
# The first line of the unit files naming the runtime the unit starts (status reads it).
UNIT_RUNTIME_COMMENT = "# runtime: "


def unit_file(unit: str) -> str:
    """The unit's file name, as systemd and the role name it: ``dask-worker.service``."""
    return f"{unit}.service"


def unit_path(unit: str) -> str:
    """Where the role installs the unit: ``/etc/systemd/system/dask-worker.service``."""
    return f"{UNIT_DIR}/{unit_file(unit)}"


# The tasks that report a change when a unit file changed (runtime, options, certificates):
# upgrade learns from them which hosts need their workers retired and restarted.
SCHEDULER_UNIT_TASK = "Install the dask-scheduler unit."
WORKER_UNIT_TASK = "Install the dask-worker unit."

# The last task of site.yml: a host that reported it has been through the whole playbook.
LAST_SITE_TASK = "Remove the in-sync record while restarts are deferred."

# --------------------------------------------------------------------------- files on the hosts

# In dask_config_dir: the in-sync record the last tasks of site.yml write (deploy/insync.py).
RECORD_NAME = ".pydask-deploy-applied"
# In dask_config_dir: the directory with the cluster CA's certificate, the host's
# certificate and key (the role's __dask_tls_dir), and the CA certificate's name there.
TLS_DIR = "tls"
CA_CERT = "ca.crt"
# In each runtime's directory: written once the runtime is completely installed.
RUNTIME_MARKER = ".pydask-deploy-installed"
# Under dask_base_dir: the runtimes, and the link to the one the units start.
ENVS_DIR = "envs"
CURRENT_LINK = "envs/current"

# --------------------------------------------------------------------------- extra variables

# What pydask-deploy passes to the playbooks (``ansible-playbook -e``); private to the roles.
EXTRA_TLS_SRC_DIR = "__dask_tls_src_dir"  # the controller's certificate directory
EXTRA_TLS_PENDING = "__dask_tls_pending"  # --check before the certificates exist
EXTRA_INSYNC = "__dask_insync"  # per host: fingerprint, record path, state script
EXTRA_DEFER_RESTART = "__dask_defer_restart"  # upgrade stages: write units, restart nothing
EXTRA_RESTART_UNITS = "__dask_restart_units"  # restart.yml: which units, by role
EXTRA_REMOVE_USER = "__dask_remove_user"  # destroy --remove-user
EXTRA_CONDA = "__dask_conda"  # per conda host: env id, final path, the staged tarball here

# --------------------------------------------------------------------------- defaults Python reads

# Role variables whose values Python reads (through ``Inventory.dask_vars``, which lays the
# inventory over the role's defaults); each must have a default in ``ROLE_DEFAULTS``.
VARIABLES_READ = (
    "dask_user",
    "dask_base_dir",
    "dask_config_dir",
    "dask_data_dir",
    "dask_runtime",
    "dask_version",
    "dask_docker_image",
    "dask_docker_image_tarball",
    "dask_conda_environment_file",
    "dask_conda_platform",
    "dask_conda_cache_dir",
    "dask_scheduler_address",
    "dask_scheduler_host",
    "dask_scheduler_port",
    "dask_dashboard_port",
    "dask_dashboard_address",
    "dask_worker_nworkers",
    "dask_worker_local_directory",
    "dask_tls",
    "dask_tls_cert_days",
    "dask_tls_renew_days",
    "dask_tls_pki_dir",
)

# The scheduler's address when ``dask_scheduler_address`` is empty: the ``ansible_host`` of
# the first host of the scheduler group, else its inventory name. Python computes it in
# ``observe/connection.py``; the role computes it with this expression.
SCHEDULER_ADDRESS_FALLBACK = (
    "hostvars[groups['dask_scheduler'][0]]['ansible_host'] | default(groups['dask_scheduler'][0])"
)
