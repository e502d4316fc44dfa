"""Built-in observables."""
from fusepot.core.plugins import Component, hookimpl

from .thermo import (EnergyPerAtom, EnergyPerAtomParams, Pressure, PressureParams, build_energy_per_atom,
                     build_pressure)


@hookimpl
def fusepot_observables():
    return [
        Component("pressure", Pressure, PressureParams, build_pressure,
                  "Scalar pressure: virial (strain derivative) + kinetic term, GPa"),
        Component("energy_per_atom", EnergyPerAtom, EnergyPerAtomParams, build_energy_per_atom,
                  "Mean potential energy per atom, eV/atom"),
    ]
