"""Block averaging: error bars for correlated time series (any observable)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockEstimate:
    mean: np.ndarray
    error: np.ndarray  # standard error of the mean from the spread of block means
    n_blocks: int


def block_average(series, n_blocks: int = 10, axis: int = 0) -> BlockEstimate:
    """Mean and standard error of `series` along `axis` from `n_blocks` contiguous blocks.

    Trailing samples that do not fill a block are dropped (they still count in the mean).
    """
    x = np.asarray(series, dtype=np.float64)
    x = np.moveaxis(x, axis, 0)
    n = x.shape[0]
    if n_blocks < 2:
        raise ValueError("block averaging needs at least 2 blocks")
    if n < n_blocks:
        raise ValueError(f"block averaging: {n} samples is fewer than {n_blocks} blocks")
    size = n // n_blocks
    blocks = x[: size * n_blocks].reshape((n_blocks, size) + x.shape[1:]).mean(axis=1)
    err = blocks.std(axis=0, ddof=1) / np.sqrt(n_blocks)
    return BlockEstimate(x.mean(axis=0), err, n_blocks)


def block_estimate(fn, per_frame_values, n_blocks: int = 10) -> BlockEstimate:
    """Error bar of a *nonlinear* estimator (e.g. a fluctuation formula).

    `fn(values_subset) -> estimate` is applied to the full series (the mean) and to each block;
    the error is the standard error of the block estimates.
    """
    leaves = per_frame_values if isinstance(per_frame_values, (list, tuple)) else [per_frame_values]
    n = np.asarray(leaves[0]).shape[0]
    if n < n_blocks:
        raise ValueError(f"block averaging: {n} frames is fewer than {n_blocks} blocks")
    size = n // n_blocks

    def sub(lo, hi):
        parts = [np.asarray(v)[lo:hi] for v in leaves]
        return fn(parts if isinstance(per_frame_values, (list, tuple)) else parts[0])

    full = np.asarray(sub(0, n), dtype=np.float64)
    blocks = np.stack([np.asarray(sub(b * size, (b + 1) * size), dtype=np.float64) for b in range(n_blocks)])
    return BlockEstimate(full, blocks.std(axis=0, ddof=1) / np.sqrt(n_blocks), n_blocks)
