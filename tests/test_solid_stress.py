"""Stress/pressure, Voigt helpers, lattice constants and the E–V curve of plugins/solid."""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from fusepot.core import neighbors as nb
from fusepot.core.interfaces import Frame, StatePoint
from fusepot.core.mechanics import pressure
from fusepot.core.plugins import BuildContext, get_plugin_manager
from fusepot.core.system import from_ase
from fusepot.core.units import BOLTZMANN_EV_PER_K, gpa_to_internal, pressure_to_gpa
from fusepot.plugins.solid import (born_terms, energy_volume_curve, fit_birch_murnaghan, voigt_moduli_cubic,
                                   voigt_moduli_hexagonal)
from fusepot.plugins.solid.voigt import strain_from_voigt, tensor_to_voigt, voigt_to_tensor

PM = get_plugin_manager()


def lj():
    return PM.build("potential", "lennard_jones", {"epsilon": 0.0104, "sigma": 3.40}, BuildContext(species=["Ar"]))


def perturbed(atoms, seed, amp=0.08):
    conf, masses = from_ase(atoms)
    rng = np.random.default_rng(seed)
    return conf.replace(positions=conf.positions + amp * rng.standard_normal(conf.positions.shape)), masses


def triclinic_conf():
    """Primitive hcp cell (a1 ∥ x, a2 at 120°), replicated, sheared a little and perturbed."""
    atoms = bulk("Ar", "hcp", a=3.76, c=6.14).repeat((3, 3, 2))
    cell = atoms.cell.array.copy()
    cell[2] += [0.3, -0.2, 0.0]
    atoms.set_cell(cell, scale_atoms=True)
    return perturbed(atoms, 1)


def ortho_conf():
    return perturbed(bulk("Ar", "fcc", a=5.2, cubic=True).repeat((2, 2, 2)), 0)


def static_frame(conf, masses, T=0.0):
    return Frame(conf, jnp.zeros_like(conf.positions), jnp.asarray(masses), StatePoint(T))


@pytest.mark.parametrize("make", [ortho_conf, triclinic_conf], ids=["orthorhombic", "triclinic"])
def test_stress_equals_finite_difference_strain_derivative(make):
    pot = lj()
    conf, masses = make()
    nbrs = nb.allocate(conf.positions, conf.box, pot.cutoff, 0.5)
    obs = PM.build("observable", "stress", {"output": "voigt", "kinetic": "none"})
    sigma = np.asarray(eqx.filter_jit(obs.per_frame)(pot, static_frame(conf, masses), nbrs))

    u = jax.jit(jax.vmap(lambda e: pot.energy(conf.strained(strain_from_voigt(e)), nbrs)))
    h = 1e-5
    up, um = np.asarray(u(h * jnp.eye(6))), np.asarray(u(-h * jnp.eye(6)))
    fd = (up - um) / (2 * h) / float(conf.volume())
    scale = np.max(np.abs(fd))
    print(f"{make.__name__}: max |stress - FD| / max |FD| = {np.max(np.abs(sigma - fd)) / scale:.2e}")
    assert np.max(np.abs(fd[3:])) > 1e-3 * scale  # shear stresses are really tested
    np.testing.assert_allclose(sigma, fd, rtol=1e-5, atol=1e-5 * scale)
    # forward-over-reverse Born stress agrees with the core strain derivative
    s_b, _ = eqx.filter_jit(born_terms)(pot, conf, nbrs)
    np.testing.assert_allclose(np.asarray(s_b), sigma, rtol=1e-10, atol=1e-12 * scale)


def test_stress_signs_and_kinetic_terms():
    pot = lj()
    conf, masses = from_ase(bulk("Ar", "fcc", a=5.0, cubic=True).repeat((2, 2, 2)))  # compressed
    nbrs = nb.allocate(conf.positions, conf.box, pot.cutoff, 0.5)
    T = 50.0
    frame = static_frame(conf, masses, T)
    p_static = PM.build("observable", "stress", {"output": "pressure", "kinetic": "none"}).per_frame(pot, frame, nbrs)
    assert float(p_static) > 0  # compressed crystal: positive pressure, compressive (negative) stress
    voigt = PM.build("observable", "stress", {"kinetic": "none"}).per_frame(pot, frame, nbrs)
    assert np.all(np.asarray(voigt[:3]) < 0)
    p_T = PM.build("observable", "stress", {"output": "pressure"}).per_frame(pot, frame, nbrs)
    n_kt_v = conf.n_atoms * BOLTZMANN_EV_PER_K * T / float(conf.volume())
    np.testing.assert_allclose(float(p_T - p_static), n_kt_v, rtol=1e-12)
    np.testing.assert_allclose(float(p_T), float(pressure(pot, conf, nbrs, kT=BOLTZMANN_EV_PER_K * T)), rtol=1e-12)
    # velocities: kinetic stress (1/V) Σ m v⊗v enters with a minus sign (tensile positive)
    v = jax.random.normal(jax.random.PRNGKey(0), conf.positions.shape)
    fr_v = Frame(conf, v, jnp.asarray(masses), StatePoint(T))
    tens = PM.build("observable", "stress", {"output": "tensor", "kinetic": "velocities"}).per_frame(pot, fr_v, nbrs)
    tens0 = PM.build("observable", "stress", {"output": "tensor", "kinetic": "none"}).per_frame(pot, fr_v, nbrs)
    kin = np.einsum("n,ni,nj->ij", np.asarray(masses), np.asarray(v), np.asarray(v)) / float(conf.volume())
    np.testing.assert_allclose(np.asarray(tens0 - tens), kin, rtol=1e-10)
    obs = PM.build("observable", "stress", {})
    assert obs.unit == "GPa" and np.isclose(float(obs.to_user(gpa_to_internal(1.0))), 1.0)


