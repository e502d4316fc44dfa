"""Solid-state observables (stress, elastic tensor, lattice constants) and NVT/NPT Nosé–Hoover ensembles (under construction)."""
from fusepot.core.plugins import hookimpl


@hookimpl
def fusepot_observables():
    return []
