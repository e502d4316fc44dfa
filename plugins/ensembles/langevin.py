"""NVT Langevin dynamics with the BAOAB splitting (Leimkuhler & Matthews, AMRX 2013)."""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from pydantic import Field

from fusepot.core import md
from fusepot.core.interfaces import Ensemble, StatePoint
from fusepot.core.mechanics import energy_and_forces
from fusepot.core.system import Configuration
from fusepot.core.units import inverse_ps_to_internal, ps_to_internal

from .common import MDRunParams


class MDState(eqx.Module):
    positions: jnp.ndarray
    velocities: jnp.ndarray
    forces: jnp.ndarray
    energy: jnp.ndarray
    box: jnp.ndarray
    species: jnp.ndarray
    masses: jnp.ndarray
    key: jnp.ndarray


def maxwell_boltzmann(key, masses, kT, dtype):
    """Velocities (Å/time-unit) at temperature kT with zero total momentum."""
    v = jax.random.normal(key, (masses.shape[0], 3), dtype) * jnp.sqrt(kT / masses)[:, None]
    p = jnp.sum(masses[:, None] * v, axis=0) / jnp.sum(masses)
    return v - p


def _init(potential, conf: Configuration, masses, sp: StatePoint, nbrs, key):
    k1, k2 = jax.random.split(key)
    e, f = energy_and_forces(potential, conf, nbrs)
    v = maxwell_boltzmann(k1, masses, sp.kT, conf.positions.dtype)
    return MDState(conf.positions, v, f, e, conf.box, conf.species, masses, k2)


class LangevinNVT(Ensemble):
    timestep: float  # internal time units
    friction: float  # 1/internal time
    run: MDRunParams = eqx.field(static=True)

    def step(self, potential, s: MDState, nbrs, sp: StatePoint) -> MDState:
        dt, m = self.timestep, s.masses[:, None]
        key, sub = jax.random.split(s.key)
        v = s.velocities + 0.5 * dt * s.forces / m
        x = s.positions + 0.5 * dt * v
        c1 = jnp.exp(-self.friction * dt)
        c2 = jnp.sqrt(1.0 - c1 * c1)
        v = c1 * v + c2 * jnp.sqrt(sp.kT / m) * jax.random.normal(sub, v.shape, v.dtype)
        x = x + 0.5 * dt * v
        e, f = energy_and_forces(potential, Configuration(x, s.species, s.box), nbrs)
        v = v + 0.5 * dt * f / m
        return MDState(x, v, f, e, s.box, s.species, s.masses, key)

    def initial_carry(self, potential, conf, masses, state, key):
        return md.init_carry(_init, potential, conf, masses, state, key, self.run.neighbor_skin)

    def sample(self, potential, conf, masses, state, key, restart=None, progress=None):
        r = self.run
        return md.run(self.step, _init, potential, conf, masses, state, key, self.timestep,
                      0 if restart is not None else r.n_equilibration_steps, r.n_frames, r.steps_per_frame,
                      restart=restart, progress=progress, skin=r.neighbor_skin, chunk_frames=r.chunk_frames,
                      label="nvt_langevin")


class LangevinParams(MDRunParams):
    friction_per_ps: float = Field(4.0, gt=0, description="Langevin friction coefficient γ in 1/ps")


def build_langevin(p: LangevinParams, ctx) -> LangevinNVT:
    run = MDRunParams(**{k: getattr(p, k) for k in MDRunParams.model_fields})
    return LangevinNVT(float(ps_to_internal(p.timestep_fs / 1000)), float(inverse_ps_to_internal(p.friction_per_ps)), run)
