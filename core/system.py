"""Containers for atomic configurations.

Conventions (used everywhere in fusepot):
- `box` is a (3, 3) array whose *rows* are the lattice vectors in Å (the ASE convention);
  triclinic boxes are allowed.
- `positions` are Cartesian, in Å, shape (N, 3); they need not be wrapped into the box.
- `species` are integer type indices (0 .. n_species-1), shape (N,).
- `mask` marks real atoms (True) versus padding (False) so that one jitted function can serve
  configurations of different sizes.
"""
from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np


class Configuration(eqx.Module):
    positions: jnp.ndarray
    species: jnp.ndarray
    box: jnp.ndarray
    mask: jnp.ndarray

    def __init__(self, positions, species, box, mask=None):
        self.positions = jnp.asarray(positions)
        self.species = jnp.asarray(species, dtype=jnp.int32)
        self.box = jnp.asarray(box, dtype=self.positions.dtype)
        self.mask = jnp.ones(self.positions.shape[0], bool) if mask is None else jnp.asarray(mask, bool)

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[0]

    def volume(self):
        return jnp.abs(jnp.linalg.det(self.box))

    def strained(self, strain):
        """Apply a homogeneous deformation x -> x (I + strain) to positions and box (rows)."""
        deform = jnp.eye(3, dtype=self.positions.dtype) + strain
        return Configuration(self.positions @ deform, self.species, self.box @ deform, self.mask)

    def replace(self, **kw) -> "Configuration":
        d = dict(positions=self.positions, species=self.species, box=self.box, mask=self.mask)
        d.update(kw)
        return Configuration(**d)


def from_ase(atoms, species_map: dict[str, int] | None = None, dtype=None) -> tuple[Configuration, np.ndarray]:
    """Convert an ASE Atoms (periodic in all directions) to a Configuration and its masses (amu).

    `species_map` maps chemical symbols to type indices; by default, symbols sorted alphabetically.
    """
    symbols = atoms.get_chemical_symbols()
    if species_map is None:
        species_map = {s: i for i, s in enumerate(sorted(set(symbols)))}
    missing = sorted(set(symbols) - set(species_map))
    if missing:
        raise ValueError(f"element(s) {missing} are not in the species map {species_map}")
    if not all(atoms.pbc):
        raise ValueError("fusepot needs a periodic cell in all three directions (atoms.pbc is %s)" % (atoms.pbc,))
    dtype = dtype or jnp.asarray(0.0).dtype
    conf = Configuration(
        np.asarray(atoms.get_positions(), dtype=dtype),
        np.array([species_map[s] for s in symbols], dtype=np.int32),
        np.asarray(atoms.cell.array, dtype=dtype),
    )
    return conf, np.asarray(atoms.get_masses(), dtype=dtype)
