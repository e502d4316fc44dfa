"""EAM tables (funcfl, setfl, fs): readers, energies/forces/stress against ASE, errors, plugin.

Reference: ASE's `ase.calculators.eam.EAM` reading the same files.  ASE interpolates with scipy
cubic splines (and splines φ = rφ/r), fusepot with LAMMPS' Hermite scheme (rφ, then /r); on the
fine tables written here (Δr ≈ 1e-3 Å) the two agree to ~1e-10 relative, so we ask for 1e-7.
"""
import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.eam import EAM as AseEAM
from ase.units import Bohr, Hartree

from fusepot.core import mechanics
from fusepot.core.neighbors import allocate
from fusepot.core.plugins import BuildContext, get_plugin_manager
from fusepot.core.system import Configuration, from_ase
from fusepot.plugins.classical.eam import (EAM, FUNCFL_HARTREE_BOHR, EAMTables, build_eam, EAMParams, knot_slopes,
                                           read_eam, write_eam)

RTOL = 1e-7  # fusepot vs ASE (different spline schemes on fine tables)
CUT = 5.0
NR, NRHO = 5001, 2001
DR = CUT / (NR - 1)

# Johnson-type analytic functions with a smooth cutoff ψ(x) = x⁴/(1+x⁴), x = (r - r_c)/h
ELEM = {  # r_e (Å), f_e, β, A (eV), α, B (eV), κ, E0 (eV), ρ_e, mass, Z
    "Cu": (2.556, 1.00, 6.0, 0.50, 8.5, 0.75, 4.3, 3.5, 12.0, 63.546, 29),
    "Ni": (2.489, 1.20, 6.5, 0.60, 8.8, 0.85, 4.6, 4.4, 14.0, 58.693, 28),
}


def _psi(r, h=0.8):
    x = np.minimum(r - CUT, 0.0) / h
    return x ** 4 / (1.0 + x ** 4)


def _density(el, r, scale=1.0):
    re, fe, beta = ELEM[el][:3]
    return scale * fe * np.exp(-beta * (r / re - 1.0)) * _psi(r)


def _phi(a, b, r):
    def one(el):
        re, _, _, A, al, B, ka = ELEM[el][:7]
        return A * np.exp(-al * (r / re - 1.0)) - B * np.exp(-ka * (r / re - 1.0))

    return 0.5 * (one(a) + one(b)) * _psi(r)


def _embed(el, rho):
    e0, rhoe = ELEM[el][7:9]
    return -e0 * np.sqrt(rho / rhoe + 0.05) + 0.1 * e0 * (rho / rhoe) ** 2


def make_tables(elements, fs=False, drho=None):
    r = np.arange(NR) * DR
    drho = drho or 3.0 * max(v[8] for v in ELEM.values()) / (NRHO - 1)  # one grid: fewer jit compiles
    rho = np.arange(NRHO) * drho
    n = len(elements)
    if fs:  # host-dependent densities: ρ_βα = ρ_β · (1 + 0.3 β + 0.15 α), all four different
        dens = np.array([[_density(b, r, 1.0 + 0.3 * ib + 0.15 * ia) for ia in range(n)]
                         for ib, b in enumerate(elements)])
    else:
        dens = np.array([[_density(b, r)] for b in elements])
    rphi = np.array([[r * _phi(a, b, r) for b in elements] for a in elements])
    return EAMTables(list(elements), [ELEM[e][10] for e in elements], [ELEM[e][9] for e in elements], drho, DR, CUT,
                     np.array([_embed(e, rho) for e in elements]), dens, rphi, [(3.6, "fcc")] * n,
                     ["test tables", "", ""])


def write_funcfl(path, el="Cu"):
    t = make_tables([el])
    r = np.arange(NR) * DR
    z = 0.6 * np.exp(-1.5 * (r / ELEM[el][0] - 1.0)) * _psi(r)  # effective charge, smooth and ≥ 0
    lines = ["funcfl test", f"{ELEM[el][10]} {ELEM[el][9]} 3.615 fcc", f"{NRHO} {t.drho!r} {NR} {DR!r} {CUT!r}"]
    lines += ["%.16e" % v for v in np.concatenate([t.embedding[0], z, t.density[0, 0]])]
    path.write_text("\n".join(lines) + "\n")
    return t, z


