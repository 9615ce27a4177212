"""Parallelism: the device mesh, logical-axis rules -> shardings, host-local -> global arrays."""
