"""Change hosts: plan, run Ansible, in-sync check, apply, upgrade, destroy, certificates."""