def alloy_atoms(seed=0, elements=("Cu", "Ni")):
    atoms = bulk("Cu", "fcc", a=3.58, cubic=True).repeat((2, 2, 2))
    rng = np.random.default_rng(seed)
    atoms.set_chemical_symbols(rng.choice(list(elements), len(atoms)))
    atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.01 * rng.normal(size=(3, 3))), scale_atoms=True)
    return atoms


def ase_results(path, atoms, form=None):
    calc = AseEAM(potential=str(path), form=form)
    return ase_calc_results(calc, atoms)


def ase_calc_results(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)


@jax.jit
def _efs(pot, conf, nbrs):
    e, f = mechanics.energy_and_forces(pot, conf, nbrs)
    return e, f, mechanics.born_stress(pot, conf, nbrs)


_energy = jax.jit(lambda pot, conf, nbrs: pot.energy(conf, nbrs))


def neighbors(conf, pot, **kw):
    # a fixed capacity keeps array shapes, hence jit compilations, shared between tests
    return allocate(conf.positions, conf.box, pot.cutoff, skin=0.3, min_capacity=4096, **kw)


def fusepot_results(pot, atoms, species):
    conf, _ = from_ase(atoms, {s: i for i, s in enumerate(species)})
    e, f, s = _efs(pot, conf, neighbors(conf, pot))
    return float(e), np.asarray(f), np.asarray(s)


def assert_matches_ase(ours, ref, n_atoms):
    (e, f, s), (e_ref, f_ref, s_ref) = ours, ref
    np.testing.assert_allclose(e, e_ref, rtol=RTOL)
    fscale = np.max(np.abs(f_ref))
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=RTOL * fscale)
    np.testing.assert_allclose(s, s_ref, rtol=0, atol=RTOL * np.max(np.abs(s_ref)))
    assert fscale > 0.1 and np.max(np.abs(s_ref)) > 1e-3  # a non-trivial test configuration


@pytest.fixture(scope="module")
def alloy_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eam") / "CuNi.eam.alloy"
    write_eam(path, make_tables(["Cu", "Ni"]))
    return path


def test_alloy_matches_ase(alloy_file):
    atoms = alloy_atoms(0)
    pot = EAM.from_tables(read_eam(alloy_file), ["Cu", "Ni"])
    calc = AseEAM(potential=str(alloy_file))
    assert_matches_ase(fusepot_results(pot, atoms, ["Cu", "Ni"]), ase_calc_results(calc, atoms), len(atoms))
    conf, _ = from_ase(atoms, {"Cu": 0, "Ni": 1})
    rho = jax.jit(EAM.electron_density)(pot, conf, neighbors(conf, pot))
    np.testing.assert_allclose(rho, calc.total_density, rtol=RTOL)


def test_fs_matches_ase(tmp_path):
    path = tmp_path / "CuNi.eam.fs"
    tables = make_tables(["Cu", "Ni"], fs=True)
    write_eam(path, tables)
    read = read_eam(path)
    assert read.density.shape == (2, 2, NR)
    np.testing.assert_array_equal(read.density, tables.density)
    atoms = alloy_atoms(1)
    pot = EAM.from_tables(read, ["Cu", "Ni"])
    ours = fusepot_results(pot, atoms, ["Cu", "Ni"])
    assert_matches_ase(ours, ase_results(path, atoms), len(atoms))
    # the per-pair densities matter: the alloy reading of the β-only densities gives another energy
    alloy = dataclasses.replace(tables, density=tables.density[:, :1])
    assert abs(fusepot_results(EAM.from_tables(alloy), atoms, ["Cu", "Ni"])[0] - ours[0]) > 1e-2


