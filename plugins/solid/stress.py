"""Stress tensor and pressure observable (virial from the strain derivative + kinetic term).

σ = σ^B − σ^K with σ^B = (1/V) ∂U/∂ε (core.mechanics; fixed fractional coordinates, valid for
any triclinic box) and σ^K = (1/V) Σ m v⊗v (from velocities) or (N kT/V) I (from the ensemble
temperature).  Stress is positive when tensile; pressure P = −tr(σ)/3 is positive under
compression.  Values are GPa to the user.
"""
from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from pydantic import BaseModel, ConfigDict, Field

from fusepot.core.interfaces import Observable
from fusepot.core.mechanics import kinetic_stress, strain_derivative
from fusepot.core.units import pressure_to_gpa

from .voigt import tensor_to_voigt


def stress_tensor(potential, frame, nbrs, kinetic: str = "temperature"):
    """Instantaneous total stress (3×3, eV/Å³, tensile positive) of one frame.

    kinetic: "temperature" (N kT/V on the diagonal), "velocities" ((1/V) Σ m v⊗v) or "none"
    (potential part only, e.g. for T = 0 structures).
    """
    conf = frame.conf
    v = conf.volume()
    sigma = strain_derivative(potential, conf, nbrs) / v
    if kinetic == "velocities":
        sigma = sigma - kinetic_stress(frame.velocities, frame.masses, v, conf.mask)
    elif kinetic == "temperature":
        sigma = sigma - jnp.sum(conf.mask) * frame.state.kT / v * jnp.eye(3, dtype=sigma.dtype)
    elif kinetic != "none":
        raise ValueError(f"kinetic must be 'temperature', 'velocities' or 'none', not {kinetic!r}")
    return sigma


class Stress(Observable):
    """Mean stress tensor (Voigt 6 or 3×3) or pressure, GPa; linear, so the weighted mean."""

    output: str = eqx.field(static=True, default="voigt")
    kinetic: str = eqx.field(static=True, default="temperature")
    unit = "GPa"
    needs_potential = True

    def per_frame(self, potential, frame, nbrs):
        s = stress_tensor(potential, frame, nbrs, self.kinetic)
        if self.output == "voigt":
            return tensor_to_voigt(s)
        if self.output == "tensor":
            return s
        return -jnp.trace(s) / 3.0  # pressure

    def to_user(self, estimate):
        return pressure_to_gpa(estimate)


class StressParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    output: Literal["voigt", "tensor", "pressure"] = Field(
        "voigt", description="'voigt': (σxx, σyy, σzz, σyz, σxz, σxy); 'tensor': 3×3; 'pressure': −tr σ/3")
    kinetic: Literal["temperature", "velocities", "none"] = Field(
        "temperature", description="kinetic term from N kT/V, from stored velocities, or none (static)")


def build_stress(p: StressParams, ctx) -> Stress:
    return Stress(output=p.output, kinetic=p.kinetic)
