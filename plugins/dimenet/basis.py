"""Radial and spherical bases of DimeNet (Gasteiger, Groß & Günnemann, ICLR 2020, eqs. 7-8).

All functions take the distance already scaled by the cutoff, x = r / r_c in (0, 1).
The spherical Bessel zeros are computed once on the host (scipy); everything else is jax.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


def envelope(x, p: int = 6):
    """Polynomial cutoff u(x) = 1 − (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) − p(p+1)/2 x^(p+2).

    u(1) = u'(1) = u''(1) = 0, so energies and forces go smoothly to zero at the cutoff.
    """
    xp = x**p
    u = 1.0 - 0.5 * (p + 1) * (p + 2) * xp + p * (p + 2) * xp * x - 0.5 * p * (p + 1) * xp * x * x
    return jnp.where(x < 1.0, u, 0.0)


def bessel_rbf(x, frequencies, p: int = 6):
    """Radial basis e_n(x) = u(x) sin(f_n x) / x, f_n initialised to nπ; shape x.shape + (R,)."""
    xs = x[..., None]
    return (envelope(x, p) / x)[..., None] * jnp.sin(frequencies * xs)


@functools.lru_cache(maxsize=None)
def spherical_bessel_zeros(n_spherical: int, n_radial: int) -> np.ndarray:
    """z[l, n]: the (n+1)-th positive zero of j_l, for l < n_spherical (host-side, scipy)."""
    from scipy.optimize import brentq
    from scipy.special import spherical_jn

    zeros = np.zeros((n_spherical, n_radial))
    grid = np.linspace(1e-3, math.pi * (n_radial + n_spherical + 2), 20000)
    for l in range(n_spherical):
        v = spherical_jn(l, grid)
        idx = np.nonzero(np.sign(v[:-1]) * np.sign(v[1:]) < 0)[0][:n_radial]
        if len(idx) < n_radial:
            raise RuntimeError(f"found only {len(idx)} zeros of j_{l}")
        zeros[l] = [brentq(lambda t: spherical_jn(l, t), grid[i], grid[i + 1], xtol=1e-14) for i in idx]
    return zeros


@functools.lru_cache(maxsize=None)
def spherical_bessel_normalisers(n_spherical: int, n_radial: int) -> np.ndarray:
    """N[l, n] = sqrt(2) / |j_{l+1}(z_ln)|, which makes sqrt(x²)·N j_l(z_ln x) orthonormal on [0, 1]."""
    from scipy.special import spherical_jn

    z = spherical_bessel_zeros(n_spherical, n_radial)
    return np.stack([np.sqrt(2.0) / np.abs(spherical_jn(l + 1, z[l])) for l in range(n_spherical)])


def _jl_closed(l_max: int, x):
    """j_0..j_{l_max} by the closed form (upward recurrence from sin and cos); accurate for x ≳ l."""
    s, c = jnp.sin(x), jnp.cos(x)
    inv = 1.0 / x
    out = [s * inv]
    if l_max >= 1:
        out.append(s * inv * inv - c * inv)
    for l in range(1, l_max):
        out.append((2 * l + 1) * inv * out[l] - out[l - 1])
    return out


def _jl_series(l: int, x, n_terms: int = 12):
    """Power series j_l(x) = x^l Σ_k (−x²/2)^k / (k! (2l+2k+1)!!), accurate for x ≲ l + 1."""
    dfact = float(np.prod(np.arange(2 * l + 1, 0, -2)))
    h = -0.5 * x * x
    acc = jnp.ones_like(x)
    for k in range(n_terms, 0, -1):  # Horner
        acc = 1.0 + acc * h / (k * (2 * l + 2 * k + 1))
    return x**l * acc / dfact


def spherical_jl(l: int, x):
    """j_l(x) for x > 0, stable in float32 (power series below x = l, closed form above).

    Each branch sees only inputs in its own range (double `where`), so gradients stay finite.
    """
    if l == 0:
        return jnp.sin(x) / x
    small = x < float(l)
    xs = jnp.where(small, x, 0.5 * l)
    xl = jnp.where(small, float(l) + 1.0, x)
    return jnp.where(small, _jl_series(l, xs), _jl_closed(l, xl)[l])


def _matmul_operand(matrix: np.ndarray, dtype):
    """A host-side constant matrix as the right operand of a matmul, behind an optimization
    barrier: as a compile-time constant XLA rewrites the product into broadcast multiply-adds
    and fuses them into every consumer (a gather into the slot layout then recomputes them per
    slot: ~20x the cost of the matmul on CPU, measured for the harmonic features)."""
    return jax.lax.optimization_barrier(jnp.asarray(matrix, dtype))


@functools.lru_cache(maxsize=None)
def spherical_radial_chebyshev(n_spherical: int, n_radial: int, degree: int = 35) -> np.ndarray:
    """(degree + 1, L·R): Chebyshev coefficients, in t = 2x − 1, of g_ln(x) = N_ln j_l(z_ln x)
    on x ∈ [0, 1] (host-side, float64, interpolation at Chebyshev points).

    The g_ln are entire functions whose highest frequency is z_ln ≲ 25 for the default sizes,
    so their Chebyshev coefficients fall off super-exponentially: degree 35 reproduces them to
    ~1e-12 absolute (checked here on a dense grid against scipy; an error above 1e-10 × max|g|
    raises), i.e. to float64 rounding and far below float32's."""
    from numpy.polynomial import chebyshev
    from scipy.special import spherical_jn

    z = spherical_bessel_zeros(n_spherical, n_radial)
    norm = spherical_bessel_normalisers(n_spherical, n_radial)
    cols, exact = [], []
    grid = np.linspace(0.0, 1.0, 4001)
    for l in range(n_spherical):
        for n in range(n_radial):
            cols.append(chebyshev.chebinterpolate(
                lambda t, l=l, n=n: norm[l, n] * spherical_jn(l, z[l, n] * 0.5 * (t + 1.0)), degree))
            exact.append(norm[l, n] * spherical_jn(l, z[l, n] * grid))
    coef, exact = np.stack(cols, axis=1), np.stack(exact, axis=1)
    err = np.max(np.abs(chebyshev.chebvander(2.0 * grid - 1.0, degree) @ coef - exact))
    if err > 1e-10 * np.max(np.abs(exact)):
        raise AssertionError(f"Chebyshev degree {degree} reproduces the spherical basis only to {err:.1e}")
    return coef


