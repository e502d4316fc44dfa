"""Born (affine) strain derivatives of the potential energy in Voigt form.

σ^B_I = (1/V) ∂U/∂η_I and C^B_IJ = (1/V) ∂²U/∂η_I∂η_J at η = 0, for a homogeneous deformation
of positions *and* box (fixed fractional coordinates) with Green–Lagrange strain η (6
engineering-Voigt components, see voigt.py): x → x F with the symmetric stretch
F = sqrt(I + 2η) = I + η − η²/2 + O(η³) (exact to the second order the derivatives need).

Cost: one linearisation of the reverse-mode strain gradient and 6 forward-mode tangents
(forward-over-reverse Hessian–vector products) — never a 9×9 Hessian or 36 second passes.

Why Lagrangian strain: the stress-fluctuation formula with the ideal-gas term
(N kT/V)(δ_ik δ_jl + δ_il δ_jk) is exact for derivatives w.r.t. η (Ray 1988; LAMMPS
`compute born/matrix`).  With the linear strain F = I + ε the Born tensor would carry extra
terms ∝ σ; the two agree at zero stress.  σ^B is the same for both (first order).
"""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from fusepot.core.interfaces import Potential
from fusepot.core.jaxutil import batched_map
from fusepot.core.neighbors import NeighborList
from fusepot.core.system import Configuration

from .voigt import strain_from_voigt


def strain_energy_fn(potential: Potential, conf: Configuration, nbrs: NeighborList):
    """e (6,) engineering-Voigt Lagrangian strain η → U(conf deformed by sqrt(I + 2η)) in eV."""

    def u(e):
        eta = strain_from_voigt(e)
        return potential.energy(conf.strained(eta - 0.5 * eta @ eta), nbrs)

    return u


class _DeformedPairs(NeighborList):
    """A neighbor list whose pair vectors come out deformed: d → d F (F = I + strain)."""

    deform: jnp.ndarray = None

    def vectors(self, positions, box):
        return super().vectors(positions, box) @ self.deform


def pair_strain_energy_fn(potential: Potential, conf: Configuration, nbrs: NeighborList):
    """Like `strain_energy_fn`, but the strain deforms the pair vectors `nbrs.vectors` instead of
    positions and box.  Identical for potentials that see positions and box only through
    `nbrs.vectors` (LJ, EAM, DimeNet++ here), and cheaper: the strain derivative is a dense sum
    over pairs, with no scatter back onto atoms.  Wrong for any other potential."""
    fields = {k: getattr(nbrs, k) for k in NeighborList.__dataclass_fields__}

    def u(e):
        eta = strain_from_voigt(e)
        deform = jnp.eye(3, dtype=eta.dtype) + eta - 0.5 * eta @ eta
        return potential.energy(conf, _DeformedPairs(**fields, deform=deform))

    return u


_METHODS = {"affine": strain_energy_fn, "pair_vectors": pair_strain_energy_fn}


def born_stress_voigt(potential: Potential, conf: Configuration, nbrs: NeighborList):
    """σ^B (6,) in eV/Å³, positive = tensile (same sign as core.mechanics.born_stress)."""
    zero = jnp.zeros(6, conf.positions.dtype)
    return jax.grad(strain_energy_fn(potential, conf, nbrs))(zero) / conf.volume()


def _check(method: str, tangent_batch: int, who: str):
    if method not in _METHODS:
        raise ValueError(f"{who}: method must be one of {sorted(_METHODS)}, not {method!r}")
    if tangent_batch not in (1, 2, 3, 6):
        raise ValueError(f"{who}: tangent_batch must be 1, 2, 3 or 6, not {tangent_batch!r}")


