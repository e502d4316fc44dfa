"""Evaluation tools: phonons (phonopy via the ASE calculator) and energy–volume curves, checked
against an independent lattice-sum model of truncated Lennard-Jones fcc argon."""
import itertools

import numpy as np
import pytest
from ase.build import bulk

from fusepot.core.calculator import FusepotCalculator
from fusepot.plugins.evaluation.ev_curve import (birch_murnaghan_fit, compare_energies, energy_volume_curve,
                                                 energy_volume_curves, plot_ev_curves, titanium_structures)
from fusepot.plugins.evaluation.phonons import dispersion, force_constants, phonons, plot_phonons
from helpers import lj_argon

EPS, SIG, RC_SIG = 0.0104, 3.40, 2.5  # eV, Å, cutoff in σ (helpers.lj_argon)
RC = RC_SIG * SIG
MASS_AR = 39.948  # amu (ASE)
# sqrt(eV / (amu Å²)) in 1/s, divided by 2π and 1e12: eigenvalue (eV/Å²/amu) -> THz
EV_AMU_A2_TO_THZ = np.sqrt(1.602176634e-19 / 1.66053906660e-27) / 1e-10 / (2 * np.pi) / 1e12


def fcc_vectors(a, rmax=RC):
    """All fcc lattice vectors R ≠ 0 with |R| < rmax (conventional constant a)."""
    prim = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], float)
    n = int(np.ceil(2 * rmax / a)) + 2
    ijk = np.array(list(itertools.product(range(-n, n + 1), repeat=3)), float)
    r = ijk @ prim
    d = np.linalg.norm(r, axis=1)
    return r[(d > 0) & (d < rmax)]


def lattice_energy(a):
    """Energy per atom of truncated-and-shifted LJ fcc (eV), by direct lattice sum."""
    d = np.linalg.norm(fcc_vectors(a), axis=1)
    lj = lambda r: 4 * EPS * ((SIG / r) ** 12 - (SIG / r) ** 6)  # noqa: E731
    return 0.5 * np.sum(lj(d) - lj(RC))


def lattice_frequencies(a, q_cart):
    """Harmonic frequencies (THz) of the monatomic fcc crystal at Cartesian q (1/Å, with 2π):
    D(q) = (1/m) Σ_R H(R) (1 − cos q·R), H = φ'' r̂r̂ + (φ'/r)(1 − r̂r̂) the pair Hessian."""
    R = fcc_vectors(a)
    r = np.linalg.norm(R, axis=1)
    x6 = (SIG / r) ** 6
    d1 = 4 * EPS * (-12 * x6 ** 2 + 6 * x6) / r
    d2 = 4 * EPS * (156 * x6 ** 2 - 42 * x6) / r ** 2
    u = R / r[:, None]
    uu = u[:, :, None] * u[:, None, :]
    H = d2[:, None, None] * uu + (d1 / r)[:, None, None] * (np.eye(3) - uu)
    D = np.einsum("n,nij->ij", 1 - np.cos(R @ q_cart), H) / MASS_AR
    return np.sqrt(np.clip(np.linalg.eigvalsh(D), 0, None)) * EV_AMU_A2_TO_THZ


