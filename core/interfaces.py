"""The interfaces plugins implement: Potential, Ensemble, Observable (and EvaluationTask).

They are equinox modules (frozen dataclasses that are pytrees): trainable numbers are array
leaves, settings are static fields.  core/ derives forces, virial and Born terms from
`Potential.energy` by automatic differentiation, so a potential implements only its energy.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Optional

import equinox as eqx
import jax
import jax.numpy as jnp

from .neighbors import NeighborList
from .system import Configuration


class Potential(eqx.Module):
    """Potential energy U(configuration) in eV.

    Subclasses set `cutoff` (Å) and implement `energy`.  Potentials with internal fixed-size
    buffers (e.g. graph triplets) override `overflow` (jit-compatible flag) and `grow`
    (host-side: a copy with larger buffers); the ensemble/trainer checks and grows, never drops.
    """

    @property
    @abc.abstractmethod
    def cutoff(self) -> float:
        ...

    @abc.abstractmethod
    def energy(self, conf: Configuration, nbrs: NeighborList) -> jnp.ndarray:
        """Total potential energy (eV), a scalar."""

    def overflow(self, conf: Configuration, nbrs: NeighborList) -> jnp.ndarray:
        return jnp.asarray(False)

    def grow(self, conf: Configuration, nbrs: NeighborList) -> "Potential":
        raise OverflowError(f"{type(self).__name__} reported an internal buffer overflow but does not implement grow()")

    def resized(self, conf: Configuration, nbrs: NeighborList) -> "Potential":
        """Host-side: a copy (same parameters) whose internal buffers are sized for `conf`.

        Trainers call it when one model serves workloads of different sizes (DFT batches of
        large cells, MD of a small one): padded buffers cost as much as used ones.  Default:
        no buffers, returns self.  Overflow during MD still grows the copy (`grow`)."""
        return self

    def merged(self, other: "Potential") -> Optional["Potential"]:
        """Host-side: a copy (parameters of self) whose buffers hold the workloads of both self
        and `other`, two versions of this model that may differ in buffer sizes (`resized`,
        `grow`); None when no such copy can be formed.

        The EXP trainer gives every state point of the same system size one merged structure,
        so that MD and reweighting compile once for all of them instead of once per state
        point.  Potentials with buffers override it (e.g. the larger of each capacity).
        Default: self when the two have the same static structure, else None."""
        same = jax.tree_util.tree_structure(self) == jax.tree_util.tree_structure(other)
        return self if same else None


class StatePoint(eqx.Module):
    """Thermodynamic state handed to ensembles and observables (internal units)."""

    temperature: jnp.ndarray  # K
    pressure: jnp.ndarray  # eV/Å³ (used by NPT ensembles)

    def __init__(self, temperature, pressure=0.0, dtype=None):
        """dtype: float type of the simulation (default: jax's default float); a float32 run
        must not get float64 thermostat constants when 64-bit jax is on."""
        dtype = jnp.asarray(0.0).dtype if dtype is None else dtype
        self.temperature = jnp.asarray(temperature, dtype=dtype)
        self.pressure = jnp.asarray(pressure, dtype=dtype)

    @property
    def kT(self):
        from .units import BOLTZMANN_EV_PER_K

        return BOLTZMANN_EV_PER_K * self.temperature


class Trajectory(eqx.Module):
    """Frames sampled by an ensemble; a pytree that `core.io` saves and loads.

    positions (F, N, 3) Å, boxes (F, 3, 3), velocities (F, N, 3) Å/time-unit (zeros where an
    ensemble has none), ref_energy (F,) eV = U_ref(S_i) of the potential that generated the
    frames, times (F,) ps.
    """

    positions: jnp.ndarray
    boxes: jnp.ndarray
    velocities: jnp.ndarray
    ref_energy: jnp.ndarray
    times: jnp.ndarray
    species: jnp.ndarray
    masses: jnp.ndarray
    state: StatePoint

    @property
    def n_frames(self) -> int:
        return self.positions.shape[0]

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[1]

    def frame(self, k) -> "Frame":
        return Frame(Configuration(self.positions[k], self.species, self.boxes[k]), self.velocities[k], self.masses,
                     self.state)

    def frames(self) -> "Frame":
        """All frames as one batched Frame (leading axis = frame) for jax.lax.map / vmap."""
        f = self.n_frames
        conf = Configuration(self.positions, jnp.broadcast_to(self.species, self.positions.shape[:2]), self.boxes,
                             jnp.ones(self.positions.shape[:2], bool))
        return Frame(conf, self.velocities, jnp.broadcast_to(self.masses, (f,) + self.masses.shape),
                     jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (f,)), self.state))


class Frame(eqx.Module):
    """One sampled microstate with what observables may need."""

    conf: Configuration
    velocities: jnp.ndarray
    masses: jnp.ndarray
    state: StatePoint


class Ensemble(eqx.Module):
    """Samples a state point with a potential.

    `sample` runs on the host (it allocates neighbor lists, handles overflow by reallocating
    and redoing the segment, shows progress) and jits its inner loops.  It returns the
    Trajectory and an opaque `carry` that a later call accepts as `restart` to continue from
    the final state (the EXP trainer uses this between updates).
    """

    @abc.abstractmethod
    def sample(self, potential: Potential, conf: Configuration, masses, state: StatePoint, key,
               restart: Any = None, progress: Optional[Callable[[float, str], None]] = None) -> tuple[Trajectory, Any]:
        ...

    def initial_carry(self, potential: Potential, conf: Configuration, masses, state: StatePoint, key) -> Any:
        """The carry `sample` would start from (used as a template to load checkpoints).

        Ensembles that cannot provide one return None; a resumed run then restarts their
        sampling from scratch."""
        return None


class Observable(eqx.Module):
    """An ensemble observable.

    `per_frame(potential, frame, nbrs)` gives a pytree of per-frame values (may depend on the
    potential's parameters, e.g. stress); `reduce(weights, values, traj_state)` turns weighted
    per-frame values into the ensemble estimate (default: weighted mean), so fluctuation
    formulas such as Cov(σ) fit.  Observables that are not reweightable (time correlations)
    set `reweightable = False` and implement `from_trajectory` instead; the DiffTRe engine
    refuses them as targets.
    """

    reweightable: ClassVar[bool] = True
    #: user-facing unit of the estimate, e.g. "GPa"; `to_user` converts internal values to it
    unit: ClassVar[str] = "1"
    #: does per_frame need the potential (then it is evaluated with the trainable parameters)?
    needs_potential: ClassVar[bool] = False

    def per_frame(self, potential: Potential, frame: Frame, nbrs: NeighborList):
        raise NotImplementedError(f"{type(self).__name__} does not define per-frame values")

    def reduce(self, weights, values, frames: Frame):
        return jax.tree_util.tree_map(lambda v: jnp.tensordot(weights, v, axes=1), values)

    def contract(self, potential: Potential, frame: Frame, nbrs: NeighborList, cotangent):
        """Σ cotangent · per_frame(potential, frame, nbrs), a scalar.

        The DiffTRe gradient pass differentiates this w.r.t. the potential's parameters, with
        the cotangent (∂loss/∂ per-frame value, a pytree like the values) held fixed.  Override
        it when the contraction is cheaper to differentiate than the full per-frame value (the
        elastic constants contract the 6×6 Born tensor along the cotangent's eigenvectors); it
        must equal this default exactly.
        """
        values = self.per_frame(potential, frame, nbrs)
        return sum(jnp.sum(c * v) for c, v in zip(jax.tree_util.tree_leaves(cotangent),
                                                  jax.tree_util.tree_leaves(values)))

    def contract_grad(self, potential: Potential, frame: Frame, nbrs: NeighborList, cotangent):
        """∇_θ `contract(potential, frame, nbrs, cotangent)`: a pytree like the potential's
        parameters, `eqx.partition(potential, eqx.is_inexact_array)[0]`.

        The DiffTRe engine calls it only for observables that override it; the others are
        folded into one reverse pass with the energy.  Override it when the gradient is cheaper
        assembled piece by piece than by reverse mode through `contract` (the elastic constants
        sum up to six directional second derivatives: a loop of gradients is 3x cheaper than the
        gradient of a loop); it must equal this default.
        """
        params, static = eqx.partition(potential, eqx.is_inexact_array)
        return jax.grad(lambda p: self.contract(eqx.combine(p, static), frame, nbrs, cotangent))(params)

    def overflow(self, frame: Frame, nbrs: NeighborList) -> jnp.ndarray:
        """Jit-compatible flag: an internal fixed-size buffer (e.g. ADF triplets) is too small."""
        return jnp.asarray(False)

    def grow(self, frame: Frame, nbrs: NeighborList) -> "Observable":
        """Host-side: a copy with buffers large enough for `frame` (only if `overflow` can be True)."""
        raise OverflowError(f"{type(self).__name__} reported an overflow but does not implement grow()")

    def to_user(self, estimate):
        """Convert an internal-unit estimate to `unit` (identity unless overridden)."""
        return estimate

    def from_trajectory(self, traj: Trajectory):
        """Evaluation-only observables compute their estimate from the whole trajectory."""
        raise NotImplementedError(f"{type(self).__name__} is reweightable: use per_frame/reduce")


class EvaluationTask(abc.ABC):
    """One section of an evaluation report (`fusepot evaluate`): e.g. elastic constants vs
    temperature, phonons, liquid structure.

    Unlike the three interfaces above it is host-side code (a plain class, not a pytree): it runs
    MD, phonopy, fits and plots.  `run` receives every model being compared at once so it can put
    them side by side in one table and one plot.  See core/evaluation.py for `EvalModel`,
    `TaskContext` and `TaskReport`.
    """

    #: section heading in the report
    title: ClassVar[str] = ""

    @abc.abstractmethod
    def run(self, models: list, ctx) -> Any:
        """Evaluate `models` (list of core.evaluation.EvalModel); write data files and plots into
        `ctx.out_dir`; return a core.evaluation.TaskReport."""
