"""DiffTRe: differentiable trajectory reweighting (Thaler & Zavadlav, Nat. Commun. 12, 6884 (2021)).

For frames S_i sampled with the reference potential U_ref (parameters θ̂):

    w_i(θ) = softmax_i(−β (U_θ(S_i) − U_ref(S_i)))          (log-sum-exp, stable)
    ⟨O⟩_θ  ≈ reduce(w, O_i(θ))                              (weighted mean, or a fluctuation formula)
    N_eff  = exp(−Σ w_i ln w_i)

The loss L(θ) = Σ_m λ_m mean((⟨O_m⟩_θ − Õ_m)²) depends on θ only through the per-frame
energies u_i(θ) and per-frame values O_i(θ).  We therefore compute the gradient in two passes
with O(1 frame) memory, whatever the model:

1. forward over all frames (no autodiff) → u, O; then L and its cotangents ḡ_u = ∂L/∂u,
   ḡ_O = ∂L/∂O by autodiff of the cheap reduction;
2. ∇_θ L = Σ_i ∇_θ [ḡ_u,i · u_i(θ) + ⟨ḡ_O,i, O_i(θ)⟩], accumulated over chunks of frames.

This equals the full reverse-mode gradient exactly (chain rule), never backpropagates through
the MD, and lets large models (DimeNet++) reweight hundreds of frames.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import neighbors as nb
from .interfaces import Frame, Observable, Potential, Trajectory
from .jaxutil import batched_map
from .units import convert

log = logging.getLogger("fusepot.difftre")


# -- weights -----------------------------------------------------------------------------------
def log_weights(beta, u_new, u_ref):
    """Normalised log-weights ln w_i; finite for any finite energy difference."""
    a = -beta * (u_new - u_ref)
    return a - jax.scipy.special.logsumexp(a)


def reweighting_weights(beta, u_new, u_ref):
    return jnp.exp(log_weights(beta, u_new, u_ref))


def effective_sample_size(weights):
    """N_eff = exp(−Σ w ln w) (with 0 ln 0 = 0)."""
    w = jnp.asarray(weights)
    safe = jnp.where(w > 0, w, 1.0)
    return jnp.exp(-jnp.sum(jnp.where(w > 0, w * jnp.log(safe), 0.0)))


# -- targets -----------------------------------------------------------------------------------
@dataclass
class Target:
    """An observable with its experimental value (in `unit`) and its loss weight λ.

    `unit` is the unit of `value`; it is converted to the observable's own unit.  λ is `weight`
    or 1/uncertainty² (uncertainty in `unit`).  The loss term is λ·mean((⟨O⟩ − value)²) over
    the observable's components, in the observable's unit.
    """

    name: str
    observable: Observable
    value: np.ndarray
    unit: str = ""
    weight: Optional[float] = None
    uncertainty: Optional[float] = None

    def __post_init__(self):
        if not type(self.observable).reweightable:
            raise ValueError(f"target {self.name!r}: observable {type(self.observable).__name__} is a time-correlation "
                             f"(evaluation-only) observable and cannot be reweighted; use it in evaluation, not as a "
                             f"DiffTRe target")
        if (self.weight is None) == (self.uncertainty is None):
            raise ValueError(f"target {self.name!r}: give exactly one of weight or uncertainty")
        if self.uncertainty is not None and self.uncertainty <= 0:
            raise ValueError(f"target {self.name!r}: uncertainty must be positive")

    @property
    def obs_unit(self) -> str:
        return type(self.observable).unit

    @property
    def value_in_obs_unit(self):
        v = np.asarray(self.value, dtype=np.float64)
        return convert(v, self.unit, self.obs_unit) if self.unit and self.unit != self.obs_unit else v

    @property
    def lam(self) -> float:
        """λ in 1/(observable unit)²: a weight given per `unit`² is converted, exactly."""
        scale = float(convert(1.0, self.unit, self.obs_unit)) if self.unit else 1.0
        if self.weight is not None:
            return float(self.weight) / (scale * scale)
        u = float(self.uncertainty) * scale
        return 1.0 / (u * u)


# -- per-frame evaluation ----------------------------------------------------------------------
class NeighborTemplates(eqx.Module):
    """Neighbor-list templates, one per cutoff needed (potential, and observables with their own)."""

    lists: dict


def _obs_cutoff(obs: Observable, potential: Potential) -> float:
    return float(getattr(obs, "neighbor_cutoff", None) or potential.cutoff)


def allocate_templates(potential: Potential, traj: Trajectory, observables: dict, capacity_factor: float = 1.25,
                       grow: float = 1.0) -> NeighborTemplates:
    """Host-side: lists sized from the densest of a few sample frames (+ margin)."""
    cuts = sorted({float(potential.cutoff)} | {_obs_cutoff(o, potential) for o in observables.values()})
    lists = {}
    probe = np.unique(np.linspace(0, traj.n_frames - 1, min(traj.n_frames, 8)).astype(int))
    for c in cuts:
        best = None
        for k in probe:
            cand = nb.allocate(traj.positions[k], traj.boxes[k], c, skin=0.0, capacity_factor=capacity_factor * grow)
            if best is None or cand.capacity > best.capacity:
                best = cand
        lists[repr(c)] = best
    return NeighborTemplates(lists)


def _frame_eval(potential, observables, templates: NeighborTemplates, frame: Frame):
    conf = frame.conf
    built = {k: nb.update(t, conf.positions, conf.box, force=True) for k, t in templates.lists.items()}
    nbrs = built[repr(float(potential.cutoff))]
    u = potential.energy(conf, nbrs)
    vals, flags = {}, {}
    for name, o in observables.items():
        onb = built[repr(_obs_cutoff(o, potential))]
        vals[name] = o.per_frame(potential, frame, onb)
        flags[name] = jnp.asarray(o.overflow(frame, onb))
    flags["_neighbors"] = jnp.any(jnp.stack([b.overflow for b in built.values()]))
    flags["_potential"] = jnp.asarray(potential.overflow(conf, nbrs))
    return u, vals, flags


@eqx.filter_jit
def _eval_all(potential, observables, templates, frames: Frame, batch_size: int):
    # whole batches only (padding repeats the last frame; dropped after): for a remainder,
    # jax.lax.map would compile a second copy of the per-frame evaluation
    n = jax.tree_util.tree_leaves(frames)[0].shape[0]
    pad = -n % batch_size
    if pad:
        frames = jax.tree_util.tree_map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]), frames)
    out = batched_map(lambda f: _frame_eval(potential, observables, templates, f), frames, batch_size)
    return jax.tree_util.tree_map(lambda x: x[:n], out) if pad else out


def evaluate_frames(potential: Potential, traj: Trajectory, observables: dict, templates: NeighborTemplates = None,
                    batch_size: int = 8):
    """Per-frame energies (F,) and observable values {name: (F, ...)} with the given potential.

    Capacity overflows are never silent: neighbor templates are reallocated, observables with
    internal buffers are grown (`Observable.grow`, on the worst frame) and the pass is redone
    (logged).  The grown observables are written back into `observables` (a dict, updated in
    place); a potential buffer overflow raises OverflowError (grow the potential first).
    Returns (u, values, templates).
    """
    needed = {repr(float(potential.cutoff))} | {repr(_obs_cutoff(o, potential)) for o in observables.values()}
    if templates is None or not needed <= set(templates.lists):
        templates = allocate_templates(potential, traj, observables)
    batch_size = max(1, min(batch_size, traj.n_frames))  # (a static argument: one program for all larger ones)
    for attempt in range(8):
        u, vals, flags = _eval_all(potential, observables, templates, traj.frames(), batch_size)
        bad = {k: np.asarray(v) for k, v in flags.items() if bool(jnp.any(v))}
        if not bad:
            return u, vals, templates
        log.warning("reweighting: capacity overflow (%s) on %d frame(s); growing and redoing the pass (attempt %d)",
                    ", ".join(sorted(bad)), max(int(v.sum()) for v in bad.values()), attempt + 1)
        if "_potential" in bad:
            raise OverflowError("potential buffer overflow during reweighting: the potential's capacity must grow "
                                "(sample with the ensemble first, which grows it)")
        if "_neighbors" in bad:
            templates = allocate_templates(potential, traj, observables, grow=1.5 ** (attempt + 1))
            continue
        for name in [k for k in bad if not k.startswith("_")]:
            k = int(np.argmax(bad[name]))
            o = observables[name]
            onb = nb.update(templates.lists[repr(_obs_cutoff(o, potential))], traj.positions[k], traj.boxes[k], force=True)
            observables[name] = o.grow(traj.frame(k), onb)
    raise OverflowError("reweighting: capacity overflow persisted after 8 attempts")


# -- estimates and loss ------------------------------------------------------------------------
def estimates_from_values(observables: dict, weights, values, frames: Frame):
    """Ensemble estimates in each observable's user unit."""
    return {name: o.to_user(o.reduce(weights, values[name], frames)) for name, o in observables.items()}


