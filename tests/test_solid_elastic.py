"""Elastic constants: Born terms vs finite strain, fluctuation formula, DiffTRe gradient."""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from fusepot.core import neighbors as nb
from fusepot.core.difftre import Target, reweight
from fusepot.core.interfaces import StatePoint, Trajectory
from fusepot.core.plugins import BuildContext, get_plugin_manager
from fusepot.core.system import from_ase
from fusepot.core.units import BOLTZMANN_EV_PER_K, pressure_to_gpa
from fusepot.plugins.solid import born_terms
from fusepot.plugins.solid.elastic import pack_born_terms, stress_fluctuation_tensor
from fusepot.plugins.solid.evaluate import block_error, per_frame_values
from fusepot.plugins.solid.voigt import VOIGT_PAIRS, cubic_constants, hexagonal_constants

PM = get_plugin_manager()
A0 = 5.27  # ≈ zero-pressure fcc lattice constant of this LJ argon at T = 0 (Å)


def lj(eps=0.0104, sigma=3.40):
    return PM.build("potential", "lennard_jones", {"epsilon": eps, "sigma": sigma}, BuildContext(species=["Ar"]))


def fcc(a=A0, n=2):
    return from_ase(bulk("Ar", "fcc", a=a, cubic=True).repeat((n, n, n)))


def lagrangian_fd_constants(pot, conf, h=1e-4):
    """Athermal C_IJ = (1/V) ∂²U/∂η_I∂η_J by central differences, deformation F = sqrtm(I + 2η)
    (eigen-decomposition; independent of born.py's second-order expansion)."""
    nbrs = nb.allocate(conf.positions, conf.box, pot.cutoff, 0.5)

    def stretch(e):
        eta = np.zeros((3, 3))
        for k, (i, j) in enumerate(VOIGT_PAIRS):
            eta[i, j] = eta[j, i] = e[k] if i == j else 0.5 * e[k]
        w, q = np.linalg.eigh(np.eye(3) + 2 * eta)
        return (q * np.sqrt(w)) @ q.T - np.eye(3)

    strains = []
    for i in range(6):
        for j in range(6):
            for si, sj in [(1, 1), (1, -1), (-1, 1), (-1, -1)]:
                strains.append(stretch(h * (si * np.eye(6)[i] + sj * np.eye(6)[j])))
    u = jax.jit(jax.vmap(lambda s: pot.energy(conf.strained(s), nbrs)))(jnp.asarray(np.array(strains)))
    u = np.asarray(u).reshape(6, 6, 4)
    return (u[..., 0] - u[..., 1] - u[..., 2] + u[..., 3]) / (4 * h * h) / float(conf.volume())


@pytest.mark.parametrize("case", ["fcc", "hcp_triclinic"])
def test_born_tensor_equals_athermal_finite_strain_constants(case):
    pot = lj()
    if case == "fcc":
        conf, _ = fcc()
    else:  # primitive (triclinic) hcp cell, atoms off their sites: a generic, non-symmetric case
        conf, _ = from_ase(bulk("Ar", "hcp", a=3.74, c=6.1).repeat((3, 3, 2)))
        conf = conf.replace(positions=conf.positions + 0.05 * np.random.default_rng(0).standard_normal((36, 3)))
    nbrs = nb.allocate(conf.positions, conf.box, pot.cutoff, 0.5)
    _, cb = eqx.filter_jit(born_terms)(pot, conf, nbrs)
    ref = lagrangian_fd_constants(pot, conf)
    np.testing.assert_allclose(np.asarray(cb), ref, atol=1e-5 * np.max(np.abs(ref)))
    np.testing.assert_array_equal(np.asarray(cb), np.asarray(cb).T)
    if case == "fcc":
        c11, c12, c44 = np.asarray(pressure_to_gpa(cubic_constants(cb)))
        assert np.isclose(c12, c44, rtol=1e-10)  # Cauchy relation of a pair potential (centrosymmetric)
        assert c11 > c12 > 0


