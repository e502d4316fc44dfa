"""Bond-angle distribution P(θ) from neighbor-list triplets with a fixed, checked capacity.

Triplets (j, i, k): centre i with two distinct neighbours j, k both within `cutoff`; every
unordered neighbour pair {j, k} of every centre counts once.  θ_jik = arccos(r̂_ij · r̂_ik).

    P(θ_m) = H_m / (T · Δθ)     (1/degree; ∫ P dθ = 1 over [0°, 180°])

with T the number of triplets in the frame and H_m the sharp or Gaussian-smoothed count (mirrored
at 0° and 180° so no probability leaks out).  Triplets are enumerated from the pair list into a
buffer of `triplet_capacity` slots (never an N×N×N array): the count is always computed, and a
frame with more triplets than slots sets `overflow` and yields NaN.  `grow` (host-side) returns
a copy with a larger buffer, like `Potential.grow`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fusepot.core.interfaces import Frame, Observable
from fusepot.core.neighbors import NeighborList

from .binning import histogram
from .rdf import species_index


class Triplets(eqx.Module):
    """Pair-list indices of the two legs of each triplet; `count` may exceed the capacity."""

    first: jnp.ndarray  # (capacity,) index into the pair list (leg i→j)
    second: jnp.ndarray  # (capacity,) index into the pair list (leg i→k)
    mask: jnp.ndarray  # (capacity,) bool
    count: jnp.ndarray  # () int: triplets that exist
    overflow: jnp.ndarray  # () bool: count > capacity


def build_triplets(senders, legs, n_atoms: int, capacity: int) -> Triplets:
    """All unordered leg pairs sharing a centre, from directed pairs `senders` where `legs` is True.

    Jit-compatible with static `capacity`: legs are grouped by centre with a stable sort, the
    n_i(n_i−1)/2 leg pairs of centre i occupy a contiguous range of slots, and slot l of a centre
    decodes to legs (a, b), a < b, by the triangular-number inverse.
    """
    legs = jnp.asarray(legs, bool)
    per_atom = jax.ops.segment_sum(legs.astype(jnp.int32), senders, num_segments=n_atoms)
    per_atom_trip = per_atom * (per_atom - 1) // 2
    count = jnp.sum(per_atom_trip)
    order = jnp.argsort(jnp.where(legs, senders, n_atoms), stable=True)  # legs of atom 0, then 1, ...
    leg_start = jnp.cumsum(per_atom) - per_atom
    trip_end = jnp.cumsum(per_atom_trip)
    trip_start = trip_end - per_atom_trip
    slot = jnp.arange(capacity, dtype=trip_end.dtype)
    atom = jnp.clip(jnp.searchsorted(trip_end, slot, side="right"), 0, n_atoms - 1)
    l = slot - trip_start[atom]
    # b = largest integer with b(b−1)/2 <= l; float guess then exact integer correction
    b = jnp.floor((1.0 + jnp.sqrt(1.0 + 8.0 * l)) / 2.0).astype(l.dtype)
    b = jnp.where(b * (b - 1) // 2 > l, b - 1, b)
    b = jnp.where((b + 1) * b // 2 <= l, b + 1, b)
    a = l - b * (b - 1) // 2
    valid = slot < count
    n_pairs = senders.shape[0]
    first = jnp.where(valid, order[jnp.clip(leg_start[atom] + a, 0, n_pairs - 1)], 0)
    second = jnp.where(valid, order[jnp.clip(leg_start[atom] + b, 0, n_pairs - 1)], 0)
    return Triplets(first, second, valid, count, count > capacity)


class ADF(Observable):
    """Bond-angle distribution on `n_bins` bins over [0°, 180°]; unit 1/degree.

    `cutoff` (Å) applies to both legs; `smoothing` is the Gaussian width in degrees (0 = sharp);
    `center` restricts centres to one species index.  `triplet_capacity` is the buffer size;
    0 means "not sized yet": the first evaluation overflows and the caller grows it (or call
    `sized_for(frame, nbrs)` up front).
    """

    cutoff: float = eqx.field(static=True, converter=float, default=4.0)
    n_bins: int = eqx.field(static=True, converter=int, default=180)
    smoothing: float = eqx.field(static=True, converter=float, default=0.0)
    center: Optional[int] = eqx.field(static=True, default=None)
    triplet_capacity: int = eqx.field(static=True, converter=int, default=0)

    unit = "1/deg"
    needs_potential = False

    def __check_init__(self):
        if self.cutoff <= 0 or self.n_bins < 1 or self.smoothing < 0 or self.triplet_capacity < 0:
            raise ValueError("adf: need cutoff > 0, n_bins >= 1, smoothing >= 0, triplet_capacity >= 0")

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, 180.0, self.n_bins + 1)

    @property
    def theta(self) -> np.ndarray:
        """Bin centres in degrees."""
        e = self.edges
        return 0.5 * (e[1:] + e[:-1])

    @property
    def neighbor_cutoff(self) -> float:
        return float(self.cutoff)

    # -- triplets ----------------------------------------------------------------------------
    def _legs(self, frame: Frame, nbrs: NeighborList):
        if nbrs.cutoff + 1e-9 < self.cutoff:
            raise ValueError(f"adf needs a neighbor list with cutoff >= {self.cutoff:.4g} Å, got {nbrs.cutoff:.4g} Å")
        conf = frame.conf
        d = nbrs.vectors(conf.positions, conf.box)
        r2 = jnp.sum(d * d, axis=-1)
        legs = nbrs.mask & conf.mask[nbrs.senders] & conf.mask[nbrs.receivers] & (r2 < self.cutoff ** 2) & (r2 > 0)
        if self.center is not None:
            legs = legs & (conf.species[nbrs.senders] == self.center)
        return d, r2, legs

    def triplets(self, frame: Frame, nbrs: NeighborList) -> Triplets:
        _, _, legs = self._legs(frame, nbrs)
        return build_triplets(nbrs.senders, legs, frame.conf.positions.shape[0], self.triplet_capacity)

    def triplet_count(self, frame: Frame, nbrs: NeighborList):
        return self.triplets(frame, nbrs).count

    def overflow(self, frame: Frame, nbrs: NeighborList):
        """Jit-compatible: the triplet buffer (or the neighbor list) is too small for this frame."""
        return self.triplets(frame, nbrs).overflow | nbrs.overflow

    def sized_for(self, frame: Frame, nbrs: NeighborList, factor: float = 1.3) -> "ADF":
        """Host-side: a copy whose buffer holds this frame's triplets with a `factor` margin."""
        n = int(_triplet_count(self, frame, nbrs))
        cap = max(16, int(math.ceil(n * factor)))
        return dataclasses.replace(self, triplet_capacity=cap) if cap != self.triplet_capacity else self

    def grow(self, frame: Frame, nbrs: NeighborList, factor: float = 1.3) -> "ADF":
        """Host-side: a copy with room for this frame's triplets, and never smaller than now."""
        grown = self.sized_for(frame, nbrs, factor)
        return grown if grown.triplet_capacity > self.triplet_capacity else self

    # -- evaluation --------------------------------------------------------------------------
    def angles(self, frame: Frame, nbrs: NeighborList):
        """(θ in degrees, mask, Triplets) for all triplet slots."""
        d, r2, legs = self._legs(frame, nbrs)
        t = build_triplets(nbrs.senders, legs, frame.conf.positions.shape[0], self.triplet_capacity)
        dp, dq = d[t.first], d[t.second]
        norm = jnp.sqrt(jnp.where(t.mask, r2[t.first] * r2[t.second], 1.0))
        cos = jnp.sum(dp * dq, axis=-1) / norm
        # keep arccos' derivative finite at exactly 0° / 180° (collinear triplets in crystals)
        eps = 10.0 * jnp.finfo(cos.dtype).eps
        theta = jnp.degrees(jnp.arccos(jnp.clip(jnp.where(t.mask, cos, 0.0), -1.0 + eps, 1.0 - eps)))
        return theta, t.mask, t

    def per_frame(self, potential, frame: Frame, nbrs: NeighborList):
        if self.triplet_capacity == 0:
            # unsized: report overflow through NaN; the caller sizes with sized_for/grow
            return jnp.full((self.n_bins,), jnp.nan, frame.conf.positions.dtype)
        theta, mask, t = self.angles(frame, nbrs)
        h = histogram(theta, mask, 0.0, 180.0, self.n_bins, self.smoothing, reflect=True)
        dtheta = 180.0 / self.n_bins
        p = h / (jnp.maximum(t.count, 1) * dtheta)
        return jnp.where(t.overflow | nbrs.overflow, jnp.nan, p)


class ADFParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cutoff: float = Field(4.0, gt=0, description="both neighbours within this distance, Å")
    n_bins: int = Field(90, ge=1, description="bins over [0°, 180°]")
    mode: str = Field("smooth", pattern="^(smooth|sharp)$", description="'smooth' (differentiable) or 'sharp'")
    smoothing_deg: Optional[float] = Field(None, gt=0, description="Gaussian width in degrees (default: one bin)")
    center: Optional[str] = Field(None, description="chemical symbol of the central atom; default: all")
    triplet_capacity: int = Field(0, ge=0, description="triplet buffer size; 0 = size from the first frame")

    @model_validator(mode="after")
    def _check(self):
        if self.mode == "sharp" and self.smoothing_deg is not None:
            raise ValueError("smoothing_deg is only used with mode 'smooth'")
        return self


def build_adf(p: ADFParams, ctx) -> ADF:
    width = 0.0
    if p.mode == "smooth":
        width = float(p.smoothing_deg) if p.smoothing_deg is not None else 180.0 / p.n_bins
    center = species_index(p.center, ctx.species, "adf") if p.center is not None else None
    return ADF(float(p.cutoff), int(p.n_bins), width, center, int(p.triplet_capacity))


@eqx.filter_jit
def _triplet_count(obs: ADF, frame: Frame, nbrs: NeighborList):
    return obs.triplet_count(frame, nbrs)
