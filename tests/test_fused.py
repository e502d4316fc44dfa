"""Fused training proof on a cheap system (Lennard-Jones argon).

"DFT" labels come from teacher A (ε = 0.0104 eV, σ = 3.40 Å); the "experimental" pressure and
cubic elastic constants (C11, C12, C44, stress fluctuation) at 60 K in a fixed box come from
teacher B (σ = 3.45 Å).  A DFT-only model reproduces A and misses B's pressure and C11; the
fused model (DFT pre-training, then alternating DFT epochs and DiffTRe updates) reaches all of
B's targets within 2 error bars while its DFT force error on A's test set stays within a stated
bound.  All numbers are printed.
"""
import json
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from fusepot.core import cli, mechanics, neighbors
from fusepot.core.build import build_potential
from fusepot.core.checkpoint import load_tree
from fusepot.core.spec import load_spec

from helpers import assert_same_final_parameters, short_trajectory, sigkill_after_checkpoint

# eV/Å: allowed rise of the DFT test force RMSE, fused vs DFT-only.  The two teachers cannot both
# be matched by a 2-parameter LJ (forces pin σ and ε), so the fused model pays in force error:
# measured 0.0147 eV/Å here (pressure and elastic targets), against a label force RMS of about 0.07 eV/Å.
FORCE_RMSE_BOUND = 0.02
# one absolute cutoff for teachers and student (LJ's default scales it with the initial σ): with
# it teacher B is exactly representable, so the fused model can meet both of B's targets
CUTOFF = 8.5  # Å = 2.5 σ_A


def _lj(epsilon, sigma):
    from fusepot.core.plugins import BuildContext, get_plugin_manager
    return get_plugin_manager().build("potential", "lennard_jones", {"epsilon": epsilon, "sigma": sigma, "cutoff": CUTOFF,
                                                                     "cutoff_in_sigma": False}, BuildContext(species=["Ar"]))


def _label(pot, atoms):
    from fusepot.core.system import from_ase

    conf, _ = from_ase(atoms)
    nl = neighbors.allocate(conf.positions, conf.box, pot.cutoff, skin=0.0)
    u, f, w = mechanics.energy_forces_virial(pot, conf, nl)
    stress = -np.asarray(w) / float(conf.volume())  # ASE stress = (1/V) ∂U/∂ε = −W/V
    atoms.calc = SinglePointCalculator(atoms, energy=float(u), forces=np.asarray(f),
                                       stress=stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]])
    return atoms


ELASTIC = {"symmetry": "cubic", "born_method": "pair_vectors"}


EVAL_RUNS, EVAL_PS = 6, 8.0


def _observed(pot, seed=11):
    """Pressure and (C11, C12, C44) in GPa, each as (mean, standard error), from EVAL_RUNS
    independent NVT runs of EVAL_PS each (seeds seed, seed+1, …): the error is the spread of the
    per-run estimates / sqrt(runs).  Block errors within one run are not used: over seeds, C11
    of one teacher scattered by ≈ 0.18 GPa between 36 ps runs whose 4.5 ps block errors were
    0.05–0.10 (stress fluctuations decorrelate slowly)."""
    from fusepot.core import difftre
    from fusepot.core.plugins import get_plugin_manager

    pm = get_plugin_manager()
    p, c = pm.build("observable", "pressure", {}), pm.build("observable", "elastic_constants", ELASTIC)
    runs_p, runs_c = [], []
    for k in range(EVAL_RUNS):
        traj = short_trajectory(pot, temperature=60.0, production_ps=EVAL_PS, seed=seed + k)
        _, vals, _ = difftre.evaluate_frames(pot, traj, {"p": p, "c": c})
        w = jnp.full(traj.n_frames, 1.0 / traj.n_frames)
        runs_p.append(float(p.to_user(p.reduce(w, vals["p"], traj.frames()))))
        runs_c.append(np.asarray(c.to_user(c.reduce(w, vals["c"], traj.frames())), dtype=float))
    runs_p, runs_c = np.asarray(runs_p), np.stack(runs_c)
    sem = lambda x: np.std(x, axis=0, ddof=1) / np.sqrt(EVAL_RUNS)
    return (float(runs_p.mean()), float(sem(runs_p))), (runs_c.mean(axis=0), sem(runs_c))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("fused")
    teacher_a = _lj(0.0104, 3.40)
    rng = np.random.default_rng(0)
    frames = []
    for k in range(40):
        a = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)
        strain = np.eye(3) + np.diag(rng.uniform(-0.03, 0.03, 3))
        a.set_cell(a.cell.array @ strain, scale_atoms=True)
        a.rattle(0.12, seed=k)
        frames.append(_label(teacher_a, a))
    write(d / "dft.extxyz", frames)
    target_b = _observed(_lj(0.0104, 3.45), seed=100)
    return d, target_b


