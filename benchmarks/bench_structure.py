"""Time per frame of RDF and ADF for 2048 atoms (liquid-like: jittered fcc at liquid-Ti density).

    python benchmarks/bench_structure.py [--frames 8] [--float32]

Prints, per observable: the neighbor-list rebuild (core, dense O(N²) candidate search) and the
observable itself on a prebuilt list, both after compilation, in ms per frame.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from ase.build import bulk

from fusepot.core import neighbors as nb
from fusepot.core.interfaces import Frame, StatePoint
from fusepot.core.system import Configuration
from fusepot.plugins.structure import ADF, RDF


def liquid_like_frames(n_frames: int, density: float = 0.0516, jitter: float = 0.35, dtype=jnp.float64, seed=0):
    """8×8×8 cubic fcc cells = 2048 atoms at `density` (1/Å³), Gaussian jitter (Å) per frame."""
    atoms = bulk("Ti", "fcc", a=(4 / density) ** (1 / 3), cubic=True).repeat(8)
    pos0, box = atoms.get_positions(), np.asarray(atoms.cell.array)
    rng = np.random.default_rng(seed)
    pos = np.stack([pos0 + rng.normal(0, jitter, pos0.shape) for _ in range(n_frames)])
    return jnp.asarray(pos, dtype), jnp.asarray(box, dtype)


def timed(fn, *args, repeat=3):
    jax.block_until_ready(fn(*args))  # compile
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--float32", action="store_true")
    args = ap.parse_args()
    if not args.float32:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float32 if args.float32 else jnp.float64
    pos, box = liquid_like_frames(args.frames, dtype=dtype)
    n = pos.shape[1]
    species = jnp.zeros(n, jnp.int32)
    print(f"{n} atoms, {args.frames} frames, {jnp.dtype(dtype).name}, backend {jax.default_backend()}, "
          f"{jax.device_count()} device(s)")

    def frame_at(k):
        return Frame(Configuration(pos[k], species, box), jnp.zeros_like(pos[k]), jnp.ones(n, dtype), StatePoint(1965.0))

    cases = [
        ("rdf smooth r_max=8 Å, 200 bins, σ=0.04 Å", RDF(0.0, 8.0, 200, smoothing=0.04)),
        ("rdf sharp  r_max=8 Å, 200 bins", RDF(0.0, 8.0, 200)),
        ("adf smooth cutoff 4 Å, 90 bins, σ=2°", ADF(4.0, 90, smoothing=2.0)),
        ("adf sharp  cutoff 4 Å, 90 bins", ADF(4.0, 90)),
    ]
    for label, obs in cases:
        nbrs = nb.allocate(pos[0], box, obs.neighbor_cutoff, skin=0.0)
        if isinstance(obs, ADF):
            obs = obs.sized_for(frame_at(0), nbrs)
        frames = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *[frame_at(k) for k in range(args.frames)])

        @jax.jit
        def rebuild(frames):
            return jax.lax.map(lambda f: nb.update(nbrs, f.conf.positions, f.conf.box, force=True).count, frames)

        @jax.jit
        def observe(frames):
            return jax.lax.map(lambda f: obs.per_frame(None, f, nbrs), frames)

        t_nb = timed(rebuild, frames) / args.frames
        t_obs = timed(observe, frames) / args.frames
        vals = observe(frames)
        assert bool(jnp.all(jnp.isfinite(vals))), "overflow/NaN in benchmark"
        extra = f", {obs.triplet_capacity} triplet slots" if isinstance(obs, ADF) else ""
        print(f"{label:45s} neighbor rebuild {1e3 * t_nb:8.1f} ms/frame   observable {1e3 * t_obs:8.1f} ms/frame   "
              f"({nbrs.capacity} pair slots{extra})")


if __name__ == "__main__":
    main()
