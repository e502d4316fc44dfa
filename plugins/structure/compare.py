"""Compare a model curve with an experimental one (g(r), ADF, ...) on a common grid."""
from __future__ import annotations

from typing import Optional

import numpy as np


def curve_rms_deviation(x_model, y_model, x_exp, y_exp, r_range: Optional[tuple[float, float]] = None,
                        n_points: Optional[int] = None) -> float:
    """Root-mean-square of y_model − y_exp after linear interpolation onto a common grid.

    The grid is the overlap of both abscissae (intersected with `r_range` if given), sampled on
    `n_points` equally spaced points (default: the finer of the two spacings).  Neither curve is
    extrapolated: an empty overlap is an error.
    """
    xm, ym = _sorted(x_model, y_model, "model")
    xe, ye = _sorted(x_exp, y_exp, "experiment")
    lo, hi = max(xm[0], xe[0]), min(xm[-1], xe[-1])
    if r_range is not None:
        lo, hi = max(lo, float(r_range[0])), min(hi, float(r_range[1]))
    if not hi > lo:
        raise ValueError(f"curves do not overlap on the requested range (overlap [{lo:g}, {hi:g}])")
    if n_points is None:
        step = min(np.min(np.diff(xm)), np.min(np.diff(xe)))
        n_points = max(2, int(np.ceil((hi - lo) / step)) + 1)
    grid = np.linspace(lo, hi, n_points)
    diff = np.interp(grid, xm, ym) - np.interp(grid, xe, ye)
    return float(np.sqrt(np.mean(diff * diff)))


def _sorted(x, y, what):
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"{what} curve: x and y need the same length (>= 2), got {x.size} and {y.size}")
    order = np.argsort(x)
    x, y = x[order], y[order]
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"{what} curve: abscissae must be distinct")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"{what} curve contains NaN or inf")
    return x, y