SPEC = """
seed: 2
dtype: float64
system: {{crystal: {{element: Ar, structure: fcc, a: 5.26, cubic: true}}, supercell: [2, 2, 2]}}
potential: {{name: lennard_jones, params: {{epsilon: 0.0115, sigma: 3.33, cutoff: {cutoff}, cutoff_in_sigma: false}}}}
dft:
  data: {{paths: [dft.extxyz], split: [0.7, 0.15, 0.15]}}
  train: {{epochs: 25, batch_size: 7, learning_rate: 0.02, patience: 100}}
state_points:
  - name: T60
    temperature: 60
    ensemble: {{name: nvt_langevin, params: {{timestep_fs: 5, friction_per_ps: 2, equilibration_ps: 2, production_ps: 16, sample_every_ps: 0.1, chunk_frames: 20}}}}
    targets:
      - observable: {{name: pressure}}
        value: {target}
        unit: GPa
        uncertainty: 0.005
      - observable: {{name: elastic_constants, params: {{symmetry: cubic, born_method: pair_vectors}}}}
        value: {elastic}
        unit: GPa
        uncertainty: 0.1
trainer: {trainer}
optimizer: {{name: adam, learning_rate: 0.01, params: {{b1: 0.5}}, schedule: {{name: exponential_decay, decay_rate: 0.1, transition_steps: 14}}}}
"""


def _spec_text(target_b, trainer):
    (p_b, _), (c_b, _) = target_b
    return textwrap.dedent(SPEC.format(target=p_b, elastic=[round(float(x), 5) for x in c_b], trainer=trainer,
                                       cutoff=CUTOFF))


def _run(d, name, trainer, target_b):
    spec = d / f"{name}.yaml"
    spec.write_text(_spec_text(target_b, trainer))
    out = d / name
    assert cli.main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    s = load_spec(spec)
    like = build_potential(s, ["Ar"], d, jnp.float64)
    summary = json.loads((out / "summary.json").read_text())
    return load_tree(out / "final_potential.npz", like), summary


def test_fused_reaches_experiment_dft_only_does_not(setup):
    d, target_b = setup
    dft_model, dft_sum = _run(d, "dft_only", "{kind: dft}", target_b)
    fused_model, fused_sum = _run(d, "fused", "{kind: fused, epochs: 14, reuse_threshold: 0.97, "
                                              "dft_optimizer: {name: adam, learning_rate: 0.00001}}", target_b)
    dft_obs, fused_obs = _observed(dft_model, seed=200), _observed(fused_model, seed=200)
    f_dft = dft_sum["test"]["force_rmse"]
    f_fused = fused_sum["test"]["force_rmse"]
    rows = [("experiment teacher B", target_b, float("nan")), ("DFT-only", dft_obs, f_dft),
            ("fused", fused_obs, f_fused)]
    print("\nmodel | pressure (GPa) | C11 | C12 | C44 (GPa) | DFT test force RMSE (eV/Å)")
    for name, ((p, pe), (c, ce)), f in rows:
        cs = " | ".join(f"{x:.3f} ± {e:.3f}" for x, e in zip(c, ce))
        print(f"{name} | {p:.4f} ± {pe:.4f} | {cs} | {f:.5f}")
    for m, n in (("DFT-only", dft_model), ("fused", fused_model)):
        print(m, "σ =", float(np.exp(n.log_sigma[0, 0])), "ε =", float(np.exp(n.log_epsilon[0, 0])))
    (p_b, e_b), (c_b, ce_b) = target_b
    (p_dft, e_dft), (c_dft, ce_dft) = dft_obs
    (p_fused, e_fused), (c_fused, ce_fused) = fused_obs
    # the DFT-only model misses the experiment: pressure and C11 both more than 4 combined error bars off
    assert abs(p_dft - p_b) > 4 * np.hypot(e_dft, e_b), "DFT-only must miss the experimental pressure"
    assert abs(c_dft[0] - c_b[0]) > 4 * np.hypot(ce_dft[0], ce_b[0]), "DFT-only must miss the experimental C11"
    # the fused model reaches every target within 2 combined error bars
    assert abs(p_fused - p_b) < 2 * np.hypot(e_fused, e_b)
    np.testing.assert_array_less(np.abs(c_fused - c_b), 2 * np.hypot(ce_fused, ce_b))
    assert f_fused - f_dft < FORCE_RMSE_BOUND


