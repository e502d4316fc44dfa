"""Classical potentials: Lennard-Jones and EAM (LAMMPS setfl / funcfl-style tables)."""
from fusepot.core.plugins import Component, hookimpl

from .lj import LennardJones, LJParams, build_lj


@hookimpl
def fusepot_potentials():
    comps = [Component("lennard_jones", LennardJones, LJParams, build_lj,
                       "Truncated and shifted Lennard-Jones pair potential (per species pair)")]
    try:
        from .eam import EAM, EAMParams, build_eam
    except ImportError:  # pragma: no cover - eam module under construction
        return comps
    comps.append(Component("eam", EAM, EAMParams, build_eam,
                           "Embedded-atom method from LAMMPS eam, eam/alloy (setfl) or eam/fs files"))
    return comps
