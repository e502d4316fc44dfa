"""Nosé–Hoover NVT / anisotropic MTK NPT ensembles and multi-stage protocols (plugins/solid)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from fusepot.core.interfaces import StatePoint
from fusepot.core.plugins import BuildContext, get_plugin_manager
from fusepot.core.stats import block_average
from fusepot.core.system import from_ase
from fusepot.core.units import gpa_to_internal, pressure_to_gpa
from fusepot.plugins.solid import Stage, kinetic_temperature, run_protocol
from fusepot.plugins.solid.evaluate import block_error, per_frame_values
from fusepot.plugins.solid.nose_hoover import chain_half_step, chain_masses, suzuki_yoshida_weights

PM = get_plugin_manager()


def lj():
    return PM.build("potential", "lennard_jones", {"epsilon": 0.0104, "sigma": 3.40}, BuildContext(species=["Ar"]))


def fcc(a=5.27, n=2):
    return from_ase(bulk("Ar", "fcc", a=a, cubic=True).repeat((n, n, n)))


@pytest.mark.parametrize("order", [1, 3, 5, 7])
def test_suzuki_yoshida_weights_sum_to_one(order):
    assert np.isclose(sum(suzuki_yoshida_weights(order)), 1.0)


def test_chain_half_step_is_time_reversible():
    kT, dof = 0.003, 93
    q = chain_masses(dof, kT, 5.0, 3)
    xi0, v0, kin2 = jnp.zeros(3), jnp.array([0.05, -0.02, 0.01]), jnp.asarray(2.0 * dof * kT)
    w = suzuki_yoshida_weights(3)
    xi, v, s = chain_half_step(xi0, v0, kin2, dof, kT, q, 0.5, 2, w)
    xi_b, v_b, s_b = chain_half_step(xi, -v, kin2 * s**2, dof, kT, q, 0.5, 2, w)
    np.testing.assert_allclose(np.asarray(v_b), -np.asarray(v0), atol=1e-12)
    np.testing.assert_allclose(np.asarray(xi_b), np.asarray(xi0), atol=1e-12)
    np.testing.assert_allclose(float(s * s_b), 1.0, rtol=1e-12)


BASE = {"timestep_fs": 5, "production_ps": 2.5, "sample_every_ps": 0.5, "chunk_frames": 5}  # shared: compiled once


@pytest.mark.parametrize("name", ["nvt_nose_hoover", "npt_nose_hoover"])
def test_conserved_energy_and_box_behaviour(name):
    """The extended-system energy H' is conserved (to O(dt²)); NVT keeps the box, NPT moves the
    three axes independently and keeps the cell orthorhombic."""
    pot = lj()
    conf, masses = fcc()
    sp = StatePoint(40.0, gpa_to_internal(0.1))
    ens = PM.build("ensemble", name, BASE)
    key = jax.random.PRNGKey(3)
    start = ens.initial_carry(pot, conf, masses, sp, key)
    traj, carry = ens.sample(pot, conf, masses, sp, key)
    drift = abs(float(ens.conserved_energy(carry.state, sp) - ens.conserved_energy(start.state, sp)))
    kinetic = 1.5 * conf.n_atoms * float(sp.kT)
    assert drift < 2e-3 * kinetic, (drift, kinetic)  # a mismatched equation of motion drifts by ~kT
    boxes = np.asarray(traj.boxes)
    assert traj.n_frames == 5
    if name == "nvt_nose_hoover":
        np.testing.assert_array_equal(boxes, np.broadcast_to(np.asarray(conf.box), boxes.shape))
    else:
        off = boxes.reshape(-1, 9)[:, [1, 2, 3, 5, 6, 7]]
        assert np.all(off == 0.0)
        d = np.diagonal(boxes, axis1=1, axis2=2)
        assert np.ptp(d[-1]) > 1e-3  # axes moved independently


def test_npt_couple_xy_keeps_in_plane_ratio():
    pot = lj()
    atoms = bulk("Ar", "hcp", a=3.75, c=6.12, orthorhombic=True).repeat((3, 2, 2))
    conf, masses = from_ase(atoms)
    ens = PM.build("ensemble", "npt_nose_hoover", {"timestep_fs": 5, "production_ps": 2.5, "sample_every_ps": 0.5,
                                                   "chunk_frames": 5, "couple": "xy", "pressure_gpa": 0.2})
    traj, _ = ens.sample(pot, conf, masses, StatePoint(30.0), jax.random.PRNGKey(0))
    d = np.diagonal(np.asarray(traj.boxes), axis1=1, axis2=2)
    np.testing.assert_allclose(d[:, 1] / d[:, 0], float(conf.box[1, 1] / conf.box[0, 0]), rtol=1e-10)
    assert np.ptp(d[:, 2] / d[:, 0]) > 1e-5  # c/a is free


def test_protocol_npt_then_nvt_hands_state_on():
    pot = lj()
    conf, masses = fcc()
    npt = PM.build("ensemble", "npt_nose_hoover", BASE)
    nvt = PM.build("ensemble", "nvt_nose_hoover", BASE)
    lang = PM.build("ensemble", "nvt_langevin", BASE)
    stages = [Stage("npt_eq", npt, temperature_K=30.0, pressure_GPa=0.0, keep=False),
              Stage("npt", npt, temperature_K=30.0, pressure_GPa=0.0),
              Stage("langevin", lang, temperature_K=35.0),
              Stage("nvt", nvt, temperature_K=40.0, cell_from="npt")]
    res = run_protocol(pot, conf, masses, stages, jax.random.PRNGKey(0))
    assert set(res.trajectories) == {"npt", "langevin", "nvt"}
    npt_last = np.asarray(res.trajectories["npt"].boxes[-1])
    np.testing.assert_array_equal(np.asarray(res.trajectories["langevin"].boxes[0]), npt_last)  # handed on
    assert not np.allclose(npt_last, np.asarray(conf.box))
    npt_mean = np.asarray(res.trajectories["npt"].boxes).mean(axis=0)
    np.testing.assert_allclose(np.asarray(res.trajectories["nvt"].boxes[-1]), npt_mean, rtol=1e-12)
    assert float(res.trajectories["nvt"].state.temperature) == 40.0
    np.testing.assert_allclose(np.asarray(res.configuration.box), npt_mean, rtol=1e-12)
    with pytest.raises(ValueError):
        run_protocol(pot, conf, masses, [stages[0], stages[0]], jax.random.PRNGKey(0))


def test_float32_protocol_stays_float32_with_float64_masses_and_state_points():
    """With 64-bit jax on (conftest), a float32 model and configuration run in float32 through
    every stage and hand-over (NPT → Langevin → NVT in the mean NPT cell, as the liquid sections
    do), although ASE's masses are float64 and StatePoint(T) defaults to float64: the MD driver
    puts both in the configuration's float type (before, the first step promoted the state and
    lax.scan failed with "carry input and carry output must have equal types")."""
    f32 = jnp.float32
    pot = PM.build("potential", "lennard_jones", {"epsilon": 0.0104, "sigma": 3.40},
                   BuildContext(species=["Ar"], dtype=f32))
    atoms = bulk("Ar", "fcc", a=5.27, cubic=True).repeat((2, 2, 2))
    conf, _ = from_ase(atoms, dtype=f32)
    masses = atoms.get_masses()  # float64 NumPy
    run = {"timestep_fs": 5, "production_ps": 0.1, "sample_every_ps": 0.05, "chunk_frames": 2}
    npt, nvt, lang = (PM.build("ensemble", n, run, BuildContext(dtype=f32))
                      for n in ("npt_nose_hoover", "nvt_nose_hoover", "nvt_langevin"))
    stages = [Stage("npt", npt, temperature_K=60.0), Stage("dynamics", lang, temperature_K=60.0),
              Stage("nvt", nvt, temperature_K=60.0, cell_from="npt")]
    res = run_protocol(pot, conf, masses, stages, jax.random.PRNGKey(0))
    traj, _ = lang.sample(pot, conf, masses, StatePoint(60.0), jax.random.PRNGKey(1))
    for t in [*res.trajectories.values(), traj]:
        assert {t.positions.dtype, t.velocities.dtype, t.ref_energy.dtype, t.masses.dtype} == {np.dtype(f32)}
        assert t.state.temperature.dtype == f32
    floats = [x for x in jax.tree_util.tree_leaves(res.carry.state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert {x.dtype for x in floats} == {np.dtype(f32)}


def second_moment_cu():
    """Copper in the tight-binding second-moment form (Cleri & Rosato, Phys. Rev. B 48, 22 (1993),
    Table I: A = 0.0855 eV, ξ = 1.224 eV, p = 10.960, q = 2.278, r0 = 2.5563 Å) as EAM tables:
    φ(r) = 2A e^{−p(r/r0 − 1)}, ρ contributions ξ² e^{−2q(r/r0 − 1)}, F(ρ) = −√ρ, both tapered by
    (5 Å − r)³ over the last ångström.  Unlike test_solid_elastic's toy tables (fine at fixed
    volume, but without an energy minimum), it holds an fcc crystal at a ≈ 3.63 Å under NPT."""
    from fusepot.plugins.classical.eam import EAM, EAMTables

    a_pair, xi, p, q, r0 = 0.0855, 1.224, 10.960, 2.278, 2.5563
    n, rc = 500, 5.0
    dr, drho = rc / (n - 1), 80.0 / (n - 1)
    r, rho = np.arange(n) * dr, np.arange(n) * drho
    taper = np.clip(rc - r, 0.0, 1.0) ** 3
    phi = 2 * a_pair * np.exp(-p * (r / r0 - 1)) * taper
    dens = xi ** 2 * np.exp(-2 * q * (r / r0 - 1)) * taper
    return EAM.from_tables(EAMTables(["Cu"], [29], [63.546], drho, dr, rc, (-np.sqrt(rho))[None], dens[None, None],
                                     (r * phi)[None, None]))


def _npt(potential, T, P_gpa, production_ps, seed=0):
    if potential == "eam":
        pot, (conf, masses), dt = second_moment_cu(), from_ase(bulk("Cu", "fcc", a=3.63, cubic=True).repeat((3, 3, 3))), 2
    else:
        pot, (conf, masses), dt = lj(), fcc(), 5
    ens = PM.build("ensemble", "npt_nose_hoover", {"timestep_fs": dt, "production_ps": production_ps,
                                                   "sample_every_ps": 0.05, "equilibration_ps": 10,
                                                   "chunk_frames": 200})
    traj, _ = ens.sample(pot, conf, masses, StatePoint(T, gpa_to_internal(P_gpa)), jax.random.PRNGKey(seed))
    return pot, traj, round(conf.n_atoms ** (1 / 3) / 4 ** (1 / 3))


@pytest.mark.slow
@pytest.mark.parametrize("potential", ["lennard_jones", "eam"])
def test_npt_pressure_temperature_and_lattice_convergence(potential):
    """Mean T and P within their error bars of the targets; the mean lattice constant of the
    crystal (LJ argon, 32 atoms; EAM copper, 108 atoms) is the same when the run is doubled."""
    T, P = 40.0, 0.1
    results = []
    for ps in (50.0, 100.0):
        pot, traj, reps = _npt(potential, T, P, ps, seed=int(ps))
        lat = PM.build("observable", "lattice_constants", {"lattice": "cubic", "repeats": [reps] * 3})
        temp = block_average(np.asarray(kinetic_temperature(traj.velocities, traj.masses)))
        p_obs = PM.build("observable", "stress", {"output": "pressure", "kinetic": "velocities"})
        pres = block_average(np.asarray(pressure_to_gpa(per_frame_values(p_obs, pot, traj))))
        a = block_error(lat, per_frame_values(lat, pot, traj), traj.frames())
        print(f"NPT {potential} {ps} ps: T = {temp.mean:.3f} ± {temp.error:.3f} K, P = {pres.mean:.5f} ± "
              f"{pres.error:.5f} GPa, a = {a.mean[0]:.5f} ± {a.error[0]:.5f} Å")
        assert abs(temp.mean - T) < 3 * temp.error + 0.5
        assert abs(pres.mean - P) < 3 * pres.error + 1e-3
        results.append(a)
    a1, a2 = results
    assert abs(a1.mean[0] - a2.mean[0]) < 3 * np.hypot(a1.error[0], a2.error[0]) + 1e-3
