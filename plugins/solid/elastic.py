"""Isothermal elastic constants by the stress-fluctuation formula (Squire, Holt & Hoover 1969;
Ray 1988; Lutsko 1989), in Voigt form:

    C_IJ = ⟨C^B_IJ⟩ − (V/kT) (⟨σ^B_I σ^B_J⟩ − ⟨σ^B_I⟩⟨σ^B_J⟩) + (N kT/V) K_IJ,
    K = diag(2, 2, 2, 1, 1, 1)   [the ideal-gas term (δ_ik δ_jl + δ_il δ_jk) in Voigt form]

with σ^B = (1/V) ∂U/∂η and C^B = (1/V) ∂²U/∂η∂η w.r.t. the Green–Lagrange strain η at fixed
fractional coordinates (born.py).  Per-frame values are one (7, 6) array: row 0 is σ^B,
rows 1–6 are C^B (eV/Å³), so any reweighting engine can treat them as a plain array.
Averages are taken with the frame weights, so DiffTRe gradients flow through the weights
(Boltzmann reweighting) and through σ^B, C^B (which depend on the potential's parameters).

Sampling: the formula holds in the canonical ensemble at fixed box (NVT).  Take frames from
NVT at the (NPT-equilibrated) mean cell; V is the weighted mean volume of the frames.
Axes: for non-cubic crystals the box's Cartesian axes are the crystal axes of the output.  For
hcp use the orthohexagonal cell with a along x, b = √3 a along y and c along z, so that
(C11, C12, C13, C33, C44) have their textbook meaning.
"""
from __future__ import annotations

import functools
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fusepot.core.interfaces import Observable
from fusepot.core.units import pressure_to_gpa

from .born import born_contraction, born_contraction_grad, born_terms
from .voigt import cubic_constants, hexagonal_constants, upper_triangle

#: ideal-gas (kinetic) contribution (δ_ik δ_jl + δ_il δ_jk) in Voigt form, per N kT/V
KINETIC_VOIGT = jnp.diag(jnp.array([2.0, 2.0, 2.0, 1.0, 1.0, 1.0]))

LABELS = {
    "cubic": ("C11", "C12", "C44"),
    "hexagonal": ("C11", "C12", "C13", "C33", "C44"),
    "full": tuple(f"C{i + 1}{j + 1}" for i in range(6) for j in range(i, 6)),
}


def pack_born_terms(born_stress, born_tensor):
    """(6,), (6, 6) → the (7, 6) per-frame array [σ^B; C^B]."""
    return jnp.concatenate([born_stress[..., None, :], born_tensor], axis=-2)


def stress_fluctuation_tensor(weights, born_stress, born_tensor, volume, kT, n_atoms, kinetic: bool = True):
    """The 6×6 isothermal elastic tensor (eV/Å³) from weighted per-frame Born terms.

    weights (F,) summing to 1; born_stress (F, 6); born_tensor (F, 6, 6); volume (Å³), kT (eV).
    """
    w = weights / jnp.sum(weights)
    mean_s = w @ born_stress
    ds = born_stress - mean_s
    cov = jnp.einsum("f,fi,fj->ij", w, ds, ds)
    c = jnp.tensordot(w, born_tensor, axes=1) - (volume / kT) * cov
    if kinetic:
        c = c + (n_atoms * kT / volume) * KINETIC_VOIGT.astype(c.dtype)
    return 0.5 * (c + c.T)


def project(c, symmetry: str, full_format: str = "matrix"):
    """6×6 → the symmetry's independent constants (averaging equivalent entries)."""
    if symmetry == "cubic":
        return cubic_constants(c)
    if symmetry == "hexagonal":
        return hexagonal_constants(c)
    return c if full_format == "matrix" else upper_triangle(c)


