"""Evaluate structural observables over a trajectory: own neighbor lists, overflow handling, errors.

The observables here need neighbor lists of their own cutoff (`obs.neighbor_cutoff`), not the
potential's; and buffers of their own (ADF triplets).  This module is the host-side loop that
sizes both, evaluates every frame in a jitted `lax.map`, and on any overflow reallocates/grows
and redoes the pass — nothing is dropped.  Error bars come from block averaging over frames
(`core.stats.block_average`).
"""
from __future__ import annotations

import logging

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from fusepot.core import neighbors as nb
from fusepot.core.interfaces import Observable, Trajectory
from fusepot.core.jaxutil import batched_map
from fusepot.core.stats import BlockEstimate, block_average

log = logging.getLogger("fusepot.structure")


def allocate_for(obs: Observable, traj: Trajectory, capacity_factor: float = 1.3, probes: int = 8) -> nb.NeighborList:
    """A skin-free neighbor list of cutoff `obs.neighbor_cutoff`, sized on the densest probe frame."""
    best = None
    for k in np.unique(np.linspace(0, traj.n_frames - 1, min(traj.n_frames, probes)).astype(int)):
        cand = nb.allocate(traj.positions[k], traj.boxes[k], obs.neighbor_cutoff, skin=0.0,
                           capacity_factor=capacity_factor)
        if best is None or cand.capacity > best.capacity:
            best = cand
    return best


def _obs_overflow(obs, frame, nbrs):
    f = getattr(obs, "overflow", None)
    return f(frame, nbrs) if f is not None else jnp.asarray(False)


@eqx.filter_jit
def _map_frames(obs, potential, template, frames, batch_size: int):
    def one(frame):
        nbrs = nb.update(template, frame.conf.positions, frame.conf.box, force=True)
        return obs.per_frame(potential, frame, nbrs), nbrs.overflow, _obs_overflow(obs, frame, nbrs)

    return batched_map(one, frames, batch_size)


def per_frame_values(obs: Observable, traj: Trajectory, potential=None, batch_size: int = 8,
                     max_attempts: int = 8):
    """Per-frame values (F, ...) of `obs` and the observable actually used (buffers grown).

    Raises OverflowError if capacities still overflow after `max_attempts` reallocations.
    """
    nbrs = allocate_for(obs, traj)
    if hasattr(obs, "sized_for") and getattr(obs, "triplet_capacity", 1) == 0:
        obs = obs.sized_for(traj.frame(0), nb.update(nbrs, traj.positions[0], traj.boxes[0], force=True))
    for attempt in range(max_attempts):
        vals, nbr_ovf, obs_ovf = _map_frames(obs, potential, nbrs, traj.frames(), batch_size)
        nbr_ovf, obs_ovf = np.asarray(nbr_ovf), np.asarray(obs_ovf) & ~np.asarray(nbr_ovf)
        if not nbr_ovf.any() and not obs_ovf.any():
            return vals, obs
        if nbr_ovf.any():
            log.warning("%s: neighbor list overflow on %d frame(s); reallocating", type(obs).__name__, nbr_ovf.sum())
            nbrs = allocate_for(obs, traj, capacity_factor=1.3 * 1.5 ** (attempt + 1))
        else:
            k = int(np.argmax(obs_ovf))
            log.warning("%s: buffer overflow on %d frame(s); growing", type(obs).__name__, obs_ovf.sum())
            frame = traj.frame(k)
            obs = obs.grow(frame, nb.update(nbrs, frame.conf.positions, frame.conf.box, force=True))
    raise OverflowError(f"{type(obs).__name__}: capacity overflow persisted after {max_attempts} reallocations")


def trajectory_average(obs: Observable, traj: Trajectory, n_blocks: int = 10, potential=None) -> BlockEstimate:
    """Unweighted trajectory mean of a per-frame observable with its block-average standard error."""
    vals, _ = per_frame_values(obs, traj, potential)
    return block_average(np.asarray(vals), n_blocks=n_blocks)
