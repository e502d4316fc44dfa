"""Speed of the DimeNet++ potential on hcp titanium, and the ratio to chemtrain's implementation.

256-atom hcp Ti (orthorhombic cell ×(4,4,4), 0.05 Å random displacements), float32, the
titanium paper's hyperparameters (plugin defaults), dt = 0.5 fs.  Prints
  - energy+force evaluations per second,
  - NVT Langevin MD steps per second through the fusepot `nvt_langevin` ensemble (core/md.py),
  - peak memory (XLA buffers of the jitted energy+forces, and process peak RSS) for 256 and
    2048 atoms,
and then runs the peer, chemtrain's DimeNet++ (`/work/shared/bench/chemtrain_anchor`,
`dimenet_md.py 4`, same cell and model) right after ours and prints both raw figures and the
ratio.  The machine may be shared: compare only figures taken back to back.

Usage: python benchmarks/bench_dimenet_speed.py [--md-steps 400] [--no-peer] [--no-2048]
           [--model trained|random|PATH.npz] [--timestep-fs 0.5] [--k-margin K] [--edge-margin E]

Model.  By default (`--model trained`) the paper-size DimeNet++ of `benchmarks/data/`
(ti_dimenet_paper_size.npz: plugin defaults, briefly trained on the CHGNet-labelled stand-in set
of the titanium example; regenerate it with the spec beside it) so that the 0.5 fs trajectory
is a thermal solid (not a gas), as in production MD.  Capacities are sized like the library's default
(`sized_for`, margins 1.15 for K and 1.05 for E_cap) on the start and grown by the MD driver
when the thermal structure needs more (once, during the untimed first run).  Its cost per step
is the same as any model of that size: only the capacities (hence the structure) matter.
`--model random` is the untrained, energy-scaled network used before (below).

Like for like.  The peer's script passes dt = 0.0005 with positions in Å, energies in eV and
masses in amu, in which jax-md's time unit is sqrt(amu Å²/eV) = 10.18 fs: its MD step is
0.0051 fs, not 0.5 fs, so its 200 steps stay at the displaced lattice.  Its per-step cost does
not depend on that (its capacities are fixed when it allocates, and overflowing edges are
dropped), but ours does: our capacities follow the structure.  At 0.5 fs the energy-scaled
untrained model (`--model random`) drifts into a gas-like arrangement at the lattice density
(about 45 % more edges within 5 Å than hcp, largest degree ~38–46 instead of ~29), and K and
E_cap grow with it.  `--model random --timestep-fs 0.0051 --k-margin 1.3` times our MD on the
peer's trajectory regime.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time

import ase.build
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import yaml

from fusepot.core import mechanics
from fusepot.core.checkpoint import load_tree
from fusepot.core import neighbors as nb
from fusepot.core.interfaces import StatePoint
from fusepot.core.plugins import BuildContext, get_plugin_manager
from fusepot.core.system import from_ase
from fusepot.plugins.dimenet.graph import host_counts

PEER_DIR = "/work/shared/bench/chemtrain_anchor"
PEER_PYTHON = "/tmp/chemtrain-venv/bin/python"
TRAINED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "ti_dimenet_paper_size.npz")
TRAINED_SPEC = TRAINED[:-len(".npz")] + ".yaml"  # the spec that trained it: its potential params
SKIN = 0.5  # Å, the ensemble's default neighbor skin
ENERGY_SCALE = 0.01


def titanium(reps: int, seed: int = 0):
    atoms = ase.build.bulk("Ti", "hcp", a=2.951, c=4.684, orthorhombic=True).repeat((reps, reps, reps))
    atoms.positions += 0.05 * np.random.default_rng(seed).normal(size=atoms.positions.shape)
    return from_ase(atoms, dtype=jnp.float32)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def build_model(model: str):
    """(potential, default K margin, default E_cap margin) for `--model`."""
    pm, ctx = get_plugin_manager(), BuildContext(species=["Ti"], dtype=jnp.float32)
    if model == "random":
        # an untrained network has random O(eV) per-atom energies without short-range repulsion,
        # so the lattice collapses within a few hundred steps; scale the energy down (same cost)
        # so the run stays a thermal solid-like trajectory (it still drifts: see the docstring).
        # Generous K: the largest degree drifts far more than the total edge count (it reaches
        # ~1.4x its start value within 200 steps); tight E_cap: every padded row costs.
        return pm.build("potential", "dimenet_pp", {"energy_scale": ENERGY_SCALE}, ctx), 1.6, 1.1
    path = TRAINED if model == "trained" else model
    if not os.path.exists(path):
        raise SystemExit(f"--model {model}: {path} not found (regenerate it with benchmarks/data/"
                         f"ti_dimenet_paper_size.yaml, or use --model random)")
    with open(TRAINED_SPEC) as fh:
        params = yaml.safe_load(fh)["potential"]["params"]
    like = pm.build("potential", "dimenet_pp", params, ctx)
    return load_tree(path, like), 1.15, 1.05


def setup(reps: int, k_margin=None, edge_margin=None, model: str = "random"):
    conf, masses = titanium(reps)
    pot, k_default, e_default = build_model(model)
    nbrs = nb.allocate(conf.positions, conf.box, pot.cutoff, SKIN)
    # fixed buffers with room for fluctuations of the coordination (the MD driver grows them,
    # recompiling once, if a later configuration needs more)
    pot = pot.sized_for(conf, nbrs, margin=k_default if k_margin is None else k_margin,
                        edge_margin=e_default if edge_margin is None else edge_margin)
    return conf, masses, pot, nbrs


def time_energy_forces(pot, conf, nbrs, repeats: int):
    f = eqx.filter_jit(mechanics.energy_and_forces)
    t0 = time.perf_counter()
    jax.block_until_ready(f(pot, conf, nbrs))
    compile_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        out = f(pot, conf, nbrs)
    jax.block_until_ready(out)
    wall, cpu = (time.perf_counter() - t0) / repeats, (time.process_time() - c0) / repeats
    mem = jax.jit(lambda p, c, n: mechanics.energy_and_forces(p, c, n)).lower(pot, conf, nbrs).compile()
    ma = mem.memory_analysis()
    xla_mib = (ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes) / 2**20 if ma else float("nan")
    return wall, cpu, compile_s, xla_mib


def time_md(pot, conf, masses, n_steps: int, timestep_fs: float = 0.5):
    pm = get_plugin_manager()
    steps_per_frame = 100
    frames = max(1, n_steps // steps_per_frame)
    ens = pm.build("ensemble", "nvt_langevin",
                   {"timestep_fs": timestep_fs, "production_ps": frames * steps_per_frame * timestep_fs * 1e-3,
                    "sample_every_ps": steps_per_frame * timestep_fs * 1e-3, "neighbor_skin": SKIN,
                    "chunk_frames": frames},
                   BuildContext(species=["Ti"], dtype=jnp.float32))
    sp = StatePoint(jnp.float32(323.0))
    key = jax.random.PRNGKey(1)
    t0 = time.perf_counter()
    _, carry = ens.sample(pot, conf, masses, sp, key)  # compiles the chunk
    compile_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    traj, carry = ens.sample(carry.potential, conf, masses, sp, key, restart=carry)
    jax.block_until_ready(traj.positions)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return frames * steps_per_frame / wall, frames * steps_per_frame / cpu, compile_s, traj, carry.potential


def run_peer():
    if not os.path.exists(PEER_PYTHON):
        print(f"peer: {PEER_PYTHON} missing; build it with `bash {PEER_DIR}/setup.sh`")
        return None
    t0 = time.perf_counter()
    out = subprocess.run([PEER_PYTHON, f"{PEER_DIR}/dimenet_md.py", "4"], capture_output=True, text=True, cwd="/tmp")
    text = out.stdout + out.stderr
    ef = re.search(r"energy\+force eval/s=([\d.]+)", text)
    mdm = re.search(r"md steps/s=([\d.]+)", text)
    if not (ef and mdm):
        print("peer failed:\n" + text[-2000:])
        return None
    print(f"chemtrain: {ef.group(0)}, {mdm.group(0)}  (script total {time.perf_counter() - t0:.0f} s)")
    return float(ef.group(1)), float(mdm.group(1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--md-steps", type=int, default=400)
    ap.add_argument("--ef-repeats", type=int, default=20)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--no-2048", action="store_true")
    ap.add_argument("--timestep-fs", type=float, default=0.5, help="MD step (the peer's effective step: 0.0051)")
    ap.add_argument("--model", default="trained", help="trained (benchmarks/data), random, or a .npz of the paper-size model")
    ap.add_argument("--k-margin", type=float, default=None,
                    help="K = margin x the start's largest degree (+1); default 1.15 (trained), 1.6 (random)")
    ap.add_argument("--edge-margin", type=float, default=None,
                    help="E_cap = margin x the start's edges (+16); default 1.05 (trained), 1.1 (random)")
    args = ap.parse_args(argv)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} (others share this machine)")

    conf, masses, pot, nbrs = setup(4, args.k_margin, args.edge_margin, args.model)
    print(f"[ours] model: {args.model}")
    n = conf.n_atoms
    print(f"[ours] {n} atoms, float32, K = {pot.max_neighbors} neighbors/atom, E_cap = {pot.edge_capacity} edges, "
          f"neighbor list capacity {nbrs.capacity}")
    wall, cpu, comp, xla = time_energy_forces(pot, conf, nbrs, args.ef_repeats)
    print(f"[ours] energy+force eval/s = {1 / wall:.2f} ({wall * 1e3:.1f} ms wall, {cpu * 1e3:.1f} ms CPU; "
          f"compile {comp:.1f} s); XLA buffers {xla:.0f} MiB")
    md_wall, md_cpu, md_comp, traj, md_pot = time_md(pot, conf, masses, args.md_steps, args.timestep_fs)
    print(f"[ours] md steps/s = {md_wall:.2f} (CPU-time rate {md_cpu:.2f}/s; {args.md_steps} steps of "
          f"{args.timestep_fs} fs, "
          f"first run incl. compile {md_comp:.1f} s); peak RSS so far {rss_mib():.0f} MiB; "
          f"K = {md_pot.max_neighbors}, E_cap = {md_pot.edge_capacity} after the run")
    last = conf.replace(positions=traj.positions[-1])
    e_last, d_last = host_counts(last, nb.allocate(last.positions, last.box, pot.cutoff, SKIN), pot.cutoff)
    e_0, d_0 = host_counts(conf, nbrs, pot.cutoff)
    # solid or not: RMS displacement of the last frame from the start (minimum image, orthorhombic box)
    disp = np.array(last.positions - conf.positions)
    box = np.diag(np.asarray(conf.box))
    disp -= box * np.round(disp / box)
    print(f"[ours] final frame: RMS displacement from the start {np.sqrt(np.mean(np.sum(disp ** 2, axis=1))):.3f} Å "
          f"({2 * args.md_steps} steps after the start)")
    print(f"[ours] final frame: U = {float(traj.ref_energy[-1]):.3f} eV, finite = "
          f"{bool(np.all(np.isfinite(np.asarray(traj.positions))))}; edges within the cutoff {e_last} "
          f"(start {e_0}), largest degree {d_last} (start {d_0})")

    if not args.no_peer:
        print(f"load average before chemtrain {os.getloadavg()[0]:.1f}")
        peer = run_peer()
        print(f"load average after chemtrain {os.getloadavg()[0]:.1f}")
        if peer:
            print(f"ours:      energy+force eval/s = {1 / wall:.2f}, md steps/s = {md_wall:.2f}")
            print(f"chemtrain: energy+force eval/s = {peer[0]:.2f}, md steps/s = {peer[1]:.2f}")
            print(f"ratio ours/chemtrain: energy+force {1 / wall / peer[0]:.2f}x, md steps {md_wall / peer[1]:.2f}x")

    if not args.no_2048:
        conf8, _, pot8, nbrs8 = setup(8, model=args.model)
        wall8, cpu8, comp8, xla8 = time_energy_forces(pot8, conf8, nbrs8, 3)
        print(f"[ours] {conf8.n_atoms} atoms: energy+force eval/s = {1 / wall8:.2f} ({wall8 * 1e3:.0f} ms wall, "
              f"{cpu8 * 1e3:.0f} ms CPU), K = {pot8.max_neighbors}; XLA buffers {xla8:.0f} MiB; "
              f"peak RSS {rss_mib():.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