def test_funcfl_matches_setfl_and_ase(tmp_path):
    path = tmp_path / "Cu_test.eam"
    tables, z = write_funcfl(path)
    read = read_eam(path)
    assert read.elements == ["Cu"] and read.numbers == [29]
    np.testing.assert_allclose(read.rphi[0, 0], FUNCFL_HARTREE_BOHR * z * z, rtol=1e-15)
    atoms = bulk("Cu", "fcc", a=3.62, cubic=True).repeat((2, 2, 2))
    atoms.positions += np.random.default_rng(2).normal(scale=0.08, size=atoms.positions.shape)
    ours = fusepot_results(EAM.from_tables(read, ["Cu"]), atoms, ["Cu"])
    # same functions written as setfl (r·φ = 27.2·0.529·Z²): identical energies
    setfl = tmp_path / "Cu_test.eam.alloy"
    write_eam(setfl, dataclasses.replace(tables, rphi=read.rphi))
    np.testing.assert_allclose(fusepot_results(EAM.from_tables(read_eam(setfl)), atoms, ["Cu"])[0], ours[0],
                               rtol=1e-13)
    # ASE converts Z with the exact Hartree·Bohr; rescale its pair table to LAMMPS' 27.2·0.529
    calc = AseEAM(potential=str(path))
    calc.rphi_data = calc.rphi_data * FUNCFL_HARTREE_BOHR / (Hartree * Bohr)
    calc.set_splines()
    assert_matches_ase(ours, ase_calc_results(calc, atoms), len(atoms))


def test_forces_are_minus_gradient_and_padding(alloy_file):
    atoms = alloy_atoms(3)
    pot = EAM.from_tables(read_eam(alloy_file), ["Cu", "Ni"])
    conf, _ = from_ase(atoms, {"Cu": 0, "Ni": 1})
    nbrs = neighbors(conf, pot)
    energy = lambda c: _energy(pot, c, nbrs)
    _, f, s = (np.asarray(x) for x in _efs(pot, conf, nbrs))
    h = 1e-5
    for i, k in [(0, 0), (5, 1), (17, 2), (30, 0)]:
        dp = jnp.zeros_like(conf.positions).at[i, k].set(h)
        fd = -(energy(conf.replace(positions=conf.positions + dp)) - energy(conf.replace(positions=conf.positions - dp)))
        assert abs(fd / (2 * h) - f[i, k]) < 1e-6 * max(1.0, abs(f[i, k]))
    # stress = (1/V) dU/dε by central differences
    eps = np.zeros((3, 3))
    eps[0, 1] = eps[1, 0] = 1e-6
    fd = (energy(conf.strained(jnp.asarray(eps))) - energy(conf.strained(jnp.asarray(-eps)))) / (2e-6 * conf.volume())
    np.testing.assert_allclose(2 * s[0, 1], fd, rtol=1e-6)
    # padded atoms (far away, masked) change nothing
    n = conf.n_atoms
    pos = jnp.concatenate([conf.positions, conf.positions[:3] + 0.3])
    padded = Configuration(pos, jnp.concatenate([conf.species, jnp.array([1, 0, 1])]), conf.box,
                           jnp.arange(n + 3) < n)
    pnbrs = neighbors(padded, pot, atom_mask=padded.mask)
    np.testing.assert_allclose(_energy(pot, padded, pnbrs), energy(conf), rtol=1e-13)


def test_species_order_and_subset(alloy_file):
    atoms = alloy_atoms(4)
    ref = fusepot_results(EAM.from_tables(read_eam(alloy_file), ["Cu", "Ni"]), atoms, ["Cu", "Ni"])
    swapped = fusepot_results(EAM.from_tables(read_eam(alloy_file), ["Ni", "Cu"]), atoms, ["Ni", "Cu"])
    np.testing.assert_allclose(swapped[0], ref[0], rtol=1e-13)
    np.testing.assert_allclose(swapped[1], ref[1], atol=1e-12)
    pure = bulk("Ni", "fcc", a=3.52, cubic=True).repeat((2, 2, 2))
    pure.positions += np.random.default_rng(4).normal(scale=0.05, size=pure.positions.shape)
    e_sub = fusepot_results(EAM.from_tables(read_eam(alloy_file), ["Ni"]), pure, ["Ni"])[0]
    np.testing.assert_allclose(e_sub, ase_results(alloy_file, pure)[0], rtol=RTOL)


