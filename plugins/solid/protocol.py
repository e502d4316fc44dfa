"""Multi-stage MD protocols: run stages one after another, handing the final state on.

    stages = [
        Stage("heat", npt_short, temperature_K=50, pressure_GPa=0.0, keep=False),
        Stage("npt", npt_long, temperature_K=80, pressure_GPa=0.0),
        Stage("production", nvt, temperature_K=80),
    ]
    result = run_protocol(potential, conf, masses, stages, key)
    result.trajectories["production"], result.carry

Each stage's ensemble keeps its own run settings (time step, production/sample interval); a
stage after the first continues from the previous stage's Carry (or, with `cell_from`, from
that Carry mapped affinely into the mean cell of an earlier kept stage, e.g. NVT elastic
constants at the NPT mean cell), so ensembles skip their own
`equilibration_ps` there: make an equilibration stage with `keep=False` instead.  The NVT and
NPT Nosé–Hoover ensembles share one state (thermostat and barostat variables carry over);
the Langevin state is converted to and from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import equinox as eqx
import jax
import jax.numpy as jnp

from fusepot.core.interfaces import Ensemble, Potential, StatePoint, Trajectory
from fusepot.core.md import Carry
from fusepot.core.mechanics import energy_forces_virial
from fusepot.core.system import Configuration
from fusepot.core.units import gpa_to_internal

from .nose_hoover import NHState, NoseHooverNPT, NoseHooverNVT


@dataclass(frozen=True)
class Stage:
    name: str
    ensemble: Ensemble
    temperature_K: float
    pressure_GPa: float = 0.0
    keep: bool = True  # store the trajectory in the result (False for equilibration stages)
    cell_from: Optional[str] = None  # start in the mean cell of this earlier (kept) stage's frames

    @property
    def state_point(self) -> StatePoint:
        return StatePoint(self.temperature_K, gpa_to_internal(self.pressure_GPa))


@dataclass
class ProtocolResult:
    trajectories: dict[str, Trajectory] = field(default_factory=dict)
    carry: Optional[Carry] = None

    @property
    def configuration(self) -> Configuration:
        """The final configuration (e.g. the NPT-equilibrated cell)."""
        s = self.carry.state
        return Configuration(s.positions, s.species, s.box)


def _nh_state_from(state, potential, nbrs, chain_length: int) -> NHState:

    e, f, w = energy_forces_virial(potential, Configuration(state.positions, state.species, state.box), nbrs)
    z = jnp.zeros((chain_length,), state.positions.dtype)
    return NHState(state.positions, state.velocities, f, e, w, state.box, state.species, state.masses, state.key,
                   z, z, jnp.zeros(3, z.dtype), z, z)


def rescale_to_cell(carry: Carry, box, potential: Potential) -> Carry:
    """Affinely map the carried state into `box` (fixed fractional coordinates; velocities kept),
    with a fresh neighbor list and forces/virial recomputed."""

    from fusepot.core import neighbors as nb

    s = carry.state
    box = jnp.asarray(box, s.box.dtype)
    deform = jnp.linalg.solve(s.box, box)  # old_box @ deform = new box
    pos = s.positions @ deform
    nbrs = nb.allocate(pos, box, potential.cutoff, carry.nbrs.skin)
    conf = Configuration(pos, s.species, box)
    if isinstance(s, NHState):
        e, f, w = energy_forces_virial(potential, conf, nbrs)
        s = eqx.tree_at(lambda t: (t.positions, t.box, t.energy, t.forces, t.virial), s, (pos, box, e, f, w))
    else:
        e, f, _ = energy_forces_virial(potential, conf, nbrs)
        s = eqx.tree_at(lambda t: (t.positions, t.box, t.energy, t.forces), s, (pos, box, e, f))
    return Carry(s, nbrs, carry.potential)


def carry_for(ensemble: Ensemble, carry: Carry, potential: Potential) -> Carry:
    """Adapt `carry` from one ensemble's state to what `ensemble` restarts from."""
    state = carry.state
    if isinstance(ensemble, (NoseHooverNVT, NoseHooverNPT)):
        if isinstance(state, NHState):
            if state.chain_v.shape[0] == ensemble.chain_length:
                return carry
        return Carry(_nh_state_from(state, potential, carry.nbrs, ensemble.chain_length), carry.nbrs, carry.potential)
    from fusepot.plugins.ensembles.langevin import LangevinNVT, MDState

    if isinstance(ensemble, LangevinNVT):
        if isinstance(state, MDState):
            return carry
        return Carry(MDState(state.positions, state.velocities, state.forces, state.energy, state.box, state.species,
                             state.masses, state.key), carry.nbrs, carry.potential)
    raise TypeError(f"protocol: do not know how to hand a {type(state).__name__} state to {type(ensemble).__name__}")


def run_protocol(potential: Potential, conf: Configuration, masses, stages: list[Stage], key,
                 restart: Optional[Carry] = None,
                 progress: Optional[Callable[[float, str], None]] = None) -> ProtocolResult:
    """Run `stages` in order; return the kept trajectories (by stage name) and the final Carry."""
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"protocol stage names must be unique: {names}")
    result = ProtocolResult()
    carry = restart
    for k, stage in enumerate(stages):
        key, sub = jax.random.split(key)
        if stage.cell_from is not None:
            if stage.cell_from not in result.trajectories:
                raise ValueError(f"stage {stage.name!r}: cell_from={stage.cell_from!r} is not an earlier kept stage")
            if carry is None:
                raise ValueError(f"stage {stage.name!r}: cell_from needs a previous stage")
            mean_box = jnp.mean(result.trajectories[stage.cell_from].boxes, axis=0)
            carry = rescale_to_cell(carry, mean_box, carry.potential or potential)
        if carry is not None:
            carry = carry_for(stage.ensemble, carry, carry.potential or potential)
        stage_progress = None
        if progress is not None:
            stage_progress = (lambda f, msg, k=k, n=stage.name: progress((k + f) / len(stages), f"[{n}] {msg}"))
        traj, carry = stage.ensemble.sample(potential if carry is None or carry.potential is None else carry.potential,
                                            conf, masses, StatePoint(stage.temperature_K, gpa_to_internal(stage.pressure_GPa),
                                                                     dtype=conf.positions.dtype), sub, restart=carry,
                                            progress=stage_progress)
        if stage.keep:
            result.trajectories[stage.name] = traj
    result.carry = carry
    return result


__all__ = ["Stage", "ProtocolResult", "run_protocol", "carry_for", "rescale_to_cell"]
