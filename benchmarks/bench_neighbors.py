"""Neighbor-list rebuild time per frame for 2048 atoms: dense O(N²) search vs cell list.

    python benchmarks/bench_neighbors.py [--frames 4] [--float32] [--cutoffs 4 5.5 8]

Liquid-like frames (jittered fcc at liquid-Ti density, as in bench_structure.py); the jitted
`neighbors.update(..., force=True)` is timed after compilation, best of 3, in ms per frame.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fusepot.core import neighbors as nb

sys.path.insert(0, str(Path(__file__).parent))
from bench_structure import liquid_like_frames  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--float32", action="store_true")
    ap.add_argument("--cutoffs", type=float, nargs="+", default=[4.0, 5.5, 8.0])
    ap.add_argument("--skin", type=float, default=0.0)
    args = ap.parse_args()
    if not args.float32:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float32 if args.float32 else jnp.float64
    pos, box = liquid_like_frames(args.frames, dtype=dtype)
    rebuild = jax.jit(lambda n, frames: jax.lax.map(lambda p: nb.update(n, p, box, force=True).count, frames))
    print(f"{pos.shape[1]} atoms, {args.frames} frames, {jax.devices()[0].platform}, {jnp.dtype(dtype).name}")
    for cutoff in args.cutoffs:
        row = []
        for cell_list in (False, True):
            n = nb.allocate(pos[0], box, cutoff, skin=args.skin, cell_list=cell_list)
            jax.block_until_ready(rebuild(n, pos))
            best = np.inf
            for _ in range(3):
                t = time.perf_counter()
                jax.block_until_ready(rebuild(n, pos))
                best = min(best, time.perf_counter() - t)
            desc = (f"cells {n.cells} k={n.cell_reach} M={n.cell_capacity}" if cell_list else "dense")
            row.append(f"{desc}: {1e3 * best / args.frames:8.1f} ms/frame")
        print(f"r = {cutoff + args.skin:4.1f} Å  " + "   ".join(row))


if __name__ == "__main__":
    main()
