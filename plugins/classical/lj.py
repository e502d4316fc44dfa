"""Lennard-Jones pair potential, truncated at r_c and shifted so that U(r_c) = 0."""
from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fusepot.core.interfaces import Potential
from fusepot.core.neighbors import NeighborList
from fusepot.core.system import Configuration


class LennardJones(Potential):
    """U = Σ_{i<j} 4ε[(σ/r)^12 − (σ/r)^6] − U(r_c) for r < r_c; ε (eV), σ (Å) per species pair.

    `log_epsilon` and `log_sigma` are the trainable leaves (positivity by construction).
    """

    log_epsilon: jnp.ndarray  # (S, S)
    log_sigma: jnp.ndarray  # (S, S)
    r_cut: float = eqx.field(static=True)

    @property
    def cutoff(self) -> float:
        return self.r_cut

    @property
    def epsilon(self):
        e = jnp.exp(self.log_epsilon)
        return 0.5 * (e + e.T)

    @property
    def sigma(self):
        s = jnp.exp(self.log_sigma)
        return 0.5 * (s + s.T)

    def energy(self, conf: Configuration, nbrs: NeighborList):
        d = nbrs.vectors(conf.positions, conf.box)
        r2 = jnp.sum(d * d, axis=-1)
        si, sj = conf.species[nbrs.senders], conf.species[nbrs.receivers]
        eps = self.epsilon[si, sj]
        sig2 = self.sigma[si, sj] ** 2
        inside = nbrs.mask & (r2 < self.r_cut**2) & conf.mask[nbrs.senders] & conf.mask[nbrs.receivers]
        r2s = jnp.where(inside, r2, 1.0)
        x6 = (sig2 / r2s) ** 3
        xc6 = (sig2 / self.r_cut**2) ** 3
        pair = 4.0 * eps * (x6 * x6 - x6 - (xc6 * xc6 - xc6))
        return 0.5 * jnp.sum(jnp.where(inside, pair, 0.0))  # each pair is listed twice


class LJParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epsilon: float | list[list[float]] = Field(..., description="well depth ε in eV (scalar or S×S matrix)")
    sigma: float | list[list[float]] = Field(..., description="zero-crossing distance σ in Å (scalar or S×S)")
    cutoff: float = Field(2.5, gt=0, description="cutoff; in Å, or in units of σ when cutoff_in_sigma is true")
    cutoff_in_sigma: bool = Field(True, description="interpret cutoff as a multiple of max σ")


def build_lj(p: LJParams, ctx) -> LennardJones:
    n = max(1, len(ctx.species))
    dtype = ctx.dtype or jnp.asarray(0.0).dtype

    def mat(v, what):
        a = np.full((n, n), v, dtype=np.float64) if np.isscalar(v) else np.asarray(v, dtype=np.float64)
        if a.shape != (n, n):
            raise ValueError(f"lennard_jones.{what}: expected a scalar or a {n}×{n} matrix for species {ctx.species}")
        if np.any(a <= 0):
            raise ValueError(f"lennard_jones.{what}: values must be positive")
        return jnp.asarray(np.log(a), dtype=dtype)

    le, ls = mat(p.epsilon, "epsilon"), mat(p.sigma, "sigma")
    rc = p.cutoff * float(np.exp(np.max(np.asarray(ls)))) if p.cutoff_in_sigma else p.cutoff
    return LennardJones(le, ls, float(rc))