def spherical_radial(x, n_spherical: int, n_radial: int, p: int = 6):
    """Radial part of the spherical basis: N_ln j_l(z_ln x) u(x); shape x.shape + (L, R).

    Evaluated as a Chebyshev series (`spherical_radial_chebyshev`, exact to float64 rounding)
    by the three-term recurrence and one matmul with the coefficient matrix: on CPU this costs a
    fraction of the 2·L·R sines and cosines (and power series) of the closed forms, forward and
    backward.  `spherical_jl` keeps the closed forms (tests compare the two)."""
    coef = spherical_radial_chebyshev(n_spherical, n_radial)
    w = _matmul_operand(coef, x.dtype)
    t = 2.0 * x - 1.0
    cheb = [jnp.ones_like(t), t]
    for _ in range(2, coef.shape[0]):
        cheb.append(2.0 * t * cheb[-1] - cheb[-2])
    vals = jnp.stack(cheb, axis=-1) @ w
    return (vals * envelope(x, p)[..., None]).reshape(x.shape + (n_spherical, n_radial))


def spherical_radial_closed_form(x, n_spherical: int, n_radial: int, p: int = 6):
    """`spherical_radial` from the closed forms of j_l (`spherical_jl`); the reference in tests."""
    z = spherical_bessel_zeros(n_spherical, n_radial)
    norm = jnp.asarray(spherical_bessel_normalisers(n_spherical, n_radial), x.dtype)
    xs = x[..., None]
    vals = jnp.stack([spherical_jl(l, jnp.asarray(z[l], x.dtype) * xs) for l in range(n_spherical)], axis=-2)
    return norm * vals * envelope(x, p)[..., None, None]


def legendre_harmonics(cos_angle, n_spherical: int):
    """Y_l^0(α) = sqrt((2l+1)/4π) P_l(cos α) for l < n_spherical; shape cos.shape + (L,)."""
    p = [jnp.ones_like(cos_angle), cos_angle]
    for l in range(1, n_spherical - 1):
        p.append(((2 * l + 1) * cos_angle * p[l] - l * p[l - 1]) / (l + 1))
    norms = [math.sqrt((2 * l + 1) / (4 * math.pi)) for l in range(n_spherical)]
    return jnp.stack([norms[l] * p[l] for l in range(n_spherical)], axis=-1)


@functools.lru_cache(maxsize=None)
def tensor_power_terms(n_powers: int) -> tuple:
    """((a, b, c), multinomial k!/(a! b! c!)) for a + b + c = k < n_powers, grouped by k (host-side).

    (u·v)^k = Σ_{a+b+c=k} k!/(a! b! c!) (u_x v_x)^a (u_y v_y)^b (u_z v_z)^c, so the k-th power of
    the cosine of a triplet factorises into per-edge monomials: C(k+2, 2) terms, 84 for k < 7.
    """
    out = []
    for k in range(n_powers):
        out.append(tuple(((a, b, k - a - b), math.factorial(k) // (math.factorial(a) * math.factorial(b)
                                                                   * math.factorial(k - a - b)))
                         for a in range(k, -1, -1) for b in range(k - a, -1, -1)))
    return tuple(out)