def target_loss(targets: list[Target], estimates: dict):
    terms = {t.name: t.lam * jnp.mean((jnp.asarray(estimates[t.name]) - jnp.asarray(t.value_in_obs_unit)) ** 2)
             for t in targets}
    return sum(terms.values()), terms


@dataclass
class ReweightResult:
    loss: float
    terms: dict
    estimates: dict
    weights: np.ndarray
    n_eff: float
    grad: object = None  # pytree like the potential (eqx.filter partition of arrays)
    templates: NeighborTemplates = None
    errors: dict = None  # block-average standard errors of the estimates (same units)
    values: tuple = None  # (u (F,), {name: per-frame values}): the forward pass, for `reweight(values=...)`


def _loss_from_arrays(observables, targets, beta, u_ref, frames, u, values):
    w = reweighting_weights(beta, u, u_ref)
    est = estimates_from_values(observables, w, values, frames)
    loss, terms = target_loss(targets, est)
    return loss, (terms, est, w)


def reweight(potential: Potential, traj: Trajectory, targets: list[Target], *, with_grad: bool = True,
             templates: NeighborTemplates = None, batch_size: int = 8, n_blocks: int = 10,
             values: tuple = None) -> ReweightResult:
    """Reweighted estimates, loss, N_eff, block-average error bars (`n_blocks`, 0 = none) and
    (optionally) ∇_θ loss for one state point.  `values`: the `.values` of an earlier result for
    the same potential, trajectory and targets (skips the forward pass; e.g. the gradient pass
    after a forward-only reuse test)."""
    observables = {t.name: t.observable for t in targets}
    if values is None:
        u, vals, templates = evaluate_frames(potential, traj, observables, templates, batch_size)
        for t in targets:  # keep observables whose buffers grew
            t.observable = observables[t.name]
    else:
        u, vals = values
        if templates is None:
            templates = allocate_templates(potential, traj, observables)
    if not bool(jnp.all(jnp.isfinite(u))):
        raise FloatingPointError("reweighting: non-finite energies on frames " + str(np.flatnonzero(~np.isfinite(np.asarray(u)))[:10]))
    beta = 1.0 / traj.state.kT
    frames = traj.frames()
    (loss, (terms, est, w)), (g_u, g_vals) = jax.value_and_grad(
        lambda uu, vv: _loss_from_arrays(observables, targets, beta, traj.ref_energy, frames, uu, vv),
        argnums=(0, 1), has_aux=True)(u, vals)
    grad = None
    if with_grad:
        grad = _accumulate_grad(potential, observables, templates, frames, g_u, g_vals, batch_size)
    errors = block_errors(observables, np.asarray(w), vals, frames, n_blocks) if n_blocks else None
    return ReweightResult(float(loss), {k: float(v) for k, v in terms.items()},
                          {k: np.asarray(v) for k, v in est.items()}, np.asarray(w), float(effective_sample_size(w)),
                          grad, templates, errors, (u, vals))


