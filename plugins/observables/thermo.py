"""Thermodynamic observables: pressure and potential energy per atom."""
from __future__ import annotations

import jax.numpy as jnp
from pydantic import BaseModel, ConfigDict, Field

from fusepot.core.interfaces import Observable
from fusepot.core.mechanics import kinetic_stress, strain_derivative
from fusepot.core.units import pressure_to_gpa


class Pressure(Observable):
    """P = N k T / V − tr(∂U/∂ε)/(3V)  (kinetic term from the ensemble temperature, or from the
    stored velocities when `kinetic = "velocities"`). Positive under compression; GPa."""

    kinetic_from_velocities: bool = False
    unit = "GPa"
    needs_potential = True

    def per_frame(self, potential, frame, nbrs):
        conf = frame.conf
        v = conf.volume()
        p_vir = -jnp.trace(strain_derivative(potential, conf, nbrs)) / (3.0 * v)
        if self.kinetic_from_velocities:
            p_kin = jnp.trace(kinetic_stress(frame.velocities, frame.masses, v, conf.mask)) / 3.0
        else:
            p_kin = jnp.sum(conf.mask) * frame.state.kT / v
        return p_vir + p_kin

    def to_user(self, estimate):
        return pressure_to_gpa(estimate)


class PressureParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kinetic: str = Field("temperature", pattern="^(temperature|velocities)$",
                         description="kinetic term from N kT/V ('temperature') or from stored velocities")


def build_pressure(p: PressureParams, ctx) -> Pressure:
    return Pressure(kinetic_from_velocities=p.kinetic == "velocities")


class EnergyPerAtom(Observable):
    """⟨U⟩/N in eV/atom."""

    unit = "eV/atom"
    needs_potential = True

    def per_frame(self, potential, frame, nbrs):
        return potential.energy(frame.conf, nbrs) / jnp.sum(frame.conf.mask)


class EnergyPerAtomParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def build_energy_per_atom(p, ctx) -> EnergyPerAtom:
    return EnergyPerAtom()
