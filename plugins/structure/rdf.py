"""Radial distribution function g(r) from the periodic neighbor list (no N×N arrays).

For species a (centres) and b (neighbours), with directed pairs i∈a, j∈b, i≠j (all periodic
images, so triclinic and small cells are exact):

    g_ab(r_k) = H_k / (N_a · ρ_b · V_k),   ρ_b = N_b / V,   V_k = 4π/3 (e_{k+1}³ − e_k³)

where H_k counts (sharp mode) or Gaussian-smears (smooth mode, see binning.py) the pair
distances into the shell [e_k, e_{k+1}).  With this ideal-gas normalisation the running
coordination number is n_ab(r) = ρ_b Σ_{k: e_{k+1} <= r} g_ab(r_k) V_k exactly, and g → 1 − δ_ab/N
at large r in a finite periodic system.
"""
from __future__ import annotations

from typing import Optional

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fusepot.core.interfaces import Frame, Observable
from fusepot.core.neighbors import NeighborList

from .binning import TAIL, histogram


class RDF(Observable):
    """g(r) on `n_bins` shells over [r_min, r_max] Å; dimensionless.

    `smoothing` is the Gaussian width in Å (0 = sharp counting, not differentiable).
    `species_pair` = (a, b) type indices, or None for all atoms.  The observable needs a neighbor
    list of cutoff `neighbor_cutoff` (r_max plus the smoothing tail), not the potential's: the
    DiffTRe engine builds one from that attribute.  A list that is too short is a trace-time
    error; a list that overflowed turns the result into NaN (never a silently truncated g(r)).
    """

    r_min: float = eqx.field(static=True, converter=float)
    r_max: float = eqx.field(static=True, converter=float)
    n_bins: int = eqx.field(static=True, converter=int)
    smoothing: float = eqx.field(static=True, converter=float, default=0.0)
    species_pair: Optional[tuple[int, int]] = eqx.field(static=True, default=None)

    unit = "1"
    needs_potential = False

    def __check_init__(self):
        if not (0.0 <= self.r_min < self.r_max):
            raise ValueError(f"rdf: need 0 <= r_min < r_max, got r_min={self.r_min}, r_max={self.r_max}")
        if self.n_bins < 1:
            raise ValueError("rdf: n_bins must be positive")
        if self.smoothing < 0:
            raise ValueError("rdf: smoothing must be >= 0")

    # -- grid ------------------------------------------------------------------------------
    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.r_min, self.r_max, self.n_bins + 1)

    @property
    def r(self) -> np.ndarray:
        """Bin centres (Å)."""
        e = self.edges
        return 0.5 * (e[1:] + e[:-1])

    @property
    def shell_volumes(self) -> np.ndarray:
        """Exact shell volumes 4π/3 (e_{k+1}³ − e_k³) in Å³."""
        e = self.edges
        return 4.0 * np.pi / 3.0 * (e[1:] ** 3 - e[:-1] ** 3)

    @property
    def neighbor_cutoff(self) -> float:
        """Cutoff (Å) of the neighbor list `per_frame` needs: pairs up to here reach the bins."""
        return float(self.r_max + TAIL * self.smoothing)

    # -- evaluation ------------------------------------------------------------------------
    def pair_weights(self, frame: Frame, nbrs: NeighborList):
        """Which directed pairs count (padding, masked atoms and species selection removed)."""
        conf = frame.conf
        ok = nbrs.mask & conf.mask[nbrs.senders] & conf.mask[nbrs.receivers]
        if self.species_pair is not None:
            a, b = self.species_pair
            ok = ok & (conf.species[nbrs.senders] == a) & (conf.species[nbrs.receivers] == b)
        return ok

    def densities(self, frame: Frame):
        """(N_a, ρ_b) of the centre count and neighbour number density (1/Å³)."""
        conf = frame.conf
        if self.species_pair is None:
            n_a = n_b = jnp.sum(conf.mask)
        else:
            a, b = self.species_pair
            n_a = jnp.sum(conf.mask & (conf.species == a))
            n_b = jnp.sum(conf.mask & (conf.species == b))
        return n_a, n_b / conf.volume()

    def pair_histogram(self, frame: Frame, nbrs: NeighborList):
        """Unnormalised pair counts per shell H_k (directed pairs, so each a–a pair counts twice)."""
        if nbrs.cutoff + 1e-9 < self.neighbor_cutoff:
            raise ValueError(f"rdf needs a neighbor list with cutoff >= {self.neighbor_cutoff:.4g} Å "
                             f"(r_max + {TAIL:g}·smoothing) but got one with cutoff {nbrs.cutoff:.4g} Å; "
                             f"allocate it with neighbors.allocate(..., cutoff=rdf.neighbor_cutoff)")
        d = nbrs.vectors(frame.conf.positions, frame.conf.box)
        r2 = jnp.sum(d * d, axis=-1)
        ok = self.pair_weights(frame, nbrs) & (r2 < self.neighbor_cutoff ** 2) & (r2 > 0)
        weight = ok.astype(r2.dtype)
        if self.species_pair is None or self.species_pair[0] == self.species_pair[1]:
            # like pairs: the list holds i→j (shift n) and j→i (shift −n); bin one of them twice
            weight = jnp.where(_first_of_directed_pair(nbrs), 2.0 * weight, 0.0)
        r = jnp.sqrt(jnp.where(ok, r2, 1.0))  # safe sqrt: padded slots have r2 = 0
        h = histogram(r, weight, self.r_min, self.r_max, self.n_bins, self.smoothing)
        # a list that overflowed is missing pairs: poison the result rather than under-count
        return jnp.where(nbrs.overflow, jnp.nan, h)

    def per_frame(self, potential, frame: Frame, nbrs: NeighborList):
        h = self.pair_histogram(frame, nbrs)
        n_a, rho_b = self.densities(frame)
        vols = jnp.asarray(self.shell_volumes, h.dtype)
        return h / (jnp.maximum(n_a, 1) * rho_b * vols)

    def coordination_number(self, g, frame: Frame):
        """Running coordination number n(e_{k+1}) = ρ_b Σ_{m<=k} g_m V_m for a g of this grid."""
        _, rho_b = self.densities(frame)
        return rho_b * jnp.cumsum(jnp.asarray(g) * jnp.asarray(self.shell_volumes))


