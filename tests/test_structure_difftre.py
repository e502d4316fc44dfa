"""g(r) as a DiffTRe target: a Lennard-Jones student learns σ from a teacher's g(r).

Uses the engine in core/difftre.py (`reweight`), which builds the RDF's own neighbor list from
`RDF.neighbor_cutoff`.  Teacher σ = 3.40 Å, student σ = 3.25 Å; the reweighted loss gradient must
push σ up, and a small step along it must lower the loss.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fusepot.core import difftre
from fusepot.core.interfaces import StatePoint
from fusepot.core.plugins import BuildContext, get_plugin_manager
from fusepot.plugins.classical.lj import LennardJones
from fusepot.plugins.ensembles.langevin import LangevinParams, build_langevin
from fusepot.plugins.structure import curve_rms_deviation, trajectory_average

from test_structure_diffusion import EPS_EV, T_K, liquid_argon


def lj(sigma):
    return LennardJones(jnp.full((1, 1), math.log(EPS_EV)), jnp.full((1, 1), math.log(sigma)), 7.65)


def sample(pot, seed, production_ps=5.0):
    _, conf, masses = liquid_argon(3)  # 108 atoms
    carry = None
    for k, (temp, ps) in enumerate([(300.0, 1.0), (T_K, 2.0), (T_K, production_ps)]):
        # same sampling interval and chunk size everywhere: the MD chunk compiles once for all runs
        ens = build_langevin(LangevinParams(timestep_fs=10.0, production_ps=ps, sample_every_ps=0.1,
                                            friction_per_ps=5.0, chunk_frames=10), None)
        traj, carry = ens.sample(pot, conf, masses, StatePoint(temp), jax.random.PRNGKey(100 * seed + k), restart=carry)
    return traj


@pytest.fixture(scope="module")
def runs():
    rdf = get_plugin_manager().build("observable", "rdf", {"r_min": 2.5, "r_max": 8.0, "n_bins": 55, "smoothing": 0.1},
                                     BuildContext(species=["Ar"]))
    teacher = sample(lj(3.40), seed=1)
    student = sample(lj(3.25), seed=2)
    return rdf, trajectory_average(rdf, teacher, n_blocks=6), student


def test_rdf_target_gradient_moves_sigma_toward_teacher(runs):
    rdf, g_teacher, traj = runs
    assert np.all(np.isfinite(g_teacher.mean)) and np.max(g_teacher.error) < 0.15
    target = difftre.Target("rdf", rdf, g_teacher.mean, "1", weight=1.0)
    student = lj(3.25)
    r0 = difftre.reweight(student, traj, [target])
    assert r0.n_eff == pytest.approx(traj.n_frames, rel=1e-6)  # reference parameters: uniform weights
    g_sigma = float(r0.grad.log_sigma[0, 0])
    assert g_sigma < 0, "increasing σ must lower the g(r) loss when the teacher's σ is larger"
    # a small step along −∇ lowers the reweighted loss
    step = 0.01 / abs(g_sigma)
    moved = eqx_set_log_sigma(student, float(student.log_sigma[0, 0]) - step * g_sigma)
    r1 = difftre.reweight(moved, traj, [target], with_grad=False)
    print(f"\nloss {r0.loss:.4f} -> {r1.loss:.4f} at σ = {float(jnp.exp(moved.log_sigma[0, 0])):.4f} Å, "
          f"N_eff = {r1.n_eff:.1f}/{traj.n_frames}; RMS(g_student − g_teacher) = "
          f"{curve_rms_deviation(rdf.r, np.asarray(r0.estimates['rdf']), rdf.r, g_teacher.mean):.3f}")
    assert r1.loss < r0.loss and float(jnp.exp(moved.log_sigma[0, 0])) > 3.25


def eqx_set_log_sigma(pot, value):
    import equinox as eqx
    return eqx.tree_at(lambda p: p.log_sigma, pot, jnp.full((1, 1), value))
