"""Scaling-law sweeps: size families, run plans, local and pod launch, collection, fits and plots."""
