"""Optimiser construction from the spec (optax) and parameter partitioning."""
from __future__ import annotations

import equinox as eqx
import jax
import optax

from .spec import OptimizerSpec, SpecError


def schedule(o: OptimizerSpec):
    s = o.schedule
    if s.name == "constant":
        return optax.constant_schedule(o.learning_rate)
    if s.name == "exponential_decay":
        return optax.exponential_decay(o.learning_rate, s.transition_steps, s.decay_rate)
    return optax.cosine_decay_schedule(o.learning_rate, s.transition_steps, s.alpha)


def make_optimizer(o: OptimizerSpec, where: str = "optimizer") -> optax.GradientTransformation:
    fn = getattr(optax, o.name, None)
    if fn is None or not callable(fn):
        raise SpecError(f"{where}.name: unknown optax optimiser {o.name!r}")
    try:
        opt = fn(learning_rate=schedule(o), **o.params)
    except TypeError as exc:
        raise SpecError(f"{where}.params: {exc}") from None
    if o.clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(o.clip_norm), opt)
    return opt


def trainable(model):
    """(params, static) split: every inexact array leaf is trainable."""
    return eqx.partition(model, eqx.is_inexact_array)


def with_structure(leaves_from, structure_from):
    """`structure_from` carrying the leaves of `leaves_from`.

    For two versions of one model that differ only in static fields (e.g. the buffer capacities
    of a potential sized for different systems, see `Potential.resized`/`grow`), where
    `eqx.combine` refuses the mismatched metadata.  Works on whole models, on their parameter
    partitions and on gradients.  Raises ValueError when the leaves do not correspond.
    """
    leaves = jax.tree_util.tree_leaves(leaves_from)
    treedef = jax.tree_util.tree_structure(structure_from)
    if treedef.num_leaves != len(leaves):
        raise ValueError(f"with_structure: {len(leaves)} leaves for a structure with {treedef.num_leaves}; "
                         f"the two trees are not versions of the same model")
    return jax.tree_util.tree_unflatten(treedef, leaves)


def apply_updates(model, updates):
    """`eqx.apply_updates` that keeps every leaf's dtype.  Optimiser updates can come out in a
    wider float type than the parameters (optax's learning-rate schedules give float64 scalars
    when 64-bit jax is on), which would silently turn a float32 model into float64 and break
    compiled loops whose carries are float32."""
    new = eqx.apply_updates(model, updates)
    return jax.tree_util.tree_map(lambda n, o: n.astype(o.dtype) if eqx.is_inexact_array(o) else n, new, model)