def _first_of_directed_pair(nbrs: NeighborList):
    """True for exactly one of (i→j, n) and (j→i, −n): i < j, or i == j with n lexicographically > 0."""
    n = nbrs.shifts
    positive = (n[:, 0] > 0) | ((n[:, 0] == 0) & ((n[:, 1] > 0) | ((n[:, 1] == 0) & (n[:, 2] > 0))))
    return (nbrs.senders < nbrs.receivers) | ((nbrs.senders == nbrs.receivers) & positive)


class RDFParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r_min: float = Field(0.0, ge=0, description="inner edge of the first shell in Å")
    r_max: float = Field(8.0, gt=0, description="outer edge of the last shell in Å")
    n_bins: int = Field(200, ge=1, description="number of shells")
    mode: str = Field("smooth", pattern="^(smooth|sharp)$",
                      description="'smooth' (Gaussian-smeared, differentiable; DiffTRe targets) or 'sharp' (counting)")
    smoothing: Optional[float] = Field(None, gt=0, description="Gaussian width in Å for mode 'smooth' "
                                                               "(default: one bin width)")
    species: Optional[tuple[str, str]] = Field(None, description="(centre, neighbour) chemical symbols for a "
                                                                  "partial g_ab(r); default: all atoms")

    @model_validator(mode="after")
    def _check(self):
        if self.r_max <= self.r_min:
            raise ValueError("r_max must exceed r_min")
        if self.mode == "sharp" and self.smoothing is not None:
            raise ValueError("smoothing is only used with mode 'smooth'")
        return self


def species_index(symbol: str, species: list[str], what: str) -> int:
    if symbol not in species:
        raise ValueError(f"{what}: species {symbol!r} is not in the model's species {species}")
    return species.index(symbol)


def build_rdf(p: RDFParams, ctx) -> RDF:
    width = 0.0
    if p.mode == "smooth":
        width = float(p.smoothing) if p.smoothing is not None else (p.r_max - p.r_min) / p.n_bins
    pair = None
    if p.species is not None:
        pair = (species_index(p.species[0], ctx.species, "rdf"), species_index(p.species[1], ctx.species, "rdf"))
    return RDF(float(p.r_min), float(p.r_max), int(p.n_bins), width, pair)
