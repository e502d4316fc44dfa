"""Lattice constants from the (NPT) cell of each frame, and the static E–V curve helper.

The box rows are the supercell vectors; `repeats` says how many conventional cells lie along
each of them, and `lattice` how a conventional cell relates to its lattice parameters:

- cubic:        a = mean_k |h_k| / n_k                               → (a,)
- orthorhombic: (|h_1|/n_1, |h_2|/n_2, |h_3|/n_3)                      → (a, b, c)
- hexagonal:    orthohexagonal cell (a, √3 a, c) with a ∥ x, c ∥ z (or `hexagonal_cell:
                primitive`, cell (a, a, c) at 120°); a = mean of the two in-plane estimates
                                                                      → (a, c, c/a)
- general:      (|h_1|/n_1, |h_2|/n_2, |h_3|/n_3, α, β, γ) with angles in degrees.

Lengths are Å (c/a dimensionless, angles degrees).  The per-frame values depend on the box only,
so the estimate is a weighted mean and is reweightable (DiffTRe weights still carry gradients).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fusepot.core import neighbors as nb
from fusepot.core.interfaces import Observable
from fusepot.core.system import Configuration

LABELS = {"cubic": ("a",), "orthorhombic": ("a", "b", "c"), "hexagonal": ("a", "c", "c/a"),
          "general": ("a", "b", "c", "alpha", "beta", "gamma")}


def cell_lengths_angles(box):
    """(|h1|, |h2|, |h3|) in Å and (α, β, γ) in degrees of a box with lattice vectors as rows."""
    box = jnp.asarray(box)
    lengths = jnp.linalg.norm(box, axis=-1)

    def angle(i, j):
        cos = jnp.dot(box[i], box[j]) / (lengths[i] * lengths[j])
        return jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))

    return lengths, jnp.stack([angle(1, 2), angle(0, 2), angle(0, 1)])


class LatticeConstants(Observable):
    lattice: str = eqx.field(static=True, default="cubic")
    repeats: tuple = eqx.field(static=True, default=(1, 1, 1))
    hexagonal_cell: str = eqx.field(static=True, default="orthohexagonal")
    unit = "A"

    @property
    def labels(self):
        return LABELS[self.lattice]

    def per_frame(self, potential, frame, nbrs):
        lengths, angles = cell_lengths_angles(frame.conf.box)
        per_cell = lengths / jnp.asarray(self.repeats, lengths.dtype)
        if self.lattice == "cubic":
            return jnp.mean(per_cell)[None]
        if self.lattice == "orthorhombic":
            return per_cell
        if self.lattice == "hexagonal":
            b_over_a = math.sqrt(3.0) if self.hexagonal_cell == "orthohexagonal" else 1.0
            a = 0.5 * (per_cell[0] + per_cell[1] / b_over_a)
            return jnp.stack([a, per_cell[2], per_cell[2] / a])
        return jnp.concatenate([per_cell, angles])


class LatticeConstantsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lattice: Literal["cubic", "orthorhombic", "hexagonal", "general"] = Field(
        "cubic", description="how the conventional cell maps to lattice parameters (see docs/observables_solid.md)")
    repeats: tuple[int, int, int] = Field((1, 1, 1), description="conventional cells along box vectors 1, 2, 3")
    hexagonal_cell: Literal["orthohexagonal", "primitive"] = Field(
        "orthohexagonal", description="hexagonal only: cell (a, √3a, c) along x, y, z, or primitive (a, a, c)")


def build_lattice_constants(p: LatticeConstantsParams, ctx) -> LatticeConstants:
    if any(n < 1 for n in p.repeats):
        raise ValueError(f"lattice_constants.repeats must be positive, got {p.repeats}")
    return LatticeConstants(lattice=p.lattice, repeats=tuple(p.repeats), hexagonal_cell=p.hexagonal_cell)


# --- static energy–volume curve -------------------------------------------------------------
@dataclass(frozen=True)
class EnergyVolumeCurve:
    scales: np.ndarray  # linear scale factors applied to positions and box
    volumes: np.ndarray  # Å³ per cell
    energies: np.ndarray  # eV per cell
    n_atoms: int

    @property
    def volumes_per_atom(self):
        return self.volumes / self.n_atoms

    @property
    def energies_per_atom(self):
        return self.energies / self.n_atoms


def energy_volume_curve(potential, conf: Configuration, scales, skin: float = 0.5) -> EnergyVolumeCurve:
    """E(V) of `conf` under isotropic scaling x → s x of positions and box (fixed fractional
    coordinates, no relaxation); V ∝ s³.  Host-side; one neighbor list per scale."""
    scales = np.asarray(scales, dtype=np.float64)
    vols, ens = [], []
    for s in scales:
        c = conf.replace(positions=conf.positions * s, box=conf.box * s)
        nbrs = nb.allocate(c.positions, c.box, potential.cutoff, skin)
        vols.append(float(c.volume()))
        ens.append(float(potential.energy(c, nbrs)))
    return EnergyVolumeCurve(scales, np.asarray(vols), np.asarray(ens), int(np.sum(np.asarray(conf.mask))))


def fit_birch_murnaghan(volumes, energies) -> dict:
    """Third-order Birch–Murnaghan fit as a dict: E0 (eV), V0 (Å³), B0 (GPa) and B0' in the
    curve's units (per cell or per atom).  The fit itself is
    `fusepot.plugins.evaluation.ev_curve.birch_murnaghan_fit` (needs ≥ 5 points around the minimum)."""
    from fusepot.plugins.evaluation.ev_curve import birch_murnaghan_fit

    fit = birch_murnaghan_fit(volumes, energies)
    return {"E0": fit.e0, "V0": fit.v0, "B0_GPa": fit.b0_gpa, "B0_prime": fit.b0_prime}


__all__ = ["LatticeConstants", "LatticeConstantsParams", "build_lattice_constants", "cell_lengths_angles",
           "EnergyVolumeCurve", "energy_volume_curve", "fit_birch_murnaghan"]