def golden_min(f, lo, hi, tol=1e-10):
    g = (np.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    while hi - lo > tol:
        if f(c) < f(d):
            hi, d = d, c
            c = hi - g * (hi - lo)
        else:
            lo, c = c, d
            d = lo + g * (hi - lo)
    return 0.5 * (lo + hi)


@pytest.fixture(scope="module")
def calc():
    return FusepotCalculator(lj_argon(EPS, SIG, RC_SIG), ["Ar"])


# -- phonons ----------------------------------------------------------------------------------
def test_fcc_phonons_match_lattice_dynamics(calc, tmp_path):
    a = 5.26
    atoms = bulk("Ar", "fcc", a=a)  # primitive cell; X, L are commensurate with the 4×4×4 supercell
    res = phonons(atoms, calc, supercell_matrix=(4, 4, 4), path="GXWKGL", npoints=9, mesh=(10, 10, 10))
    disp = res.dispersion
    assert disp.frequencies.shape == (5 * 9, 3)  # Γ-X, X-W, W-K, K-Γ, Γ-L
    pos, labels = disp.ticks
    assert labels == ["Γ", "X", "W", "K", "Γ", "L"] and np.all(np.diff(pos) > 0)
    recip = 2 * np.pi * np.linalg.inv(atoms.cell.array).T  # rows b_i (with 2π)
    for row in (disp.segments[0][1] - 1, disp.segments[-1][1] - 1):  # X and L
        q = disp.qpoints[row]
        ref = lattice_frequencies(a, q @ recip)
        np.testing.assert_allclose(np.sort(disp.frequencies[row]), ref, rtol=1e-3)
    # the zone-boundary frequencies are not trivially small
    assert np.max(disp.frequencies) > 1.5
    # DOS per mode: unit area, nothing below zero beyond the smearing-free tetrahedron tail
    dos = res.dos
    area = np.trapezoid(dos.density, dos.frequencies) if hasattr(np, "trapezoid") else np.trapz(dos.density, dos.frequencies)
    assert area == pytest.approx(1.0, abs=5e-3)
    assert dos.n_modes == 3 and np.all(dos.density >= -1e-12)
    png = plot_phonons(tmp_path / "ph.png", disp, dos, experimental_dos=(dos.frequencies, 2 * dos.density),
                       experimental_dispersion=(disp.segment_distance(0, [0.25, 0.5]), [0.8, 1.2]), title="LJ Ar")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_acoustic_modes_vanish_at_gamma_without_symmetrisation(calc):
    phonon = force_constants(bulk("Ar", "fcc", a=5.26), calc, supercell_matrix=(4, 4, 4), symmetrize=False)
    disp = dispersion(phonon, path="GX", npoints=3)
    assert np.all(np.abs(disp.frequencies[0]) < 1e-3)


def test_hcp_default_path_and_errors(calc):
    # ideal-c/a hcp argon: the paper's path Γ–M–K–Γ–A on a small supercell
    atoms = bulk("Ar", "hcp", a=3.75, c=3.75 * np.sqrt(8 / 3))
    res = phonons(atoms, calc, supercell_matrix=(3, 3, 2), npoints=5, mesh=None)
    assert res.dos is None
    assert res.dispersion.ticks[1] == ["Γ", "M", "K", "Γ", "A"]
    assert res.dispersion.frequencies.shape == (4 * 5, 6)
    np.testing.assert_allclose(res.dispersion.qpoints[[4, 9]], [[0.5, 0, 0], [1 / 3, 1 / 3, 0]], atol=1e-12)
    assert np.all(np.abs(res.dispersion.frequencies[0, :3]) < 1e-3)
    assert np.min(res.dispersion.frequencies[1:]) > -1e-3  # stable
    with pytest.raises(ValueError, match="unknown special point 'X'"):
        dispersion(res.phonopy, path="GX")
    custom = dispersion(res.phonopy, path=[["G", "Q"]], npoints=3, special_points={"Q": [0.25, 0, 0]})
    assert custom.ticks[1] == ["Γ", "Q"]


# -- energy–volume ----------------------------------------------------------------------------
def test_ev_curve_minimum_and_bulk_modulus_match_lattice_sums(calc, tmp_path):
    a_min = golden_min(lattice_energy, 5.0, 5.6)
    v_min = a_min ** 3 / 4
    atoms = bulk("Ar", "fcc", a=a_min)
    scalings = np.linspace(0.95, 1.05, 11)
    curve = energy_volume_curve(atoms, calc, scalings, name="fcc")
    # energies are the lattice sums, volumes are per atom
    np.testing.assert_allclose(curve.volumes, v_min * scalings, rtol=1e-12)
    np.testing.assert_allclose(curve.energies, [lattice_energy((4 * v) ** (1 / 3)) for v in curve.volumes], rtol=1e-10)
    fit = birch_murnaghan_fit(curve.volumes, curve.energies)
    assert (4 * fit.v0) ** (1 / 3) == pytest.approx(a_min, rel=2e-4)
    assert fit.e0 == pytest.approx(lattice_energy(a_min), rel=1e-4)
    # B = V d²E/dV² by central differences of the lattice sum at the minimum, in GPa
    h = 1e-3 * v_min
    e = lambda v: lattice_energy((4 * v) ** (1 / 3))  # noqa: E731
    b_fd = v_min * (e(v_min + h) - 2 * e(v_min) + e(v_min - h)) / h ** 2 * 160.21766208
    assert fit.b0_gpa == pytest.approx(b_fd, rel=0.02)
    assert 3 < fit.b0_prime < 15 and fit.rms_residual < 1e-4
    np.testing.assert_allclose(fit.energy(curve.volumes), curve.energies, atol=5 * fit.rms_residual)
    with pytest.raises(ValueError, match="no minimum"):
        birch_murnaghan_fit(curve.volumes[:5], curve.energies[:5])


def test_compare_and_plot_several_structures(calc, tmp_path):
    structures = {"fcc": bulk("Ar", "fcc", a=5.25), "bcc": bulk("Ar", "bcc", a=4.2)}
    curves = energy_volume_curves(structures, calc, np.linspace(0.92, 1.08, 7))
    assert set(curves) == {"fcc", "bcc"} and curves["bcc"].name == "bcc"
    # fcc is the LJ ground state
    assert curves["fcc"].energies.min() < curves["bcc"].energies.min()
    shift = 0.05  # a reference with another energy zero
    ref = {k: (c.volumes, c.energies + shift) for k, c in curves.items()}
    absolute = compare_energies(curves, ref)
    assert absolute["bcc"]["rmse_mev_per_atom"] == pytest.approx(50.0, rel=1e-9)
    aligned = compare_energies(curves, ref, zero="fcc")
    assert aligned["bcc"]["max_mev_per_atom"] < 1e-9 and aligned["fcc"]["mae_mev_per_atom"] < 1e-9
    tilted = {"fcc": ref["fcc"], "bcc": (ref["bcc"][0], ref["bcc"][1] + 0.01)}
    assert compare_energies(curves, tilted, zero="fcc")["bcc"]["rmse_mev_per_atom"] == pytest.approx(10.0, rel=1e-9)
    assert compare_energies(curves, tilted, zero="each")["bcc"]["rmse_mev_per_atom"] < 1e-9
    with pytest.raises(ValueError, match="volumes differ"):
        compare_energies(curves, {"fcc": (ref["fcc"][0] * 1.01, ref["fcc"][1])})
    with pytest.raises(ValueError, match="no model curve"):
        compare_energies(curves, {"hcp": ref["fcc"]})
    png = plot_ev_curves(tmp_path / "ev.png", curves, ref, zero="fcc", title="LJ Ar")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_titanium_structures():
    s = titanium_structures()
    assert {k: len(v) for k, v in s.items()} == {"hcp": 2, "bcc": 1, "fcc": 1}
    assert s["hcp"].get_volume() / 2 == pytest.approx(np.sqrt(3) / 4 * 2.951 ** 2 * 4.686, rel=1e-12)
    assert all(set(a.get_chemical_symbols()) == {"Ti"} for a in s.values())


def test_docs_snippets_run():
    """docs/evaluation_tools.md's python blocks run as written (one namespace)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "evaluation_tools.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    ns = {"__name__": "docs_evaluation_tools"}
    for code in blocks:
        exec(compile(code, "evaluation_tools.md", "exec"), ns)