@functools.lru_cache(maxsize=None)
def strain_support(symmetry: str, full_format: str = "matrix") -> tuple:
    """The Voigt indices I for which some output of `project` reads an entry in row or column I
    of C.  The DiffTRe cotangents of the Born terms vanish outside them, so the Born
    contraction needs only these strain directions: hexagonal (0, 1, 2, 3, 4) — C66 is implied,
    never read — cubic and full all six.  Found from the projection's Jacobian, not a table."""
    with jax.ensure_compile_time_eval():
        c = jnp.asarray(np.random.default_rng(0).normal(size=(6, 6)))
        jac = np.asarray(jax.jacobian(lambda m: project(0.5 * (m + m.T), symmetry, full_format))(c)).reshape(-1, 6, 6)
    used = np.any(jac != 0, axis=(0, 2)) | np.any(jac != 0, axis=(0, 1))
    return tuple(int(i) for i in np.flatnonzero(used))


class ElasticConstants(Observable):
    """Isothermal elastic constants (GPa) by stress fluctuation; see the module docstring."""

    symmetry: str = eqx.field(static=True, default="cubic")
    full_format: str = eqx.field(static=True, default="matrix")
    kinetic: bool = eqx.field(static=True, default=True)
    born_method: str = eqx.field(static=True, default="affine")
    tangent_batch: int = eqx.field(static=True, default=1)
    unit = "GPa"
    needs_potential = True

    @property
    def strain_support(self):
        return strain_support(self.symmetry, self.full_format)

    @property
    def labels(self):
        return LABELS[self.symmetry] if (self.symmetry != "full" or self.full_format == "upper") else None

    def per_frame(self, potential, frame, nbrs):
        return pack_born_terms(*born_terms(potential, frame.conf, nbrs, self.born_method, self.tangent_batch))

    def contract(self, potential, frame, nbrs, cotangent):
        """⟨cotangent, per_frame⟩ by second directional derivatives (see born.born_contraction)."""
        return born_contraction(potential, frame.conf, nbrs, cotangent[0], cotangent[1:], self.born_method,
                                self.tangent_batch, self.strain_support)

    def contract_grad(self, potential, frame, nbrs, cotangent):
        """∇_θ of `contract`, one strain direction at a time (see born.born_contraction_grad);
        only the directions the symmetry's constants read (`strain_support`)."""
        return born_contraction_grad(potential, frame.conf, nbrs, cotangent[0], cotangent[1:], self.born_method,
                                     self.tangent_batch, self.strain_support)

    def tensor(self, weights, values, frames):
        """The full 6×6 tensor (eV/Å³) before symmetry projection."""
        volume = weights @ jax.vmap(lambda b: jnp.abs(jnp.linalg.det(b)))(frames.conf.box) / jnp.sum(weights)
        kT = weights @ frames.state.kT / jnp.sum(weights)
        n = jnp.sum(frames.conf.mask[0])
        return stress_fluctuation_tensor(weights, values[:, 0, :], values[:, 1:, :], volume, kT, n, self.kinetic)

    def reduce(self, weights, values, frames):
        return project(self.tensor(weights, values, frames), self.symmetry, self.full_format)

    def to_user(self, estimate):
        return pressure_to_gpa(estimate)


class ElasticConstantsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    symmetry: Literal["cubic", "hexagonal", "full"] = Field(
        "cubic", description="cubic → (C11, C12, C44); hexagonal (c along z) → (C11, C12, C13, C33, C44); full")
    full_format: Literal["matrix", "upper"] = Field(
        "matrix", description="for symmetry 'full': 6×6 matrix or the 21 entries C_IJ (I <= J) row by row")
    kinetic: bool = Field(True, description="include the ideal-gas term (N kT/V)(δ_ik δ_jl + δ_il δ_jk)")
    born_method: Literal["affine", "pair_vectors"] = Field(
        "affine", description="affine: deform positions and box (any potential); pair_vectors: deform nbrs.vectors "
                              "(faster; only for potentials that see positions/box through nbrs.vectors alone)")
    tangent_batch: Literal[1, 2, 3, 6] = Field(
        1, description="Voigt strain tangents differentiated together: 1 (one at a time; least memory, fastest for "
                       "DimeNet++ on CPU) to 6 (all at once; a little faster for cheap pair/EAM potentials)")


def build_elastic_constants(p: ElasticConstantsParams, ctx) -> ElasticConstants:
    return ElasticConstants(symmetry=p.symmetry, full_format=p.full_format, kinetic=p.kinetic,
                            born_method=p.born_method, tangent_batch=p.tangent_batch)