def test_born_tensor_is_intensive_and_cell_independent():
    pot = lj()
    jb = eqx.filter_jit(born_terms)

    def cb_of(conf):
        return np.asarray(jb(pot, conf, nb.allocate(conf.positions, conf.box, pot.cutoff, 0.5))[1])

    np.testing.assert_allclose(cb_of(fcc(n=1)[0]), cb_of(fcc(n=2)[0]), rtol=1e-9, atol=1e-14)
    # hcp: primitive (triclinic) and orthohexagonal cells give the same tensor; hexagonal symmetry
    prim = cb_of(from_ase(bulk("Ar", "hcp", a=3.74, c=6.1).repeat((2, 2, 2)))[0])
    orth = cb_of(from_ase(bulk("Ar", "hcp", a=3.74, c=6.1, orthorhombic=True).repeat((2, 1, 1)))[0])
    np.testing.assert_allclose(prim, orth, rtol=1e-8, atol=1e-10)
    c11, c12, c13, c33, c44 = np.asarray(hexagonal_constants(orth))
    assert np.isclose(orth[0, 0], orth[1, 1], rtol=1e-8) and np.isclose(orth[5, 5], (c11 - c12) / 2, rtol=1e-8)


def test_fluctuation_formula_against_numpy_reference():
    rng = np.random.default_rng(0)
    f = 50
    s = rng.standard_normal((f, 6))
    c = rng.standard_normal((f, 6, 6))
    c = c + np.swapaxes(c, 1, 2)
    w = rng.random(f)
    w /= w.sum()
    vol, kT, n = 1000.0, 0.01, 32
    got = np.asarray(stress_fluctuation_tensor(jnp.asarray(w), jnp.asarray(s), jnp.asarray(c), vol, kT, n))
    ms = w @ s
    cov = (s - ms).T @ (w[:, None] * (s - ms))
    ref = np.tensordot(w, c, 1) - vol / kT * cov + n * kT / vol * np.diag([2, 2, 2, 1, 1, 1])
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert pack_born_terms(jnp.asarray(s[0]), jnp.asarray(c[0])).shape == (7, 6)


def _random_frames(pot_ref, n_frames=24, T=20.0, seed=0):
    """Thermal-looking frames (random displacements) with reference energies: DiffTRe needs
    only frames + U_ref, so the gradient test does not need MD."""
    conf, masses = fcc()
    rng = np.random.default_rng(seed)
    amp = np.sqrt(BOLTZMANN_EV_PER_K * T / 0.13)  # ~0.1 Å: Einstein spring ~0.13 eV/Å²
    pos = conf.positions[None] + amp * rng.standard_normal((n_frames,) + conf.positions.shape)
    boxes = jnp.broadcast_to(conf.box, (n_frames, 3, 3))
    nbrs = nb.allocate(conf.positions, conf.box, pot_ref.cutoff, 1.0)
    u_ref = jax.jit(jax.vmap(lambda p: pot_ref.energy(conf.replace(positions=p), nbrs)))(jnp.asarray(pos))
    return Trajectory(jnp.asarray(pos), boxes, jnp.zeros_like(jnp.asarray(pos)), u_ref,
                      jnp.arange(n_frames) * 0.1, conf.species, jnp.asarray(masses), StatePoint(T))


def test_difftre_gradient_of_elastic_target_matches_finite_difference():
    pot_ref = lj()
    traj = _random_frames(pot_ref)
    obs = PM.build("observable", "elastic_constants", {"symmetry": "cubic"})
    target = Target("C", obs, np.array([4.0, 2.0, 2.5]), unit="GPa", weight=1.0)
    pot = eqx.tree_at(lambda p: (p.log_epsilon, p.log_sigma), pot_ref,
                      (pot_ref.log_epsilon + 0.2, pot_ref.log_sigma - 0.01))
    res = reweight(pot, traj, [target])
    print("N_eff", res.n_eff)
    assert 2.0 < res.n_eff < traj.n_frames - 0.5  # weights are non-trivial: the weight path is exercised

    def loss(de, ds):
        p = eqx.tree_at(lambda q: (q.log_epsilon, q.log_sigma), pot, (pot.log_epsilon + de, pot.log_sigma + ds))
        return reweight(p, traj, [target], with_grad=False).loss

    h = 2e-6
    fd_eps = (loss(h, 0.0) - loss(-h, 0.0)) / (2 * h)
    fd_sig = (loss(0.0, h) - loss(0.0, -h)) / (2 * h)
    np.testing.assert_allclose(float(jnp.sum(res.grad.log_epsilon)), fd_eps, rtol=1e-5)
    np.testing.assert_allclose(float(jnp.sum(res.grad.log_sigma)), fd_sig, rtol=1e-5)


