"""ASE calculator for any fusepot Potential: energy, forces and stress for ASE's tools.

ASE's tiny contract (`implemented_properties`, `calculate`, `results`) lets phonopy, the ASE
optimisers and MD drivers use a fusepot model unchanged.  Conventions (ASE):
- energy, free_energy in eV (free_energy = energy: no electronic entropy),
- forces (N, 3) in eV/Å,
- stress in eV/Å³, Voigt order (xx, yy, zz, yz, xz, xy), stress = (1/V) ∂E/∂ε.  fusepot's virial
  is W = −∂U/∂ε (`core.mechanics.energy_forces_virial`), hence stress = −W / V (positive = tensile),
- energies (N,) per-atom energies in eV, only for potentials that define `atomic_energies`.

The neighbor list is kept between calls and refreshed by the jitted `neighbors.update`; its
overflow flag is always checked (overflow → reallocate and recompute, never dropped pairs), and a
box change that needs periodic images the list was not built with also reallocates.  Potential
buffer overflows (`Potential.overflow`) grow the potential (`Potential.grow`) and recompute.
One jitted function serves all calls; it compiles once per (atom count, neighbor capacity).
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from . import neighbors as nb
from .interfaces import Potential
from .mechanics import energy_forces_virial
from .neighbors import NeighborList
from .system import Configuration

log = logging.getLogger(__name__)

_MAX_RETRIES = 8  # reallocations/growths per calculation before giving up


def _resolve_dtype(dtype):
    """The float dtype requested, refusing float64 when jax would silently compute in float32."""
    default = jnp.asarray(0.0).dtype
    dt = jnp.dtype(default if dtype is None else dtype)
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"FusepotCalculator: dtype must be a float type, got {dt}")
    if dt == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("FusepotCalculator: dtype float64 needs 64-bit jax; call "
                         "jax.config.update('jax_enable_x64', True) first, or pass dtype='float32'")
    return dt


def _cast_floats(tree, dtype):
    return jax.tree_util.tree_map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree)


@eqx.filter_jit
def _evaluate(potential: Potential, positions, species, box, nbrs: NeighborList):
    """Neighbor update + (U, F, W) + overflow flags in one compiled call."""
    nbrs = nb.update(nbrs, positions, box)
    conf = Configuration(positions, species, box)
    u, f, w = energy_forces_virial(potential, conf, nbrs)
    return u, f, w, nbrs, potential.overflow(conf, nbrs)


@eqx.filter_jit
def _atomic_energies(potential: Potential, positions, species, box, nbrs: NeighborList):
    return potential.atomic_energies(Configuration(positions, species, box), nbrs)


def _images_cover(nbrs: NeighborList, box: np.ndarray) -> bool:
    """Does the list's fixed periodic-image set still cover cutoff + skin in `box`?"""
    r = nbrs.cutoff + nbrs.skin
    if nbrs.minimum_image:
        return nb.minimum_image_ok(box, r)
    have = np.max(np.abs(np.asarray(nbrs.images)), axis=0)
    need = np.max(np.abs(nb.image_offsets(box, r)), axis=0)
    return bool(np.all(need <= have))


