"""Turn a validated spec into objects: configuration, potential, ensembles, targets."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import units
from .difftre import Target
from .interfaces import Ensemble, Potential, StatePoint
from .neighbors import NeighborList
from .plugins import BuildContext, PluginManager, get_plugin_manager
from .spec import ExperimentSpec, SpecError, StatePointSpec, SystemSpec
from .system import Configuration, from_ase


class SumPotential(Potential):
    """U = U_model + U_prior; the prior is held fixed (no gradient flows into it)."""

    model: Potential
    prior: Potential

    @property
    def cutoff(self) -> float:
        return max(self.model.cutoff, self.prior.cutoff)

    def energy(self, conf, nbrs: NeighborList):
        prior = jax.lax.stop_gradient(self.prior)
        return self.model.energy(conf, nbrs) + prior.energy(conf, nbrs)

    def overflow(self, conf, nbrs):
        return self.model.overflow(conf, nbrs) | self.prior.overflow(conf, nbrs)

    def grow(self, conf, nbrs):
        out = self
        if bool(self.model.overflow(conf, nbrs)):
            out = SumPotential(self.model.grow(conf, nbrs), out.prior)
        if bool(self.prior.overflow(conf, nbrs)):
            out = SumPotential(out.model, self.prior.grow(conf, nbrs))
        return out


def _atoms(system: SystemSpec, spec_dir: Path, lattice_override: dict | None = None):
    import ase.build
    import ase.io

    if system.crystal is not None:
        c = system.crystal
        kw = dict(a=c.a, cubic=c.cubic, orthorhombic=c.orthorhombic)
        if c.c is not None:
            kw["c"] = c.c
        if lattice_override:
            kw.update(lattice_override)
        try:
            atoms = ase.build.bulk(c.element, c.structure, **kw)
        except Exception as exc:  # noqa: BLE001
            raise SpecError(f"system.crystal: ase.build.bulk failed: {exc}") from None
    else:
        path = (spec_dir / system.file) if not Path(system.file).is_absolute() else Path(system.file)
        try:
            atoms = ase.io.read(path)
        except Exception as exc:  # noqa: BLE001
            raise SpecError(f"system.file: cannot read {path}: {exc}") from None
        if lattice_override:
            raise SpecError("state_points.*.box.lattice needs system.crystal (use box.matrix with system.file)")
    return atoms.repeat(system.supercell)


@dataclass
class SystemSetup:
    conf: Configuration
    masses: np.ndarray
    species: list[str]


def build_system(spec: ExperimentSpec, spec_dir: Path, dtype) -> SystemSetup:
    atoms = _atoms(spec.system, spec_dir)
    species = spec.system.species or sorted(set(atoms.get_chemical_symbols()))
    conf, masses = from_ase(atoms, {s: i for i, s in enumerate(species)}, dtype=dtype)
    if spec.system.rattle > 0:
        rng = np.random.default_rng(spec.seed)
        conf = conf.replace(positions=conf.positions + jnp.asarray(rng.normal(0, spec.system.rattle, conf.positions.shape), dtype))
    return SystemSetup(conf, masses, species)


def state_configuration(spec: ExperimentSpec, sp: StatePointSpec, base: SystemSetup, spec_dir: Path, dtype) -> Configuration:
    """The system placed in the state point's box (affine scaling of positions)."""
    if sp.box is None:
        return base.conf
    if sp.box.lattice is not None:
        box = jnp.asarray(_atoms(spec.system, spec_dir, dict(sp.box.lattice)).cell.array, dtype)
    else:
        box = jnp.asarray(sp.box.matrix, dtype)
    if float(jnp.linalg.det(box)) <= 0:
        raise SpecError(f"state point {sp.name!r}: box has non-positive volume")
    frac = base.conf.positions @ jnp.linalg.inv(base.conf.box)
    return base.conf.replace(positions=frac @ box, box=box)


def build_potential(spec: ExperimentSpec, species: list[str], spec_dir: Path, dtype, pm: PluginManager | None = None) -> Potential:
    pm = pm or get_plugin_manager()
    ctx = BuildContext(species=species, spec_dir=str(spec_dir), dtype=dtype, extra={"seed": spec.seed})
    try:
        model = pm.build("potential", spec.potential.name, spec.potential.params, ctx)
        if spec.prior is None:
            return model
        return SumPotential(model, pm.build("potential", spec.prior.name, spec.prior.params, ctx))
    except (ValueError, OSError) as exc:
        raise SpecError(f"potential: {exc}") from None


def build_ensemble(sp: StatePointSpec, i: int, spec_dir: Path, dtype, pm=None) -> Ensemble:
    pm = pm or get_plugin_manager()
    try:
        return pm.build("ensemble", sp.ensemble.name, sp.ensemble.params, BuildContext(spec_dir=str(spec_dir), dtype=dtype))
    except ValueError as exc:
        raise SpecError(f"state_points.{i}.ensemble: {exc}") from None


def build_targets(sp: StatePointSpec, i: int, species, spec_dir: Path, dtype, pm=None) -> list[Target]:
    pm = pm or get_plugin_manager()
    out, seen = [], set()
    for j, t in enumerate(sp.targets):
        name = t.name or t.observable.name
        if name in seen:
            raise SpecError(f"state_points.{i}.targets.{j}.name: duplicate target name {name!r} (set 'name')")
        seen.add(name)
        try:
            obs = pm.build("observable", t.observable.name, t.observable.params,
                           BuildContext(species=species, spec_dir=str(spec_dir), dtype=dtype))
            out.append(Target(name, obs, np.asarray(t.value, dtype=np.float64), t.unit, t.weight, t.uncertainty))
        except ValueError as exc:
            raise SpecError(f"state_points.{i}.targets.{j}: {exc}") from None
    return out


def state_point(sp: StatePointSpec) -> StatePoint:
    return StatePoint(sp.temperature, units.gpa_to_internal(sp.pressure))
