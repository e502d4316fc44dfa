"""Host-side driver shared by all ensembles: segments, neighbor lists, overflow, NaN, progress.

An integrator is two pure functions over an immutable state pytree that has at least
`positions`, `box`, `velocities`, `species` and `energy` (potential energy, eV) fields:

    init(potential, conf, masses, state_point, nbrs, key) -> state
    step(potential, state, nbrs, state_point) -> state      (one MD step; nbrs already updated)

The driver jits `steps_per_frame` steps + a frame record, scans that over a chunk of frames,
and after each chunk checks on the host: neighbor-list overflow or potential buffer overflow
→ reallocate/grow, log, and redo the chunk from its starting state; NaN → `MDFailure`.
Nothing is dropped silently.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import neighbors as nb
from .interfaces import Potential, StatePoint, Trajectory
from .system import Configuration
from .units import internal_to_ps

log = logging.getLogger("fusepot.md")


class MDFailure(RuntimeError):
    """The simulation produced NaN/inf or an unrecoverable overflow."""


class Carry(eqx.Module):
    """What a later `sample(..., restart=carry)` continues from (a pytree)."""

    state: Any
    nbrs: nb.NeighborList
    potential: Any = None  # the potential after any buffer growth (same parameters)


def init_carry(init: Callable, potential: Potential, conf: Configuration, masses, sp: StatePoint, key,
               skin: float = 0.5, capacity_factor: float = 1.3) -> Carry:
    """The Carry a fresh run starts from (also the template for loading a checkpointed Carry)."""
    nbrs = nb.allocate(conf.positions, conf.box, potential.cutoff, skin, capacity_factor)
    masses, sp = in_float_type(masses, sp, conf.positions.dtype)
    return Carry(_init_state(init, potential, conf, masses, sp, nbrs, key), nbrs, potential)


@eqx.filter_jit
def _init_state(init, potential, conf, masses, sp, nbrs, key):
    # jitted: op-by-op, the initial energy and forces of a network potential cost far more
    # (DimeNet++ on CPU: ~15 s of per-operation dispatch vs one ~4 s compilation)
    return init(potential, conf, masses, sp, nbrs, key)


def in_float_type(masses, sp: StatePoint, dtype) -> tuple[jnp.ndarray, StatePoint]:
    """Masses and state point in the simulation's float type `dtype` (its positions').

    Integrators combine them with the state (Maxwell–Boltzmann velocities √(kT/m), F/m kicks,
    thermostat noise and chain masses ∝ kT); with 64-bit jax on, float64 masses (as ASE gives
    them) or a StatePoint in jax's default float would promote a float32 state to float64 after
    one step, and the scan over MD steps refuses a carry that changes type."""
    return jnp.asarray(masses, dtype), StatePoint(sp.temperature, sp.pressure, dtype=dtype)


def _advance(step, potential, state, nbrs, sp, n_steps):
    def body(_, c):
        s, n = c
        n = nb.update(n, s.positions, s.box)
        s = step(potential, s, n, sp)
        return s, n

    return jax.lax.fori_loop(0, n_steps, body, (state, nbrs))


@eqx.filter_jit
def _chunk(step, potential, state, nbrs, sp, steps_per_frame: int, n_frames: int):
    def one(c, _):
        s, n = _advance(step, potential, c[0], c[1], sp, steps_per_frame)
        ovf = potential.overflow(Configuration(s.positions, s.species, s.box), n)
        return (s, n), (s.positions, s.box, s.velocities, s.energy, ovf)

    (state, nbrs), recs = jax.lax.scan(one, (state, nbrs), None, length=n_frames)
    return state, nbrs, recs


def _kinetic_temperature(velocities, masses):
    """Per-frame kinetic temperature (K) of recorded velocities (F, N, 3)."""
    from .units import BOLTZMANN_EV_PER_K

    v = np.asarray(velocities)
    ke = 0.5 * np.sum(np.asarray(masses)[None, :, None] * v * v, axis=(1, 2))
    return 2.0 * ke / (3.0 * v.shape[1] * BOLTZMANN_EV_PER_K)


def _bad(x) -> bool:
    return not bool(np.all(np.isfinite(np.asarray(x))))


def _skin_for_boxes(cutoff: float, skin: float, box, chunk_boxes) -> float:
    """Skin such that a list allocated in `box` still reaches cutoff + `skin` in the narrowest
    of `chunk_boxes` (perpendicular widths; 2 % margin).  `skin` when no box is narrower."""
    w0 = float(nb._perpendicular_widths(np.asarray(box, dtype=np.float64)).min())
    w = min(float(nb._perpendicular_widths(np.asarray(b, dtype=np.float64)).min()) for b in np.asarray(chunk_boxes))
    if w >= w0:
        return skin
    return (cutoff + skin) * (w0 / w) * 1.02 - cutoff


def run(step: Callable, init: Callable, potential: Potential, conf: Configuration, masses, sp: StatePoint, key,
        dt: float, n_equilibration_steps: int, n_frames: int, steps_per_frame: int,
        restart: Optional[Carry] = None, progress: Optional[Callable[[float, str], None]] = None,
        skin: float = 0.5, capacity_factor: float = 1.3, chunk_frames: int = 50, label: str = "md",
        explosion_factor: float = 20.0):
    """Run equilibration + production and return (Trajectory, Carry).  dt in internal time.

    Raises MDFailure on NaN/inf, or when the kinetic temperature of a recorded frame exceeds
    `explosion_factor` × the target temperature (an exploding simulation).
    """
    if restart is None:
        fresh = init_carry(init, potential, conf, masses, sp, key, skin, capacity_factor)
        state, nbrs = fresh.state, fresh.nbrs
    else:
        state, nbrs = restart.state, restart.nbrs
    masses, sp = in_float_type(masses, sp, state.positions.dtype)
    species = conf.species

    eq_frames = int(math.ceil(n_equilibration_steps / max(steps_per_frame, 1))) if n_equilibration_steps else 0
    # equilibration in chunks of whole "frames" too (records discarded)
    plan = [("equilibration", eq_frames), ("production", n_frames)]
    done_steps, total_steps = 0, (eq_frames + n_frames) * steps_per_frame
    t0 = time.perf_counter()
    records = []
    for phase, frames in plan:
        remaining = frames
        while remaining > 0:
            k = min(chunk_frames, remaining)
            for attempt in range(8):
                new_state, new_nbrs, recs = _chunk(step, potential, state, nbrs, sp, steps_per_frame, k)
                nbr_ovf = bool(new_nbrs.overflow)
                pot_ovf = bool(np.any(np.asarray(recs[4])))
                if not (nbr_ovf or pot_ovf):
                    break
                pos = np.asarray(state.positions)
                if nbr_ovf:
                    log.warning("%s: neighbor list overflow (%d pairs > capacity %d); reallocating and redoing %d frames",
                                label, int(new_nbrs.count), nbrs.capacity, k)
                    # grow on every retry: a later frame may need more room (pairs or atoms per cell);
                    # a box that shrank during the chunk (NPT) needs a periodic-image set / cells for
                    # its smallest width, so the reach cutoff + skin is widened in proportion
                    nbrs = nb.allocate(pos, state.box, potential.cutoff,
                                       _skin_for_boxes(potential.cutoff, skin, state.box, recs[1]),
                                       capacity_factor * max(1.0, int(new_nbrs.count) / max(nbrs.capacity, 1))
                                       * 1.25 ** (attempt + 1))
                if pot_ovf:
                    # grow for the first frame that overflowed (the chunk's start usually still fits)
                    f = int(np.argmax(np.asarray(recs[4])))
                    bad_conf = Configuration(recs[0][f], species, recs[1][f])
                    bad_nbrs = nb.allocate(recs[0][f], recs[1][f], potential.cutoff, skin, capacity_factor)
                    log.warning("%s: potential buffer overflow at frame %d of the chunk; growing buffers and redoing "
                                "%d frames", label, f, k)
                    potential = potential.grow(bad_conf, bad_nbrs)
            else:
                raise MDFailure(f"{label}: overflow persisted after 8 reallocations")
            if _bad(new_state.positions) or _bad(recs[3]):
                raise MDFailure(f"{label}: NaN/inf in positions or energy during {phase} "
                                f"(after {done_steps} of {total_steps} steps); the potential is unstable here")
            t_max = float(np.max(_kinetic_temperature(recs[2], masses)))
            if t_max > explosion_factor * float(sp.temperature):
                raise MDFailure(f"{label}: kinetic temperature reached {t_max:.3g} K (> {explosion_factor:g} × "
                                f"{float(sp.temperature):g} K) during {phase} after {done_steps} steps: the simulation "
                                f"exploded")
            state, nbrs = new_state, new_nbrs
            if phase == "production":
                records.append(recs)
            remaining -= k
            done_steps += k * steps_per_frame
            if progress is not None:
                el = time.perf_counter() - t0
                eta = el / done_steps * (total_steps - done_steps)
                progress(done_steps / total_steps, f"{label} {phase} {done_steps}/{total_steps} steps, ETA {eta:.0f} s")
    cat = [jnp.concatenate([r[i] for r in records]) for i in range(4)]
    times = internal_to_ps(dt) * steps_per_frame * (jnp.arange(n_frames) + 1)
    traj = Trajectory(cat[0], cat[1], cat[2], cat[3], times, species, masses, sp)
    return traj, Carry(state, nbrs, potential)
