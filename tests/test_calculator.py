"""FusepotCalculator: the ASE contract against core.mechanics, finite differences, ASE's own EAM
calculator, an ASE optimiser, neighbor-list reuse/overflow, and loading a run directory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.eam import EAM as AseEAM
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.optimize import BFGS

from fusepot.core import mechanics
from fusepot.core import neighbors as nb
from fusepot.core.calculator import FusepotCalculator
from fusepot.core.checkpoint import CheckpointError
from fusepot.core.plugins import BuildContext, get_plugin_manager
from fusepot.core.system import from_ase
from helpers import SMALL_RUN_SPEC, lj_argon, make_run


def strained_argon(reps=2, a=5.2, seed=1):
    atoms = bulk("Ar", "fcc", a=a, cubic=True).repeat(reps)
    atoms.rattle(0.05, seed=seed)
    strain = np.array([[0.01, 0.02, 0.0], [0.02, -0.01, 0.005], [0.0, 0.005, 0.0]])
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    return atoms


def test_results_equal_core_mechanics():
    pot, atoms = lj_argon(), strained_argon()
    atoms.calc = FusepotCalculator(pot, ["Ar"])
    conf, _ = from_ase(atoms)
    nbrs = nb.allocate(conf.positions, conf.box, pot.cutoff)
    u, f, w = jax.jit(mechanics.energy_forces_virial)(pot, conf, nbrs)
    sigma = np.asarray(jax.jit(mechanics.born_stress)(pot, conf, nbrs))
    assert atoms.get_potential_energy() == pytest.approx(float(u), rel=1e-12)
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(float(u), rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), np.asarray(f), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), -np.asarray(w) / atoms.get_volume(), rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), sigma, rtol=1e-10, atol=1e-16)
    s = atoms.get_stress()
    assert s.shape == (6,)
    np.testing.assert_allclose(s, sigma.flat[[0, 4, 8, 5, 2, 1]], rtol=1e-10, atol=1e-16)  # xx yy zz yz xz xy


def test_stress_and_forces_match_finite_differences():
    atoms = strained_argon()
    atoms.calc = FusepotCalculator(lj_argon(), ["Ar"])
    stress = atoms.get_stress()
    num = calculate_numerical_stress(atoms, eps=1e-6)
    assert np.max(np.abs(stress)) > 1e-4  # a strained, rattled cell: not a trivial zero
    np.testing.assert_allclose(stress, num, rtol=1e-5, atol=1e-5 * np.max(np.abs(num)))
    forces = atoms.get_forces()
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=1e-4), rtol=1e-5,
                               atol=1e-5 * np.max(np.abs(forces)))
    # the 12 strained cells were served by one neighbor list (images still cover the cutoff)
    assert atoms.calc.n_allocations == 1


def test_multispecies_eam_matches_ase_eam(tmp_path):
    from test_eam import alloy_atoms, make_tables  # the analytic Cu-Ni tables of the EAM tests

    from fusepot.plugins.classical.eam import EAM, read_eam, write_eam

    path = tmp_path / "CuNi.eam.alloy"
    write_eam(path, make_tables(["Cu", "Ni"]))
    atoms = alloy_atoms()
    ref = atoms.copy()
    ref.calc = AseEAM(potential=str(path))
    # species in a non-alphabetical order: the calculator must map symbols through `species`
    species = ["Ni", "Cu"]
    atoms.calc = FusepotCalculator(EAM.from_tables(read_eam(path), species), species)
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), rel=1e-7)
    np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(atoms.get_stress(), ref.get_stress(), rtol=1e-6, atol=1e-8)


def test_neighbor_list_reused_reallocated_on_overflow_and_new_cells():
    pot = lj_argon()
    calc = FusepotCalculator(pot, ["Ar"], skin=0.3)
    atoms = bulk("Ar", "fcc", a=6.0, cubic=True).repeat(2)  # dilute: few pairs per atom
    atoms.calc = calc
    atoms.get_potential_energy()
    for k in range(3):  # small moves: same list, no reallocation
        atoms.positions[0] += 0.02
        atoms.get_forces()
    assert calc.n_allocations == 1
    # compress by 15 %: more pairs than the capacity -> overflow flag -> reallocate, not drop
    atoms.set_cell(atoms.cell * 0.85, scale_atoms=True)
    e = atoms.get_potential_energy()
    assert calc.n_allocations >= 2 and not bool(calc.nbrs.overflow)
    fresh = atoms.copy()
    fresh.calc = FusepotCalculator(pot, ["Ar"])
    assert e == pytest.approx(fresh.get_potential_energy(), rel=1e-12)
    np.testing.assert_allclose(atoms.get_stress(), fresh.get_stress(), rtol=1e-10, atol=1e-14)
    # a different atom count and a cell smaller than the cutoff (many images) also work
    small = bulk("Ar", "fcc", a=5.26)  # 1-atom primitive cell, widths < 2 r_c
    small.calc = calc
    cubic = bulk("Ar", "fcc", a=5.26, cubic=True)
    cubic.calc = FusepotCalculator(pot, ["Ar"])
    assert small.get_potential_energy() * 4 == pytest.approx(cubic.get_potential_energy(), rel=1e-10)
    np.testing.assert_allclose(small.get_stress(), cubic.get_stress(), rtol=1e-9, atol=1e-14)


def test_compiles_once_per_atom_count(monkeypatch):
    import fusepot.core.calculator as calculator_module

    traces = []

    def counting(*args):
        traces.append(1)  # runs only while jax traces (compiles) the evaluation
        return mechanics.energy_forces_virial(*args)

    monkeypatch.setattr(calculator_module, "energy_forces_virial", counting)
    atoms = bulk("Ar", "fcc", a=5.26).repeat((3, 3, 2))  # an atom count no other test uses
    atoms.calc = FusepotCalculator(lj_argon(), ["Ar"])
    rng = np.random.default_rng(0)
    for _ in range(5):  # phonopy-like displaced copies: same shapes, one compilation
        atoms.positions += rng.normal(scale=0.01, size=atoms.positions.shape)
        atoms.get_forces()
    assert len(traces) == 1 and atoms.calc.n_allocations == 1


def test_bfgs_relaxes_rattled_fcc_to_the_perfect_lattice():
    pot = lj_argon()
    perfect = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)
    perfect.calc = FusepotCalculator(pot, ["Ar"])
    e0 = perfect.get_potential_energy()
    atoms = perfect.copy()
    atoms.rattle(0.1, seed=3)
    atoms.calc = FusepotCalculator(pot, ["Ar"])
    assert atoms.get_potential_energy() > e0 + 1e-3
    opt = BFGS(atoms, logfile=None)
    assert opt.run(fmax=1e-4, steps=200)
    assert np.max(np.linalg.norm(atoms.get_forces(), axis=1)) < 1e-4
    assert atoms.get_potential_energy() == pytest.approx(e0, abs=1e-7)


def test_float32_and_input_errors():
    atoms = strained_argon()
    ref = atoms.copy()
    ref.calc = FusepotCalculator(lj_argon(), ["Ar"])
    atoms.calc = FusepotCalculator(lj_argon(), ["Ar"], dtype="float32")
    assert atoms.calc.dtype == jnp.float32
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), rel=1e-5)
    np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), atol=1e-5)
    kr = atoms.copy()
    kr.symbols[0] = "Kr"
    kr.calc = FusepotCalculator(lj_argon(), ["Ar"])
    with pytest.raises(ValueError, match=r"\['Kr'\] are not among the potential's species \['Ar'\]"):
        kr.get_potential_energy()
    slab = atoms.copy()
    slab.pbc = (True, True, False)
    slab.calc = FusepotCalculator(lj_argon(), ["Ar"])
    with pytest.raises(ValueError, match="periodic"):
        slab.get_potential_energy()
    with pytest.raises(ValueError, match="distinct"):
        FusepotCalculator(lj_argon(), ["Ar", "Ar"])
    with pytest.raises(TypeError, match="Potential"):
        FusepotCalculator(object(), ["Ar"])


def test_dimenet_pp_with_per_atom_energies():
    pm = get_plugin_manager()
    if "dimenet_pp" not in pm.names("potential"):
        pytest.skip("dimenet_pp plugin not available")
    pot = pm.build("potential", "dimenet_pp", {
        "cutoff": 4.0, "embed_size": 8, "out_embed_size": 8, "type_embed_size": 4, "int_embed_size": 4,
        "basis_embed_size": 4, "n_interaction_blocks": 1, "n_radial": 3, "n_spherical": 3}, BuildContext(species=["Ti"]))
    atoms = bulk("Ti", "hcp", a=2.95, c=4.68).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=0)
    atoms.calc = FusepotCalculator(pot, ["Ti"])
    assert "energies" in atoms.calc.implemented_properties
    assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy(), rel=1e-10)
    stress = atoms.get_stress()
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-6), rtol=1e-5,
                               atol=1e-5 * np.max(np.abs(stress)))


# -- from_run ---------------------------------------------------------------------------------
def test_from_run_loads_trained_parameters(tmp_path):
    run = make_run(tmp_path / "run")
    calc = FusepotCalculator.from_run(run)
    assert calc.species == ["Ar"] and calc.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(calc.potential.epsilon), [[0.0110]], rtol=1e-12)
    atoms = strained_argon()
    atoms.calc = calc
    ref = atoms.copy()
    # the cutoff is a static setting: it stays the spec's 2.5 × 3.35 Å
    assert calc.potential.cutoff == pytest.approx(2.5 * 3.35)
    ref.calc = FusepotCalculator(lj_argon(epsilon=0.0110, sigma=3.30, cutoff=2.5 * 3.35 / 3.30), ["Ar"])
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), rel=1e-12)


def test_from_run_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="spec.resolved.yaml not found"):
        FusepotCalculator.from_run(tmp_path)
    run = make_run(tmp_path / "run")
    (run / "final_potential.npz").unlink()
    with pytest.raises(CheckpointError, match=r"final_potential.npz not found"):
        FusepotCalculator.from_run(run)
    # a two-species spec: the stored 1×1 LJ matrices do not fit the 2×2 the spec builds
    two = SMALL_RUN_SPEC.replace("cubic: true}}", "cubic: true}, species: [Ar, Kr]}")
    run2 = make_run(tmp_path / "two_species", two)
    with pytest.raises(CheckpointError, match=r"final_potential.npz: .*log_epsilon has shape \(1, 1\).*\(2, 2\)"):
        FusepotCalculator.from_run(run2)
    # a checkpoint of a different model: missing entries
    run3 = make_run(tmp_path / "other_model", trained={"weights": np.zeros(3)})
    with pytest.raises(CheckpointError, match=r"final_potential.npz has no entry"):
        FusepotCalculator.from_run(run3)


def test_docs_snippets_run():
    """docs/calculator.md's python blocks run as written (one namespace, like a reader's session)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "calculator.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    ns = {"__name__": "docs_calculator"}
    for code in blocks:
        exec(compile(code, "calculator.md", "exec"), ns)
