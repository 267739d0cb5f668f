"""Read the cluster: SSH reads, the scheduler's view, status, verify, logs."""