def born_terms(potential: Potential, conf: Configuration, nbrs: NeighborList, method: str = "affine",
               tangent_batch: int = 1):
    """(σ^B (6,), C^B (6, 6)) in eV/Å³ by forward-over-reverse differentiation.

    The reverse pass (gradient) is linearised once; the 6 Voigt unit tangents are pushed
    through the linearisation `tangent_batch` at a time (1: one after the other, 6: all
    together, as vmap), giving the Hessian columns.  One at a time keeps the working set of a
    large model in cache: 256-atom DimeNet++ on CPU 7.9× one energy+forces call vs 10.9× with
    all six together; cheap pair/EAM potentials gain a little from batching (see
    docs/observables_solid.md).
    method: "affine" (positions and box deformed; any potential) or "pair_vectors" (see
    `pair_strain_energy_fn`; only for potentials that use nothing but `nbrs.vectors`).
    """
    _check(method, tangent_batch, "born_terms")
    zero = jnp.zeros(6, conf.positions.dtype)
    grad_u = jax.grad(_METHODS[method](potential, conf, nbrs))
    g, hvp = jax.linearize(grad_u, zero)
    hess = batched_map(hvp, jnp.eye(6, dtype=zero.dtype), tangent_batch)
    v = conf.volume()
    return g / v, 0.5 * (hess + hess.T) / v


def born_contraction(potential: Potential, conf: Configuration, nbrs: NeighborList, ct_stress, ct_tensor,
                     method: str = "affine", tangent_batch: int = 1, support=None):
    """Σ_I a_I σ^B_I + Σ_IJ G_IJ C^B_IJ for fixed a (6,) and G (6, 6), in the units of the
    cotangents times eV/Å³ — the quantity whose parameter gradient DiffTRe needs.

    Equal to contracting `born_terms`, but cheaper to differentiate w.r.t. the potential's
    parameters: with sym(G) = Σ_k λ_k v_k v_kᵀ, Σ G_IJ H_IJ = Σ_k λ_k ∂²U(s v_k)/∂s² — (up to) six
    second directional derivatives (forward over forward), whose reverse-mode gradient is
    lighter than reverse mode through the linearised strain gradient (a third derivative
    through the potential's own reverse pass): 1.4× for the 256-atom DimeNet++ gradient pass
    (benchmarks/bench_exp_update.py --compare-contraction).  G and a are data (cotangents), not traced.
    The directions are evaluated `tangent_batch` at a time (as in `born_terms`).
    support: the Voigt indices outside which a and G are zero by construction (an observable that
    reads only some entries of C, e.g. hexagonal symmetry never reads C66), or None for all six;
    only len(support) directions are then taken (see `_cotangent_split`).
    """
    _check(method, tangent_batch, "born_contraction")
    u = _METHODS[method](potential, conf, nbrs)
    dtype = conf.positions.dtype
    a, lam, vecs = _cotangent_split(ct_stress, ct_tensor, dtype, support, tangent_batch)
    first = jax.jvp(u, (jnp.zeros(6, dtype),), (a,))[1]

    def curvature(v):  # vᵀ H v
        return _directional_derivatives(u, v)[1]

    # rematerialised, for callers that take reverse mode through this (the DiffTRe engine uses
    # born_contraction_grad instead): 256-atom DimeNet++, K = 27, E_cap = 5648, 2.2 s instead of
    # 8.3 s with the six directions' residuals stacked
    second = jnp.sum(lam * batched_map(jax.checkpoint(curvature), vecs.T, tangent_batch))
    return (first + second) / conf.volume()


def _cotangent_split(ct_stress, ct_tensor, dtype, support=None, tangent_batch: int = 1):
    """(a, λ, V): the stress cotangent and the eigenpairs of sym(G) (V's columns), held fixed
    (data, not traced).

    With `support` (Voigt indices; a and G vanish outside it), sym(G) is split on the support's
    block only, so there are len(support) directions, each zero outside the support: hexagonal
    constants never read C66 (Voigt 6), so 5 directions instead of 6.  Directions are padded with
    zero vectors (λ = 0) to a multiple of `tangent_batch`; those contribute exactly nothing.
    """
    a = jax.lax.stop_gradient(jnp.asarray(ct_stress, dtype))
    g = jax.lax.stop_gradient(jnp.asarray(ct_tensor, dtype))
    g = 0.5 * (g + g.T)
    idx = np.arange(6) if support is None else np.asarray(sorted(support), dtype=int)
    if idx.size == 0 or idx.min() < 0 or idx.max() > 5 or len(set(idx.tolist())) != idx.size:
        raise ValueError(f"Born contraction: support must be distinct Voigt indices 0..5, not {support!r}")
    if idx.size == 6:
        lam, vecs = jnp.linalg.eigh(g)
    else:
        lam, sub = jnp.linalg.eigh(g[np.ix_(idx, idx)])
        vecs = jnp.zeros((6, idx.size), dtype).at[idx].set(sub)
    pad = -idx.size % tangent_batch
    if pad:
        lam = jnp.concatenate([lam, jnp.zeros(pad, lam.dtype)])
        vecs = jnp.concatenate([vecs, jnp.zeros((6, pad), vecs.dtype)], axis=1)
    return a, lam, vecs