class FusepotCalculator(Calculator):
    """ASE calculator wrapping a fusepot `Potential`.

    potential: any Potential (LJ, EAM, DimeNet++ ...; a trained one from `from_run`).
    species: chemical symbols in the potential's type order (type index = position in the list),
        e.g. the `species` of `core.build.build_system`; atoms of other elements are refused.
    skin: neighbor-list skin in Å (larger = fewer rebuilds, more pairs per evaluation).
    dtype: float type of the computation (default: jax's default float); the potential's float
        leaves are cast to it.  float64 requires `jax_enable_x64`.
    capacity_factor: neighbor-list head room at (re)allocation.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, potential: Potential, species: Sequence[str], skin: float = 0.5, dtype=None,
                 capacity_factor: float = 1.3):
        super().__init__()
        if not isinstance(potential, Potential):
            raise TypeError(f"FusepotCalculator: expected a fusepot Potential, got {type(potential).__name__}")
        species = list(species)
        if not species or len(set(species)) != len(species):
            raise ValueError(f"FusepotCalculator: species must be a non-empty list of distinct symbols, got {species}")
        if skin < 0:
            raise ValueError(f"FusepotCalculator: skin must be >= 0 Å, got {skin}")
        self.dtype = _resolve_dtype(dtype)
        self.potential = _cast_floats(potential, self.dtype)
        self.species = species
        self.species_map = {s: i for i, s in enumerate(species)}
        self.skin = float(skin)
        self.capacity_factor = float(capacity_factor)
        self.nbrs: Optional[NeighborList] = None
        #: counters for tests and diagnostics
        self.n_allocations = 0
        self.n_potential_growths = 0
        if callable(getattr(self.potential, "atomic_energies", None)):
            self.implemented_properties = [*type(self).implemented_properties, "energies"]

    # -- construction from a finished run ---------------------------------------------------
    @classmethod
    def from_run(cls, run_dir, *, checkpoint: str = "final_potential.npz", spec_dir=None, skin: float = 0.5,
                 dtype=None) -> "FusepotCalculator":
        """Calculator for the potential a `fusepot run` wrote into `run_dir`.

        Rebuilds the potential from `run_dir/spec.resolved.yaml` (same plugin, hyperparameters
        and species) and loads its trained leaves from `run_dir/<checkpoint>`.  `spec_dir` is the
        folder relative paths in the spec (system.file, EAM tables) refer to: the folder of the
        original spec file (default: the one `fusepot run` recorded in run_info.json, else
        `run_dir`).  `dtype` defaults to the spec's dtype.
        """
        from .build import load_run

        if dtype is not None:
            dtype = _resolve_dtype(dtype)
        run = load_run(run_dir, checkpoint=checkpoint, spec_dir=spec_dir, dtype=dtype)
        dt = _resolve_dtype(run.dtype)
        return cls(run.potential, run.species, skin=skin, dtype=dt)

    # -- ASE contract -----------------------------------------------------------------------
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if not all(atoms.pbc):
            raise ValueError(f"FusepotCalculator needs a cell periodic in all three directions (atoms.pbc = {atoms.pbc})")
        symbols = atoms.get_chemical_symbols()
        unknown = sorted(set(symbols) - set(self.species_map))
        if unknown:
            raise ValueError(f"FusepotCalculator: element(s) {unknown} are not among the potential's species {self.species}")
        box_np = np.asarray(atoms.cell.array, dtype=np.float64)
        if abs(np.linalg.det(box_np)) <= 0:
            raise ValueError("FusepotCalculator: the cell has zero volume")
        positions = jnp.asarray(atoms.get_positions(), self.dtype)
        species = jnp.asarray([self.species_map[s] for s in symbols], jnp.int32)
        box = jnp.asarray(box_np, self.dtype)

        if (self.nbrs is None or self.nbrs.reference_positions.shape != positions.shape
                or not _images_cover(self.nbrs, box_np)):
            self._allocate(positions, box)
        for _ in range(_MAX_RETRIES):
            u, f, w, nbrs, pot_overflow = _evaluate(self.potential, positions, species, box, self.nbrs)
            if bool(nbrs.overflow):
                log.info("neighbor list overflow (%d pairs > capacity %d); reallocating", int(nbrs.count), nbrs.capacity)
                self._allocate(positions, box)
                continue
            if bool(pot_overflow):
                log.info("%s buffer overflow; growing", type(self.potential).__name__)
                self.potential = self.potential.grow(Configuration(positions, species, box), nbrs)
                self.n_potential_growths += 1
                continue
            break
        else:
            raise OverflowError(f"FusepotCalculator: overflow persisted after {_MAX_RETRIES} reallocations")
        self.nbrs = nbrs

        energy = float(u)
        if not np.isfinite(energy):
            raise FloatingPointError(f"FusepotCalculator: energy is {energy}")
        volume = abs(float(np.linalg.det(box_np)))
        s = -np.asarray(w, dtype=np.float64) / volume
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": np.asarray(f, dtype=np.float64),
            "stress": np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]),
        }
        if "energies" in properties and "energies" in self.implemented_properties:
            self.results["energies"] = np.asarray(
                _atomic_energies(self.potential, positions, species, box, nbrs), dtype=np.float64)

    def _allocate(self, positions, box) -> None:
        self.nbrs = nb.allocate(positions, box, self.potential.cutoff, self.skin, self.capacity_factor)
        self.n_allocations += 1
