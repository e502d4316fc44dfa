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

    def resized(self, conf, nbrs):
        return SumPotential(self.model.resized(conf, nbrs), self.prior.resized(conf, nbrs))

    def merged(self, other):
        if not isinstance(other, SumPotential):
            return None
        model, prior = self.model.merged(other.model), self.prior.merged(other.prior)
        return None if model is None or prior is None else SumPotential(model, prior)

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


def state_point(sp: StatePointSpec, dtype=None) -> StatePoint:
    return StatePoint(sp.temperature, units.gpa_to_internal(sp.pressure), dtype=dtype)


@dataclass
class TrainedRun:
    """A finished (or checkpointed) `fusepot run`: its spec and trained potential."""

    run_dir: Path
    spec: ExperimentSpec
    spec_dir: Path  # folder relative paths in the spec refer to
    potential: Potential
    species: list[str]
    dtype: object


def load_run(run_dir, checkpoint: str = "final_potential.npz", spec_dir=None, dtype=None) -> TrainedRun:
    """Rebuild the potential of a run folder from `spec.resolved.yaml` (same plugin, hyperparameters
    and species) and load its trained leaves from `run_dir/<checkpoint>`.

    spec_dir: folder of the original spec (relative paths); default: `run_info.json`'s `spec_dir`
    (written by `fusepot run`), else `run_dir`.  dtype: default the spec's.
    Raises CheckpointError naming the file for a missing/unreadable/mismatched run.
    """
    import yaml

    from .checkpoint import CheckpointError, load_json, load_tree
    from .spec import parse_spec

    run_dir = Path(run_dir)
    spec_path = run_dir / "spec.resolved.yaml"
    ckpt_path = run_dir / checkpoint
    if not spec_path.is_file():
        raise CheckpointError(f"{spec_path} not found: {run_dir} is not a fusepot run directory")
    if not ckpt_path.is_file():
        raise CheckpointError(f"{ckpt_path} not found (a run writes final_potential.npz when it finishes; "
                              f"an unfinished run has checkpoint/potential.npz)")
    try:
        data = yaml.safe_load(spec_path.read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{spec_path}: not valid YAML: {exc}") from None
    try:
        spec = parse_spec(data, source=str(spec_path))
    except SpecError as exc:
        raise CheckpointError(str(exc)) from None
    if spec_dir is None:
        info = run_dir / "run_info.json"
        recorded = load_json(info).get("spec_dir") if info.is_file() else None
        spec_dir = Path(recorded) if recorded and Path(recorded).is_dir() else run_dir
    spec_dir = Path(spec_dir)
    dt = jnp.dtype(spec.dtype if dtype is None else dtype)
    if dt == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError(f"{run_dir}: the run computes in float64, which needs 64-bit jax; call "
                         f"jax.config.update('jax_enable_x64', True) first, or pass dtype='float32'")
    species = spec.system.species or build_system(spec, spec_dir, dt).species
    template = build_potential(spec, species, spec_dir, dt)
    potential = load_tree(ckpt_path, template)
    _check_same_structure(ckpt_path, template, potential)
    return TrainedRun(run_dir, spec, spec_dir, potential, list(species), dt)


def _check_same_structure(path: Path, template, loaded) -> None:
    """load_tree takes array shapes from the file; a potential's parameters must match exactly."""
    from .checkpoint import CheckpointError

    stored = set(np.load(path, allow_pickle=False).files)
    expected = set()
    for (p, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(template)[0],
                              jax.tree_util.tree_flatten_with_path(loaded)[0]):
        if isinstance(a, (jax.Array, np.ndarray, np.generic, int, float, bool)):  # what save_tree stores
            key = jax.tree_util.keystr(p)
            expected.add(key)
            if np.shape(a) != np.shape(b):
                raise CheckpointError(f"checkpoint {path}: {key} has shape {np.shape(b)}, but the potential in the spec "
                                      f"expects {np.shape(a)}; the file was written by a different spec/model")
    extra = sorted(stored - expected)
    if extra:
        raise CheckpointError(f"checkpoint {path} has entries the spec's potential does not ({', '.join(extra[:5])}); "
                              f"it was written by a different spec/model")