def _directional_derivatives(u, v):
    """(∂U(s v)/∂s, ∂²U(s v)/∂s²) at s = 0, from one nested jvp (forward over forward)."""
    dtype = v.dtype
    return jax.jvp(lambda s: jax.jvp(u, (s * v,), (v,))[1], (jnp.zeros((), dtype),), (jnp.ones((), dtype),))


def born_contraction_grad(potential: Potential, conf: Configuration, nbrs: NeighborList, ct_stress, ct_tensor,
                          method: str = "affine", tangent_batch: int = 1, support=None):
    """∇_θ `born_contraction(...)` for the potential's parameters (a pytree like
    `eqx.partition(potential, eqx.is_inexact_array)[0]`), assembled one strain direction (or
    `tangent_batch` directions) per loop step as ∇_θ[c_k ∂U(s v_k)/∂s + λ_k ∂²U(s v_k)/∂s²]
    with c = Vᵀa: the stress term comes from the same nested jvps (5 % cheaper than its own
    pass).  Same numbers as reverse mode through `born_contraction`, but a loop of gradients
    keeps one direction's intermediates alive at a time, where reverse mode through the loop
    keeps (or, rematerialised, recomputes into) all six: 256-atom DimeNet++, one frame, K = 27,
    E_cap = 9581, 2.6 s vs 7.5 s rematerialised (docs/training_modes.md).  One direction at a
    time is fastest on CPU (K = 46: 2.8 s; two or three at a time under vmap 6.4–6.5 s).
    support: as in `born_contraction`; the cost is proportional to the number of directions
    (hexagonal constants: 5 instead of 6).
    """
    _check(method, tangent_batch, "born_contraction_grad")
    params, static = eqx.partition(potential, eqx.is_inexact_array)
    a, lam, vecs = _cotangent_split(ct_stress, ct_tensor, conf.positions.dtype, support, tangent_batch)
    c = vecs.T @ a  # orthonormal v_k: Σ a_I ∂U/∂η_I = Σ_k c_k ∂U(s v_k)/∂s
    inv_volume = 1.0 / jax.lax.stop_gradient(conf.volume())

    def derivatives(p, v):
        return _directional_derivatives(_METHODS[method](eqx.combine(p, static), conf, nbrs), v)

    def objective(p, chunk):  # Σ over one chunk of directions of c_k ∂_k U + λ_k ∂²_k U
        ck, lk, vk = chunk
        if tangent_batch == 1:
            d1, d2 = derivatives(p, vk[0])
            return (ck[0] * d1 + lk[0] * d2) * inv_volume
        d1, d2 = jax.vmap(lambda v: derivatives(p, v))(vk)
        return (ck @ d1 + lk @ d2) * inv_volume

    def step(acc, chunk):
        return jax.tree_util.tree_map(jnp.add, acc, jax.grad(objective)(params, chunk)), None

    n = lam.shape[0] // tangent_batch
    chunks = (c.reshape(n, tangent_batch), lam.reshape(n, tangent_batch), vecs.T.reshape(n, tangent_batch, 6))
    total, _ = jax.lax.scan(step, jax.tree_util.tree_map(jnp.zeros_like, params), chunks)
    return total

