"""Histograms that can be differentiated: sharp counting or Gaussian-smoothed binning.

Smoothed mode replaces each sample x_p by a normal density of standard deviation `width` and
integrates it exactly over every bin,

    H_k = Σ_p w_p · ½ [erf((e_{k+1} − x_p)/(√2 width)) − erf((e_k − x_p)/(√2 width))],

so H is smooth in the samples and Σ_k H_k = Σ_p w_p up to mass that leaves the range.  Only the
bins within `TAIL` widths of a sample are touched (a fixed window per sample), so memory is
O(samples · window), never O(samples · bins).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

#: samples contribute to bins within this many Gaussian widths (erfc(5/√2) ≈ 6e-7 of the mass is dropped)
TAIL = 5.0


def window_size(bin_width: float, width: float) -> int:
    """Bins on each side of a sample's own bin that a smoothed sample may reach."""
    return int(math.ceil(TAIL * width / bin_width)) + 1


def histogram(x, weights, lo: float, hi: float, n_bins: int, width: float = 0.0, reflect: bool = False):
    """Weighted histogram of `x` (any shape) on `n_bins` equal bins over [lo, hi].

    width == 0: sharp counting, bin k holds lo + k·Δ <= x < lo + (k+1)·Δ; x == hi goes to the last
    bin; samples outside [lo, hi] are ignored.  width > 0: Gaussian-smoothed (see module doc).
    reflect: mirror the Gaussians at lo and hi (for variables confined to [lo, hi], e.g. an angle
    in [0°, 180°]) so that no probability leaks out of the range.
    """
    x = jnp.ravel(x)
    w = jnp.ravel(jnp.asarray(weights, x.dtype))
    dx = (hi - lo) / n_bins
    if width <= 0.0:
        k = jnp.floor((x - lo) / dx).astype(jnp.int32)
        k = jnp.where(x == hi, n_bins - 1, k)
        ok = (k >= 0) & (k < n_bins)
        return jax.ops.segment_sum(jnp.where(ok, w, 0.0), jnp.clip(k, 0, n_bins - 1), num_segments=n_bins)

    return _smoothed(x, w, lo, dx, n_bins, width, reflect)


def _smoothed(x, w, lo, dx, n_bins, width, reflect):
    half = window_size(dx, width)
    offsets = jnp.arange(-half, half + 2, dtype=jnp.int32)  # the 2·half + 2 edges of the window
    k0 = jnp.floor((x - lo) / dx).astype(jnp.int32)
    edges = lo + (k0[:, None] + offsets[None, :]).astype(x.dtype) * dx  # (P, window + 1)
    cdf = jax.scipy.special.erf((edges - x[:, None]) * (1.0 / (math.sqrt(2.0) * width)))
    mass = 0.5 * (cdf[:, 1:] - cdf[:, :-1]) * w[:, None]  # one erf per edge, shared by neighbouring bins
    k = k0[:, None] + offsets[None, :-1]
    if reflect:
        # mirror images about lo and hi land in the mirrored bins (lo and hi are bin edges), so fold
        # the overhang back instead of evaluating mirrored Gaussians
        k = jnp.where(k < 0, -1 - k, k)
        k = jnp.where(k >= n_bins, 2 * n_bins - 1 - k, k)
    ok = (k >= 0) & (k < n_bins)
    vals = jnp.where(ok, mass, 0.0)
    return jax.ops.segment_sum(vals.ravel(), jnp.clip(k, 0, n_bins - 1).ravel(), num_segments=n_bins)