def test_voigt_round_trip_and_strain():
    t = np.array([[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]])
    np.testing.assert_array_equal(np.asarray(tensor_to_voigt(t)), [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(np.asarray(voigt_to_tensor(tensor_to_voigt(t))), t)
    e = strain_from_voigt(jnp.array([0.0, 0.0, 0.0, 0.2, 0.0, 0.0]))
    assert float(e[1, 2]) == float(e[2, 1]) == 0.1  # engineering shear


def test_voigt_moduli():
    # isotropic solid written as cubic / hexagonal constants: K = λ + 2μ/3, G = μ
    lam, mu = 60.0, 30.0
    k, g, nu = voigt_moduli_cubic(lam + 2 * mu, lam, mu)
    assert np.allclose([k, g, nu], [lam + 2 * mu / 3, mu, lam / (2 * (lam + mu))])
    k, g, nu = voigt_moduli_hexagonal(lam + 2 * mu, lam, lam, lam + 2 * mu, mu)
    assert np.allclose([k, g, nu], [lam + 2 * mu / 3, mu, lam / (2 * (lam + mu))])


def test_lattice_constants_hcp_orthohexagonal_and_general():
    a, c = 3.76, 6.14
    atoms = bulk("Ar", "hcp", a=a, c=c, orthorhombic=True).repeat((4, 2, 3))
    conf, masses = from_ase(atoms)
    fr = static_frame(conf, masses)
    hexa = PM.build("observable", "lattice_constants", {"lattice": "hexagonal", "repeats": [4, 2, 3]})
    np.testing.assert_allclose(np.asarray(hexa.per_frame(None, fr, None)), [a, c, c / a], rtol=1e-12)
    prim = from_ase(bulk("Ar", "hcp", a=a, c=c).repeat((2, 2, 2)))[0]
    hp = PM.build("observable", "lattice_constants", {"lattice": "hexagonal", "repeats": [2, 2, 2],
                                                      "hexagonal_cell": "primitive"})
    np.testing.assert_allclose(np.asarray(hp.per_frame(None, static_frame(prim, masses[:16]), None)), [a, c, c / a])
    gen = PM.build("observable", "lattice_constants", {"lattice": "general", "repeats": [2, 2, 2]})
    np.testing.assert_allclose(np.asarray(gen.per_frame(None, static_frame(prim, masses[:16]), None)),
                               [a, a, c, 90, 90, 120], rtol=1e-12)
    with pytest.raises(Exception):
        PM.build("observable", "lattice_constants", {"lattice": "cubic", "repeat": [1, 1, 1]})  # typo → error


def test_energy_volume_curve_bulk_modulus_matches_born_constants():
    pot = lj()
    conf, _ = from_ase(bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 2)))
    curve = energy_volume_curve(pot, conf, np.linspace(0.985, 1.015, 9))
    fit = fit_birch_murnaghan(curve.volumes, curve.energies)
    assert curve.volumes.shape == (9,) and np.all(np.diff(curve.volumes) > 0)
    s0 = (fit["V0"] / float(conf.volume())) ** (1 / 3)
    c0 = conf.replace(positions=conf.positions * s0, box=conf.box * s0)
    _, cb = born_terms(pot, c0, nb.allocate(c0.positions, c0.box, pot.cutoff, 0.5))
    cb = np.asarray(pressure_to_gpa(cb))
    k_born = (cb[0, 0] + 2 * cb[0, 1]) / 3  # at zero pressure, K = (C11 + 2 C12)/3
    np.testing.assert_allclose(fit["B0_GPa"], k_born, rtol=2e-3)
    assert 5 < fit["B0_prime"] < 12