def test_trainable_leaves_and_round_trip(alloy_file, tmp_path):
    pot = EAM.from_tables(read_eam(alloy_file), ["Cu", "Ni"])
    conf, _ = from_ase(alloy_atoms(5), {"Cu": 0, "Ni": 1})
    nbrs = neighbors(conf, pot)
    leaves = jax.tree_util.tree_leaves(eqx.filter(pot, eqx.is_array))
    assert [x.shape for x in leaves] == [(2, NRHO), (2, 1, NR), (2, 2, NR)]
    g = eqx.filter_jit(eqx.filter_grad(lambda p: p.energy(conf, nbrs)))(pot)
    for name in ("embedding", "density", "rphi"):
        assert np.all(np.isfinite(getattr(g, name))) and np.any(getattr(g, name) != 0)
    # a modified ("trained") model written back reproduces itself
    trained = eqx.tree_at(lambda p: p.rphi, pot, pot.rphi * 1.01)
    out = tmp_path / "trained.eam.alloy"
    write_eam(out, trained.to_tables())
    again = EAM.from_tables(read_eam(out), ["Cu", "Ni"])
    np.testing.assert_allclose(_energy(again, conf, nbrs), _energy(trained, conf, nbrs), rtol=1e-14)


def test_spline_is_c1_and_exact_at_knots():
    f = jnp.asarray(np.random.default_rng(0).normal(size=(1, 12)))
    from fusepot.plugins.classical.eam import _hermite

    s = knot_slopes(f)
    ev = lambda x: _hermite(f, s, (jnp.zeros(x.shape, jnp.int32),), x, 0.5, True)
    grad = jax.jit(jax.vmap(jax.grad(lambda x: ev(x[None])[0])))
    knots = 0.5 * jnp.arange(1, 11)
    np.testing.assert_allclose(ev(knots), f[0, 1:11], rtol=1e-14)
    np.testing.assert_allclose(grad(knots - 1e-9), grad(knots + 1e-9), atol=1e-6)
    np.testing.assert_allclose(grad(knots), s[0, 1:11] / 0.5, rtol=1e-12)
    # linear continuation past the last knot (F(ρ) beyond ρ_max, as in LAMMPS)
    np.testing.assert_allclose(ev(jnp.array([6.5]))[0], f[0, -1] + 2.0 * s[0, -1], rtol=1e-12)


def test_plugin_build_relative_path_and_format(alloy_file):
    pm = get_plugin_manager()
    ctx = BuildContext(species=["Cu"], spec_dir=str(alloy_file.parent))
    pot = pm.build("potential", "eam", {"file": alloy_file.name}, ctx)
    assert isinstance(pot, EAM) and pot.cutoff == CUT and pot.elements == ("Cu",)
    assert pot.masses == (ELEM["Cu"][9],)
    pot2 = pm.build("potential", "eam", {"file": str(alloy_file), "format": "alloy"}, BuildContext(species=["Cu"]))
    assert pot2.embedding.shape == (1, NRHO)
    with pytest.raises(Exception, match="extra"):
        pm.build("potential", "eam", {"file": "x.eam", "cutof": 3.0}, ctx)


def test_missing_element_message(alloy_file):
    with pytest.raises(ValueError, match=r"\['Fe'\] not in the file.*\['Cu', 'Ni'\]") as e:
        build_eam(EAMParams(file=str(alloy_file)), BuildContext(species=["Cu", "Fe"]))
    assert alloy_file.name in str(e.value)


def test_bad_files_messages(alloy_file, tmp_path):
    lines = alloy_file.read_text().splitlines()
    trunc = tmp_path / "trunc.eam.alloy"
    trunc.write_text("\n".join(lines[:3000]) + "\n")
    with pytest.raises(ValueError, match=r"trunc\.eam\.alloy.*file ends in rho\(r\) of Cu") as e:
        read_eam(trunc)
    assert "section from line" in str(e.value)
    bad = tmp_path / "bad.eam.alloy"
    bad_lines = list(lines)
    bad_lines[99] = "1.0x"
    bad.write_text("\n".join(bad_lines) + "\n")
    with pytest.raises(ValueError, match=r"bad\.eam\.alloy, line 100: F\(rho\) of Cu.*'1\.0x'"):
        read_eam(bad)
    header = tmp_path / "hdr.eam.alloy"
    header.write_text("\n".join(lines[:4] + ["2001 0.01 5001 0.001"] + lines[5:]) + "\n")
    with pytest.raises(ValueError, match=r"line 5: grid line"):
        read_eam(header)
    # an alloy file read as fs runs out of data in the per-pair densities / pair tables
    with pytest.raises(ValueError, match=r"(file ends|cannot read)"):
        read_eam(alloy_file, "fs")
    with pytest.raises(ValueError, match="cannot tell the format"):
        noext = tmp_path / "noext.txt"
        noext.write_text(alloy_file.read_text())
        read_eam(noext)
