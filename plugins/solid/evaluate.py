"""Observables on a stored trajectory: per-frame values, plain estimates, block error bars."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fusepot.core.difftre import evaluate_frames
from fusepot.core.interfaces import Observable, Potential, Trajectory
from fusepot.core.stats import BlockEstimate, block_estimate


def per_frame_values(observable: Observable, potential: Potential, traj: Trajectory):
    """Per-frame values (leading axis = frame) with `potential` (core.difftre.evaluate_frames:
    neighbor lists rebuilt per frame, overflow → reallocate, never dropped)."""
    _, values, _ = evaluate_frames(potential, traj, {"o": observable})
    return values["o"]


def estimate(observable: Observable, values, frames, weights=None):
    """Ensemble estimate (internal units) with `weights` (uniform if None)."""
    n = jax.tree_util.tree_leaves(values)[0].shape[0]
    w = jnp.full((n,), 1.0 / n) if weights is None else weights
    return observable.reduce(w, values, frames)


def block_error(observable: Observable, values, frames, n_blocks: int = 10) -> BlockEstimate:
    """Estimate and block-average standard error, in the observable's user unit.

    The estimator (reduce with uniform weights) is applied to the whole series and to each of
    `n_blocks` contiguous blocks (core.stats.block_estimate), so nonlinear estimators such as the
    stress-fluctuation formula get honest error bars.  Blocks must be much longer than the
    correlation time; fluctuation terms are biased in short blocks.
    """
    leaves, treedef = jax.tree_util.tree_flatten((values, frames))

    def fn(parts):
        v, f = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(p) for p in parts])
        return np.asarray(observable.to_user(estimate(observable, v, f)))

    return block_estimate(fn, [np.asarray(x) for x in leaves], n_blocks)