def block_errors(observables: dict, weights, values: dict, frames: Frame, n_blocks: int = 10) -> dict:
    """Standard error of each reweighted estimate from `n_blocks` contiguous blocks of frames
    (each block's weights renormalised; the observable's own reduction, so fluctuation formulas
    get a block error too).  Empty when there are fewer frames than blocks."""
    n = weights.shape[0]
    if n < max(n_blocks, 2):
        return {}
    size = n // n_blocks
    out = {}
    for name, o in observables.items():
        ests = []
        for b in range(n_blocks):
            sl = slice(b * size, (b + 1) * size)
            wb = weights[sl] / max(weights[sl].sum(), 1e-300)
            vb = jax.tree_util.tree_map(lambda x: x[sl], values[name])
            fb = jax.tree_util.tree_map(lambda x: x[sl], frames)
            ests.append(np.asarray(o.to_user(o.reduce(jnp.asarray(wb), vb, fb)), dtype=np.float64))
        out[name] = np.std(np.stack(ests), axis=0, ddof=1) / np.sqrt(n_blocks)
    return out


@eqx.filter_jit
def _accumulate_grad(potential, observables, templates, frames: Frame, g_u, g_vals, batch_size: int):
    params, static = eqx.partition(potential, eqx.is_inexact_array)
    n = g_u.shape[0]
    n_chunks = -(-n // batch_size)
    pad = n_chunks * batch_size - n

    def chunks(x, fill_zero):
        if pad:
            tail = jnp.zeros((pad,) + x.shape[1:], x.dtype) if fill_zero else jnp.repeat(x[-1:], pad, axis=0)
            x = jnp.concatenate([x, tail])
        return x.reshape((n_chunks, batch_size) + x.shape[1:])

    # padding frames repeat the last frame with zero cotangents, so they contribute nothing
    g_u_p = chunks(g_u, True)
    g_vals_p = jax.tree_util.tree_map(lambda x: chunks(x, True), g_vals)
    frames_p = jax.tree_util.tree_map(lambda x: chunks(x, False), frames)

    # observables with their own contract_grad give their gradient directly; the others are
    # folded into one reverse pass with the energy
    own = {name for name, o in observables.items() if type(o).contract_grad is not Observable.contract_grad}

    def built_lists(conf):  # the frame's neighbor lists (no parameter dependence): built once per frame
        return {k: nb.update(t, conf.positions, conf.box, force=True) for k, t in templates.lists.items()}

    def surrogate(p, frame, built, gu, gv):
        # gu·u + Σ_obs ⟨gv, per-frame value⟩: its θ-gradient is the frame's share of the total
        pot = eqx.combine(p, static)
        u = pot.energy(frame.conf, built[repr(float(pot.cutoff))])
        return gu * u + sum(o.contract(pot, frame, built[repr(_obs_cutoff(o, pot))], gv[name])
                            for name, o in observables.items() if name not in own)

    def own_grads(p, frame, built, gv):
        pot = eqx.combine(p, static)
        grads = [observables[name].contract_grad(pot, frame, built[repr(_obs_cutoff(observables[name], pot))],
                                                 gv[name]) for name in sorted(own)]
        return jax.tree_util.tree_map(lambda *g: sum(g), *grads)

    def chunk_grad(p, fr, gu, gv):
        if batch_size == 1:  # no vmap: batched gathers and sorts of one frame are 1.9x slower on CPU
            fr, gu, gv = jax.tree_util.tree_map(lambda x: x[0], (fr, gu, gv))
            built = built_lists(fr.conf)
            g = jax.grad(surrogate)(p, fr, built, gu, gv)
            return jax.tree_util.tree_map(jnp.add, g, own_grads(p, fr, built, gv)) if own else g
        built = jax.vmap(built_lists)(fr.conf)
        g = jax.grad(lambda q: jnp.sum(jax.vmap(lambda *xs: surrogate(q, *xs))(fr, built, gu, gv)))(p)
        if own:
            extra = jax.vmap(lambda f, b, v: own_grads(p, f, b, v))(fr, built, gv)
            g = jax.tree_util.tree_map(lambda x, y: x + jnp.sum(y, axis=0), g, extra)
        return g

    def body(acc, xs):
        fr, gu, gv = xs
        g = chunk_grad(params, fr, gu, gv)
        return jax.tree_util.tree_map(jnp.add, acc, g), None

    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    total, _ = jax.lax.scan(body, zero, (frames_p, g_u_p, g_vals_p))
    return total
