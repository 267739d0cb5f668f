"""Inventories made from what users have.

Each generator (``static``: host ranges, ``slurm``: a partition's nodes, the cloud ones: VMs
found by their tags) only reads what exists and returns a ``ClusterSpec``; ``render`` turns
that into a commented YAML inventory and ``write_inventory`` validates it with
``load_inventory`` before anything is written, so a generated inventory is never invalid.
"""
