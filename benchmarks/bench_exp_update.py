"""Cost of one EXP (DiffTRe) update at the titanium paper's settings: sampling vs reweighting gradient.

Paper settings (defaults): 256-atom hcp Ti (orthohexagonal cell ×(4,4,4), a = 2.951 Å,
c = 4.684 Å), DimeNet++ `dimenet_pp` with the plugin's default (paper) hyperparameters, float32,
NVT Langevin (4 /ps) at 323 K, dt = 0.5 fs, a frame every 0.1 ps (200 steps), 700 frames per
state point, targets: hexagonal elastic constants (C11, C12, C13, C33, C44) + pressure with the
paper's values and weights (docs/training_modes.md).  Goal: gradient ≤ 20 % of sampling.

Both costs are linear in the number of frames, so they are measured per frame on `--frames`
frames and extrapolated to `--paper-frames` (700):
  1. sampling: `nvt_langevin` production of K frames after a warm-up call (the warm-up call
     compiles the chunk; the timed call continues it with restart=carry);
  2. reweighting gradient: `difftre.reweight(potential, traj, targets, with_grad=True)` on the
     same frames, second call (the first compiles).  It contains a forward pass over all frames
     (energies, pressure, Born terms) and the gradient pass; the forward pass alone
     (`difftre.evaluate_frames`) is timed too, so the split is printed.
The trainer also recomputes U_ref on the new frames right after sampling (one energy per
frame); it is timed and printed separately (negligible).

Memory: the gradient pass differentiates the Born terms (a third derivative through DimeNet++)
for `--batch-size` frames at once (vmap); at 256 atoms, float32, batch_size 8 (the trainer's
default `reweight_batch`) XLA asked for ~41 GB on CPU, so on a small machine use
`--batch-size 1` (~5 GB).  Measured figures: docs/training_modes.md ("Speed").

The untrained DimeNet++ has random O(eV) per-atom energies and no short-range repulsion: at
323 K the lattice collapses within a few hundred steps.  As in bench_dimenet_speed.py the
energy is scaled down, U → 0.01·U (the plugin's `energy_scale`, same compute cost), so the run
stays a thermal solid; the output says so.

    python benchmarks/bench_exp_update.py [--frames 8] [--steps-per-frame 200] [--atoms-reps 4]
        [--dtype float32] [--batch-size 8] [--born-method affine|pair_vectors] [--compare-born]
        [--compare-contraction] [--compare-reverse]

`--compare-contraction` also times the generic gradient contraction (reverse mode through the
full per-frame Born terms, the path before `ElasticConstants.contract`) in the same run;
`--compare-reverse` times reverse mode through `ElasticConstants.contract` (the path before
`ElasticConstants.contract_grad`, which sums the six directions' gradients in a loop).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import ase.build
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from fusepot.core import difftre
from fusepot.core import neighbors as nb
from fusepot.core.interfaces import Observable, StatePoint
from fusepot.core.plugins import BuildContext, get_plugin_manager
from fusepot.core.system import from_ase
from fusepot.plugins.dimenet.graph import host_counts
from fusepot.plugins.solid.elastic import ElasticConstants

TEMPERATURE = 323.0
TIMESTEP_FS = 0.5
PAPER_FRAMES = 700
# the titanium paper's targets, in its unit and weights (docs/training_modes.md)
PRESSURE = dict(value=0.0, unit="kJ/mol/nm^3", weight=1.0e-9)
ELASTIC = dict(value=[105929.0, 52212.0, 41071.0, 114722.0, 30592.0], unit="kJ/mol/nm^3", weight=1.0e-10)


def titanium(reps: int, dtype):
    atoms = ase.build.bulk("Ti", "hcp", a=2.951, c=4.684, orthorhombic=True).repeat((reps, reps, reps))
    return from_ase(atoms, dtype=dtype)


class FullContraction(ElasticConstants):
    """The elastic observable with the generic DiffTRe contraction (reverse mode through the full
    per-frame Born terms) instead of its own directional-derivative one: the previous path,
    timed side by side with `--compare-contraction`."""

    def contract(self, potential, frame, nbrs, cotangent):
        return Observable.contract(self, potential, frame, nbrs, cotangent)


class ReverseThroughContraction(ElasticConstants):
    """The elastic observable without its own `contract_grad`: the engine takes reverse mode
    through `contract` (rematerialised six directions) as before, timed side by side with
    `--compare-reverse`."""

    contract_grad = Observable.contract_grad


def build_targets(born_method: str, full_contraction: bool = False, reverse: bool = False):
    pm = get_plugin_manager()
    el = pm.build("observable", "elastic_constants", {"symmetry": "hexagonal", "born_method": born_method},
                  BuildContext(species=["Ti"]))
    if full_contraction or reverse:
        cls = FullContraction if full_contraction else ReverseThroughContraction
        el = cls(symmetry=el.symmetry, full_format=el.full_format, kinetic=el.kinetic, born_method=el.born_method)
    p = pm.build("observable", "pressure", {}, BuildContext(species=["Ti"]))
    return [difftre.Target("pressure", p, **PRESSURE), difftre.Target("elastic_constants", el, **ELASTIC)]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree_util.tree_leaves(out))
    return out, time.perf_counter() - t0


def sample(pot, conf, masses, dtype, frames, spf, eq_steps, seed=1):
    ens = get_plugin_manager().build(
        "ensemble", "nvt_langevin",
        {"timestep_fs": TIMESTEP_FS, "friction_per_ps": 4.0, "equilibration_ps": eq_steps * TIMESTEP_FS * 1e-3,
         "production_ps": frames * spf * TIMESTEP_FS * 1e-3, "sample_every_ps": spf * TIMESTEP_FS * 1e-3,
         "chunk_frames": frames},
        BuildContext(species=["Ti"], dtype=dtype))
    sp = StatePoint(dtype(TEMPERATURE))
    key = jax.random.PRNGKey(seed)
    (_, carry), t_warm = timed(lambda: ens.sample(pot, conf, masses, sp, key))  # compile + warm-up + K frames
    caps = lambda c: (c.potential.max_neighbors, c.potential.edge_capacity, c.nbrs.capacity)
    for _ in range(3):  # a buffer growth inside the timed call recompiles: time a call without one
        before = caps(carry)
        (traj, carry), t = timed(lambda: ens.sample(carry.potential, conf, masses, sp, key, restart=carry))
        if caps(carry) == before:
            break
        print(f"  (buffers grew during the timed call {before} -> {caps(carry)}: recompiled, timing again)")
    return traj, carry, t, t_warm


def time_reweight(pot, traj, targets, batch_size, templates):
    """(forward-only seconds, reweight-with-grad seconds, compile seconds, result), second calls."""
    obs = {t.name: t.observable for t in targets}
    _, t_fc = timed(lambda: difftre.evaluate_frames(pot, traj, obs, templates, batch_size)[:2])
    _, t_f = timed(lambda: difftre.evaluate_frames(pot, traj, obs, templates, batch_size)[:2])
    grad_leaves = lambda r: jax.tree_util.tree_leaves(eqx.filter(r.grad, eqx.is_array))
    _, t_gc = timed(lambda: grad_leaves(difftre.reweight(pot, traj, targets, with_grad=True, templates=templates,
                                                         batch_size=batch_size, n_blocks=0)))
    t0 = time.perf_counter()
    res = difftre.reweight(pot, traj, targets, with_grad=True, templates=templates, batch_size=batch_size, n_blocks=0)
    jax.block_until_ready(grad_leaves(res))
    t_g = time.perf_counter() - t0
    return t_f, t_g, t_fc + t_gc, res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=8,
                    help="frames measured (costs are extrapolated linearly); keep it a multiple of --batch-size: "
                         "the gradient pass pads the last chunk to batch_size frames")
    ap.add_argument("--steps-per-frame", type=int, default=200, help="MD steps per frame (paper: 0.1 ps / 0.5 fs)")
    ap.add_argument("--atoms-reps", type=int, default=4, help="orthohexagonal cell repetitions (4 → 256 atoms)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--batch-size", type=int, default=8, help="difftre reweight batch_size (trainer.reweight_batch)")
    ap.add_argument("--born-method", choices=["affine", "pair_vectors"], default="affine")
    ap.add_argument("--compare-born", action="store_true", help="also time the other born_method")
    ap.add_argument("--compare-contraction", action="store_true",
                    help="also time the generic gradient contraction (reverse mode through the full Born terms)")
    ap.add_argument("--compare-reverse", action="store_true",
                    help="also time the gradient by reverse mode through the observable's contraction (the path "
                         "before `ElasticConstants.contract_grad`)")
    ap.add_argument("--equilibration-steps", type=int, default=200, help="warm-up steps before the first call's frames")
    ap.add_argument("--energy-scale", type=float, default=0.01, help="U → s·U for the untrained model (same cost)")
    ap.add_argument("--paper-frames", type=int, default=PAPER_FRAMES)
    ap.add_argument("--paper-steps-per-frame", type=int, default=200,
                    help="sampling cost per frame is extrapolated to this many MD steps (linear in steps)")
    args = ap.parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if args.frames % args.batch_size:
        print(f"WARNING: --frames {args.frames} is not a multiple of --batch-size {args.batch_size}: the gradient pass "
              f"pads to {-(-args.frames // args.batch_size) * args.batch_size} frames, so its per-frame cost is "
              f"overestimated (at {args.paper_frames} frames the padding is negligible)")
    dtype = jnp.float32 if args.dtype == "float32" else jnp.float64

    print(f"jax {jax.__version__}, backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (machine may be shared)")
    conf, masses = titanium(args.atoms_reps, dtype)
    pot = get_plugin_manager().build("potential", "dimenet_pp", {"energy_scale": args.energy_scale},
                                     BuildContext(species=["Ti"], dtype=dtype))
    pot = pot.sized_for(conf, nb.allocate(conf.positions, conf.box, pot.cutoff, 0.5), margin=1.3)
    print(f"system: {conf.n_atoms} atoms hcp Ti, {args.dtype}, DimeNet++ default (paper) hyperparameters, "
          f"ENERGY SCALED U -> {args.energy_scale:g}*U (untrained model; same compute cost)")
    print(f"MD: nvt_langevin 4/ps, {TEMPERATURE:g} K, dt {TIMESTEP_FS} fs, {args.steps_per_frame} steps/frame, "
          f"{args.frames} frames; reweight batch_size {args.batch_size}")

    traj, carry, t_md, t_md_warm = sample(pot, conf, masses, dtype, args.frames, args.steps_per_frame,
                                          args.equilibration_steps)
    pot = carry.potential
    counts = lambda c: host_counts(c, nb.allocate(c.positions, c.box, pot.cutoff, 0.5), pot.cutoff)
    (lat_e, lat_k), (last_e, last_k) = counts(conf), counts(traj.frame(traj.n_frames - 1).conf)
    print(f"DimeNet++ capacities after sampling: K = {pot.max_neighbors}, E_cap = {pot.edge_capacity} (sized for the "
          f"lattice, {lat_e} edges and degree {lat_k}, with margin 1.3, grown when frames overflowed; the last frame "
          f"has {last_e} edges, largest degree {last_k})")
    ok = bool(np.all(np.isfinite(np.asarray(traj.positions))))
    print(f"sampling: {t_md:.2f} s for {args.frames} frames (first call incl. compile + warm-up {t_md_warm:.1f} s); "
          f"final U = {float(traj.ref_energy[-1]):.3f} eV, finite = {ok}")

    # as the trainer: U_ref recomputed by the reweighting code path right after sampling
    (u, _, templates), _ = timed(lambda: difftre.evaluate_frames(pot, traj, {}, None, args.batch_size))
    (u, _, _), t_uref = timed(lambda: difftre.evaluate_frames(pot, traj, {}, templates, args.batch_size))
    traj = eqx.tree_at(lambda t: t.ref_energy, traj, u)

    methods = [(args.born_method, False)] + ([(m, False) for m in ("affine", "pair_vectors") if m != args.born_method]
                                             if args.compare_born else [])
    methods = [(m, full, False) for m, full in methods]
    if args.compare_contraction:
        methods += [(m, True, False) for m, _, _ in methods]
    if args.compare_reverse:
        methods += [(args.born_method, False, True)]
    k, n = args.frames, args.paper_frames
    md_step = t_md / (k * args.steps_per_frame)
    md_pf = md_step * args.paper_steps_per_frame  # sampling seconds per paper frame
    t_md = md_pf * k  # sampling seconds for k paper frames (= measured when steps_per_frame is the paper's)
    print(f"MD: {md_step * 1e3:.1f} ms/step measured; sampling per frame = {args.paper_steps_per_frame} steps x that"
          + ("" if args.steps_per_frame == args.paper_steps_per_frame else
             f" (EXTRAPOLATED from {args.steps_per_frame} measured steps/frame, linear in steps)"))
    print(f"\n{'':28s}{'s/frame':>10s}{f'{n} frames (s)':>16s}{'/ sampling':>12s}")
    print(f"{'sampling (MD)':28s}{md_pf:10.3f}{md_pf * n:16.1f}{1.0:12.3f}")
    print(f"{'U_ref recompute':28s}{t_uref / k:10.3f}{t_uref / k * n:16.1f}{t_uref / t_md:12.3f}")
    for m, full, reverse in methods:
        targets = build_targets(m, full, reverse)
        m = m + (", full contraction" if full else "") + (", reverse through contract" if reverse else "")
        t_f, t_g, t_c, res = time_reweight(pot, traj, targets, args.batch_size, templates)
        finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(eqx.filter(res.grad, eqx.is_array)))
        print(f"{f'reweight+grad [{m}]':28s}{t_g / k:10.3f}{t_g / k * n:16.1f}{t_g / t_md:12.3f}"
              f"   (compile {t_c:.0f} s; grad finite {finite}; N_eff {res.n_eff:.1f}/{k})")
        print(f"{f'  forward pass [{m}]':28s}{t_f / k:10.3f}{t_f / k * n:16.1f}{t_f / t_md:12.3f}")
        print(f"{f'  gradient pass [{m}]':28s}{(t_g - t_f) / k:10.3f}{(t_g - t_f) / k * n:16.1f}"
              f"{(t_g - t_f) / t_md:12.3f}")
        print(f"RATIO gradient/sampling [{m}] = {t_g / t_md:.3f}  (goal <= 0.20: {'met' if t_g / t_md <= 0.2 else 'MISSED'}); "
              f"extrapolated per update ({n} frames): sampling {md_pf * n:.0f} s + reweight/grad {t_g / k * n:.0f} s")
        print(f"  estimates: " + ", ".join(f"{name} {np.round(np.asarray(v), 2)}" for name, v in res.estimates.items()))
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