def unit_monomials(u, n_powers: int):
    """Per-vector monomials u_x^a u_y^b u_z^c for a + b + c = k < n_powers: shape u.shape[:-1] + (M,),
    ordered as `tensor_power_terms` (k major)."""
    comps = []
    for c in range(3):
        p = [jnp.ones_like(u[..., c]), u[..., c]]
        for _ in range(2, n_powers):
            p.append(p[-1] * u[..., c])
        comps.append(p)
    return jnp.stack([comps[0][a] * comps[1][b] * comps[2][c]
                      for terms in tensor_power_terms(n_powers) for (a, b, c), _ in terms], axis=-1)


@functools.lru_cache(maxsize=None)
def legendre_sphere_factors(n_spherical: int) -> tuple:
    """W_l (C(l+2, 2), 2l+1) for l < n_spherical with P_l(u·v) = (m_l(u) W_l)·(m_l(v) W_l) for
    unit vectors u, v, where m_l are the degree-l monomials of `unit_monomials` (host-side).

    On the unit sphere P_l(u·v) is a degree-l form in u and in v (lower powers of u·v carry
    factors |u|²|v|² = 1), so it is a symmetric matrix K_l between degree-l monomials; by the
    addition theorem K_l has rank 2l+1 (its factors span the real spherical harmonics of degree
    l).  K_l is fitted exactly (least squares on random unit vectors, float64) and factorised
    by its eigenvectors: 2l+1 features per edge instead of C(l+2, 2) monomials, 49 instead of
    84 for l < 7.
    """
    rng = np.random.default_rng(12345)
    out = []
    for l, terms in enumerate(tensor_power_terms(n_spherical)):
        c = len(terms)
        n_samples = 3 * c * c + 64
        u = rng.normal(size=(n_samples, 3))
        v = rng.normal(size=(n_samples, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        expo = np.array([abc for abc, _ in terms])  # (c, 3)
        mu = np.prod(u[:, None, :] ** expo[None], axis=-1)  # (S, c)
        mv = np.prod(v[:, None, :] ** expo[None], axis=-1)
        target = np.polynomial.legendre.legval(np.sum(u * v, axis=1), np.eye(n_spherical)[l])
        design = (mu[:, :, None] * mv[:, None, :]).reshape(n_samples, c * c)
        k = np.linalg.lstsq(design, target, rcond=None)[0].reshape(c, c)
        k = 0.5 * (k + k.T)
        lam, vec = np.linalg.eigh(k)
        keep = np.argsort(lam)[::-1][:2 * l + 1]
        if np.any(lam[keep] <= 1e-9 * lam.max()) or (c > 2 * l + 1 and np.max(np.abs(np.delete(lam, keep))) > 1e-8):
            raise AssertionError(f"P_{l} on the sphere did not factorise with rank {2 * l + 1}: eigenvalues {lam}")
        w = vec[:, keep] * np.sqrt(lam[keep])
        resid = np.max(np.abs(np.sum((mu @ w) * (mv @ w), axis=1) - target))
        if resid > 1e-9:
            raise AssertionError(f"P_{l} factorisation residual {resid:.2e}")
        out.append(w)
    return tuple(out)


@functools.lru_cache(maxsize=None)
def harmonic_feature_matrix(n_spherical: int) -> np.ndarray:
    """(M, F): the factors W_l of `legendre_sphere_factors` placed block-diagonally, mapping
    all monomials of `unit_monomials` (M = 84 for n_spherical = 7) to all features (F = 49)."""
    factors = legendre_sphere_factors(n_spherical)
    out = np.zeros((sum(w.shape[0] for w in factors), sum(w.shape[1] for w in factors)))
    r = c = 0
    for w in factors:
        out[r:r + w.shape[0], c:c + w.shape[1]] = w
        r, c = r + w.shape[0], c + w.shape[1]
    return out


def harmonic_features(u, n_spherical: int):
    """Per-vector features f (…, Σ_l (2l+1)), grouped by l, with P_l(u·v) = f_l(u)·f_l(v) for
    unit vectors (`legendre_sphere_factors`); 49 features for n_spherical = 7.  One matmul of the
    monomials with the block-diagonal factor matrix."""
    mono = unit_monomials(u, n_spherical)
    return mono @ _matmul_operand(harmonic_feature_matrix(n_spherical), mono.dtype)