def test_fused_resume_mid_epoch_is_bitwise_identical(setup, monkeypatch):
    """Interrupt inside the 2nd fused epoch's DFT pass, resume, compare with an uninterrupted run."""
    from fusepot.core.trainers import dft as dft_mod

    d, target_b = setup
    trainer = ("{kind: fused, epochs: 3, reuse_threshold: 0.9, switching: batch, switch_every: 2, "
               "dft_optimizer: {name: adam, learning_rate: 0.00003}}")
    spec = d / "resume.yaml"
    spec.write_text(_spec_text(target_b, trainer).replace("epochs: 25", "epochs: 4"))
    full, cut = d / "resume_full", d / "resume_cut"
    assert cli.main(["run", str(spec), "--out", str(full), "--quiet"]) == 0

    real_epoch = dft_mod.DFTTrainer.epoch
    calls = {"n": 0}

    def dying_epoch(self, *a, **k):
        if k.get("label") == "fused dft":
            calls["n"] += 1
            if calls["n"] == 3:  # 2nd fused epoch (2 chunks per epoch), mid-epoch
                raise KeyboardInterrupt
        return real_epoch(self, *a, **k)

    monkeypatch.setattr(dft_mod.DFTTrainer, "epoch", dying_epoch)
    assert cli.main(["run", str(spec), "--out", str(cut), "--quiet"]) == 130
    monkeypatch.setattr(dft_mod.DFTTrainer, "epoch", real_epoch)
    assert json.loads((cut / "checkpoint" / "fused.json").read_text())["epoch"] == 1
    assert cli.main(["run", str(spec), "--out", str(cut), "--quiet", "--resume"]) == 0
    assert_same_final_parameters(full, cut)
    la = [json.loads(l)["epoch"] for l in (cut / "metrics.jsonl").read_text().splitlines()]
    assert la == [1, 2, 3]


@pytest.mark.slow
def test_fused_kill_9_then_resume_matches_uninterrupted(setup):
    """A real SIGKILL of `fusepot run` (fused) after its first fused-epoch checkpoint, then
    `--resume`: bitwise the same final parameters as an uninterrupted run."""
    import subprocess
    import sys

    d, target_b = setup
    trainer = "{kind: fused, epochs: 6, reuse_threshold: 0.9, dft_optimizer: {name: adam, learning_rate: 0.00001}}"
    spec = d / "kill9.yaml"
    spec.write_text(_spec_text(target_b, trainer).replace("epochs: 25", "epochs: 4"))
    run = [sys.executable, "-m", "fusepot.core.cli", "run", str(spec), "--quiet", "--out"]
    full, cut = d / "kill9_full", d / "kill9_cut"
    assert subprocess.run(run + [str(full)]).returncode == 0
    killed_at = sigkill_after_checkpoint(run + [str(cut)], cut / "checkpoint" / "fused.json", "epoch")
    print(f"\nkilled after fused epoch {killed_at} of 6")
    assert killed_at < 6 and not (cut / "final_potential.npz").exists()
    assert subprocess.run(run + [str(cut), "--resume"]).returncode == 0
    assert_same_final_parameters(full, cut)