def _nvt_constants(T, production_ps, seed=0):
    pot = lj()
    conf, masses = fcc()
    # Langevin, not Nosé–Hoover: a nearly harmonic crystal is not ergodic under an NH chain, which
    # biases the fluctuation term (C12 off by 1 % at 1 K with NH, 0.05 % with Langevin)
    ens = PM.build("ensemble", "nvt_langevin", {"timestep_fs": 10, "production_ps": production_ps,
                                                 "sample_every_ps": 0.1, "equilibration_ps": 5,
                                                 "friction_per_ps": 1.0, "chunk_frames": 500})
    traj, _ = ens.sample(pot, conf, masses, StatePoint(T), jax.random.PRNGKey(seed))
    obs = PM.build("observable", "elastic_constants", {"symmetry": "cubic"})
    vals = per_frame_values(obs, pot, traj)
    est = block_error(obs, vals, traj.frames(), n_blocks=10)
    nbrs = nb.allocate(conf.positions, conf.box, pot.cutoff, 0.5)
    athermal = np.asarray(pressure_to_gpa(cubic_constants(born_terms(pot, conf, nbrs)[1])))
    full = np.asarray(pressure_to_gpa(obs.tensor(jnp.full(traj.n_frames, 1.0 / traj.n_frames), vals, traj.frames())))
    return est, athermal, full


@pytest.mark.slow
def test_stress_fluctuation_at_5K_matches_athermal_constants():
    est, athermal, full = _nvt_constants(5.0, 100.0)
    print("C11 C12 C44 fluctuation (5 K):", est.mean, "±", est.error, " athermal:", athermal)
    np.testing.assert_allclose(est.mean, athermal, rtol=0.02)
    np.testing.assert_allclose(full, full.T, atol=1e-12)
    cubic_zero = np.abs(full[:3, 3:]).max()
    assert cubic_zero < 0.05 * athermal[0]


@pytest.mark.slow
def test_stress_fluctuation_at_40K_has_block_error_bars():
    est, athermal, _ = _nvt_constants(40.0, 50.0)
    print("C11 C12 C44 fluctuation (40 K):", est.mean, "±", est.error, " athermal:", athermal)
    assert np.all(np.isfinite(est.error)) and np.all(est.error > 0)
    assert np.all(est.error < 0.1 * np.abs(est.mean))
    # at the 0 K volume the thermal pressure stiffens C44 and softens C12 a little: same ballpark
    np.testing.assert_allclose(est.mean, athermal, rtol=0.1)
    assert est.mean[0] > est.mean[1] > 0


def _toy_eam():
    from fusepot.plugins.classical.eam import EAM, EAMTables

    n, rc = 300, 5.0
    dr, drho = rc / (n - 1), 60.0 / (n - 1)
    r, rho = np.arange(n) * dr, np.arange(n) * drho
    taper = np.clip(rc - r, 0.0, 1.0) ** 3
    phi = 0.3 * (np.exp(-2.8 * (r - 2.55)) - 2 * np.exp(-1.4 * (r - 2.55))) * taper
    tables = EAMTables(["Cu"], [29], [63.546], drho, dr, rc, (-np.sqrt(rho))[None],
                       (np.exp(-1.5 * (r - 2.55)) * taper)[None, None], (r * phi)[None, None])
    return EAM.from_tables(tables)


@pytest.mark.parametrize("potential", ["lennard_jones", "eam"])
def test_pair_vector_born_terms_equal_affine(potential):
    if potential == "eam":
        pytest.importorskip("fusepot.plugins.classical.eam")
        pot, atoms = _toy_eam(), bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    else:
        pot, atoms = lj(), bulk("Ar", "hcp", a=3.74, c=6.1).repeat((3, 3, 2))
    conf, _ = from_ase(atoms)
    conf = conf.replace(positions=conf.positions + 0.05 * np.random.default_rng(1).standard_normal(conf.positions.shape))
    nbrs = nb.allocate(conf.positions, conf.box, pot.cutoff, 0.5)
    s_a, c_a = eqx.filter_jit(born_terms)(pot, conf, nbrs)
    s_p, c_p = eqx.filter_jit(lambda p, c, n: born_terms(p, c, n, method="pair_vectors"))(pot, conf, nbrs)
    np.testing.assert_allclose(np.asarray(s_p), np.asarray(s_a), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(c_p), np.asarray(c_a), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError):
        born_terms(pot, conf, nbrs, method="hessian")
