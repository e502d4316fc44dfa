"""Forces, virial and stress derived from any Potential by automatic differentiation.

Sign conventions (documented in docs/observables.md):
- strain derivative D = ∂U/∂ε at ε = 0 for the deformation x -> x (I + ε) applied to all
  positions and the box rows; it is symmetric for rotation-invariant potentials.
- virial W = -D (eV; the DeePMD/VASP convention used by DFT datasets),
- Born (potential) stress σ^B = D / V (eV/Å³, positive = tensile),
- total stress σ = σ^B - (1/V) Σ m v⊗v, pressure P = -tr(σ)/3 (positive under compression).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .interfaces import Potential
from .neighbors import NeighborList
from .system import Configuration


def energy(potential: Potential, conf: Configuration, nbrs: NeighborList):
    return potential.energy(conf, nbrs)


def energy_and_forces(potential: Potential, conf: Configuration, nbrs: NeighborList):
    def e_of_r(r):
        return potential.energy(conf.replace(positions=r), nbrs)

    e, g = jax.value_and_grad(e_of_r)(conf.positions)
    return e, -g


def forces(potential: Potential, conf: Configuration, nbrs: NeighborList):
    return energy_and_forces(potential, conf, nbrs)[1]


def _strained_energy_fn(potential: Potential, conf: Configuration, nbrs: NeighborList):
    def e_of_strain(eps):
        sym = 0.5 * (eps + eps.T)
        return potential.energy(conf.strained(sym), nbrs)

    return e_of_strain


def strain_derivative(potential: Potential, conf: Configuration, nbrs: NeighborList):
    """∂U/∂ε (3×3, eV) at zero strain, symmetrised."""
    zero = jnp.zeros((3, 3), conf.positions.dtype)
    return jax.grad(_strained_energy_fn(potential, conf, nbrs))(zero)


def energy_forces_virial(potential: Potential, conf: Configuration, nbrs: NeighborList):
    """(U, F, W) with W = -∂U/∂ε in one reverse pass over (positions, strain)."""
    zero = jnp.zeros((3, 3), conf.positions.dtype)

    def e(r, eps):
        sym = 0.5 * (eps + eps.T)
        return potential.energy(conf.replace(positions=r).strained(sym), nbrs)

    u, (g_r, g_eps) = jax.value_and_grad(e, argnums=(0, 1))(conf.positions, zero)
    # the derivative w.r.t. eps at fixed *unstrained* r, including r's own deformation: what we want.
    return u, -g_r, -g_eps


def born_stress(potential: Potential, conf: Configuration, nbrs: NeighborList):
    """σ^B = (1/V) ∂U/∂ε (eV/Å³)."""
    return strain_derivative(potential, conf, nbrs) / conf.volume()


def kinetic_stress(velocities, masses, volume, mask=None):
    """(1/V) Σ m v⊗v (eV/Å³); velocities in Å per internal time unit, masses in amu."""
    mv = masses[:, None] * velocities
    if mask is not None:
        mv = jnp.where(mask[:, None], mv, 0.0)
    return jnp.einsum("ni,nj->ij", mv, velocities) / volume


def pressure(potential: Potential, conf: Configuration, nbrs: NeighborList, velocities=None, masses=None,
             kT=None):
    """Instantaneous pressure (eV/Å³). Kinetic part from velocities if given, else N kT / V."""
    v = conf.volume()
    p_virial = -jnp.trace(born_stress(potential, conf, nbrs)) / 3.0
    n = jnp.sum(conf.mask)
    if velocities is not None:
        p_kin = jnp.trace(kinetic_stress(velocities, masses, v, conf.mask)) / 3.0
    elif kT is not None:
        p_kin = n * kT / v
    else:
        p_kin = 0.0
    return p_virial + p_kin
