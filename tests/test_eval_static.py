"""Static report sections (plugins/evaluation/static_tasks.py): dft_errors, ev_curves, phonons,
on Lennard-Jones argon (fast, float64), one run through `fusepot evaluate`."""
from __future__ import annotations

import itertools
import json
import textwrap

import numpy as np
import pytest
from ase.build import bulk

from fusepot.core.cli import main
from fusepot.core.datasets import Dataset, Sample
from fusepot.core.evaluation import EvalModel, TaskContext, read_table
from fusepot.core.plugins import get_plugin_manager
from fusepot.core.progress import Progress
from fusepot.core.spec import SpecError, parse_evaluation
from fusepot.core.trainers.dft import EnergyShifted, energy_shift_per_atom, evaluate, label_dataset
from helpers import lj_argon, make_run

EPS, SIG, RC_SIG = 0.0104, 3.40, 2.5
RC = RC_SIG * SIG


def _model(label, eps=EPS, sig=SIG):
    return EvalModel(label, lj_argon(eps, sig, RC_SIG), ["Ar"], np.float64)


def _task(name, params):
    comp = get_plugin_manager().get("evaluation", name)
    return comp.build(comp.params.model_validate(params), None)


def _ctx(tmp_path, name):
    out = tmp_path / name
    out.mkdir(parents=True)
    return TaskContext(out, tmp_path, Progress(enabled=False))


# --- truncated-and-shifted LJ lattice sums (independent of fusepot) ---------------------------
def _lattice_vectors(prim, rmax=RC):
    n = int(np.ceil(rmax / min(np.linalg.norm(prim, axis=1)))) + 2
    ijk = np.array(list(itertools.product(range(-n, n + 1), repeat=3)), float)
    r = np.linalg.norm(ijk @ prim, axis=1)
    return r[(r > 0) & (r < rmax)]


def lattice_energy(structure, v):
    """Energy per atom (eV) of monatomic fcc/bcc LJ argon at volume v (Å³/atom)."""
    if structure == "fcc":
        a = (4 * v) ** (1 / 3)
        prim = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], float)
    else:
        a = (2 * v) ** (1 / 3)
        prim = 0.5 * a * np.array([[-1, 1, 1], [1, -1, 1], [1, 1, -1]], float)
    d = _lattice_vectors(prim)
    lj = lambda r: 4 * EPS * ((SIG / r) ** 12 - (SIG / r) ** 6)  # noqa: E731
    return 0.5 * np.sum(lj(d) - lj(RC))


def _golden_min(f, lo, hi, tol=1e-9):
    g = (np.sqrt(5) - 1) / 2
    while hi - lo > tol:
        c, d = hi - g * (hi - lo), lo + g * (hi - lo)
        if f(c) < f(d):
            hi = d
        else:
            lo = c
    return 0.5 * (lo + hi)


V_FCC = _golden_min(lambda v: lattice_energy("fcc", v), 30.0, 45.0)  # ≈ 36.5 Å³/atom


def _write_reference(path, offset=0.3):
    """Reference E(V) (the lattice sums + an arbitrary energy zero) for fcc and bcc."""
    rows = ["# title: LJ argon lattice sums", "# label: lattice sum", "structure,volume_A3_per_atom,energy_eV_per_atom"]
    for s in ("fcc", "bcc"):
        for x in np.linspace(0.92, 1.08, 9):
            v = V_FCC * x
            rows.append(f"{s},{float(v)!r},{float(lattice_energy(s, v) + offset)!r}")
    path.write_text("\n".join(rows) + "\n")


# --- ev_curves --------------------------------------------------------------------------------
def test_ev_curves_match_lattice_sums(tmp_path):
    _write_reference(tmp_path / "ref.csv")
    a_fcc, a_bcc = (4 * V_FCC) ** (1 / 3), (2 * V_FCC) ** (1 / 3)
    task = _task("ev_curves", {"reference": "ref.csv", "structures": [
        {"name": "fcc", "element": "Ar", "structure": "fcc", "a_A": a_fcc},
        {"name": "bcc", "element": "Ar", "structure": "bcc", "a_A": a_bcc},
        # no reference: own volume range; a custom cell (sc) checks explicit cells
        {"name": "sc", "element": "Ar", "structure": "custom", "cell_A": np.diag([3.6] * 3).tolist(),
         "scaled_positions": [[0, 0, 0]], "volume_range_A3_per_atom": [38, 60], "n_points": 9}]})
    ctx = _ctx(tmp_path, "ev")
    rep = task.run([_model("exact"), _model("wider", sig=3.45)], ctx)
    m = rep.metrics
    # the same potential as the lattice sums: the energy zero of the reference drops out (zero = fcc)
    for s in ("fcc", "bcc"):
        assert m["exact"][s]["rmse_mev_per_atom"] < 1e-6
        assert m["wider"][s]["rmse_mev_per_atom"] > 1.0
    # Birch–Murnaghan V0 at the lattice-sum minimum (tolerance: 5-point cubic fit over ±8 %)
    assert m["exact"]["fcc"]["v0_A3_per_atom"] == pytest.approx(V_FCC, rel=5e-4)
    assert m["lattice sum"]["fcc"]["v0_A3_per_atom"] == pytest.approx(V_FCC, rel=5e-4)
    # σ → 3.45 Å (cutoff 2.5σ too) scales volumes by (3.45/3.4)³
    assert m["wider"]["fcc"]["v0_A3_per_atom"] == pytest.approx(V_FCC * (3.45 / 3.4) ** 3, rel=1e-3)
    # phase energy difference bcc − fcc: model and reference agree, and bcc is higher
    de = m["exact"]["bcc"]["dE_meV_per_atom"]
    assert de > 0 and de == pytest.approx(m["lattice sum"]["bcc"]["dE_meV_per_atom"], abs=1e-3)
    assert m["exact"]["sc"]["v0_A3_per_atom"] > V_FCC  # sc is less dense at its minimum
    for f in ("ev_curves.csv", "birch_murnaghan.csv", "ev_errors.csv", "ev_curves.json", "ev_curves.png"):
        assert f in rep.files and (ctx.out_dir / f).is_file()
    curves = read_table(ctx.out_dir / "ev_curves.csv")
    assert set(curves["source"]) == {"exact", "wider", "lattice sum"}
    assert "| bcc | exact |" in rep.markdown and "lattice sum" in rep.markdown
    # the model is evaluated at the reference volumes; own volumes with a reference are refused
    bad = _task("ev_curves", {"reference": "ref.csv", "structures": [
        {"name": "fcc", "element": "Ar", "structure": "fcc", "a_A": a_fcc, "scalings": [0.9, 0.95, 1, 1.05, 1.1]}]})
    with pytest.raises(ValueError, match="reference volumes"):
        bad.run([_model("exact")], _ctx(tmp_path, "bad"))


def test_params_errors_name_the_field():
    pm = get_plugin_manager()
    with pytest.raises(SpecError, match=r"tasks\.0\.params\.structures\.0.*cell_A"):
        parse_evaluation({"tasks": [{"name": "ev_curves", "params": {"structures": [
            {"name": "w", "element": "Ti", "structure": "custom"}]}}]}, pm)
    with pytest.raises(SpecError, match=r"tasks\.0\.params\.structure.*a_A"):
        parse_evaluation({"tasks": [{"name": "phonons", "params": {
            "structure": {"element": "Ti", "structure": "hcp"}}}]}, pm)
    with pytest.raises(SpecError, match=r"tasks\.0\.params\.split"):
        parse_evaluation({"tasks": [{"name": "dft_errors", "params": {"split": "everything"}}]}, pm)
    with pytest.raises(SpecError, match=r"tasks\.0\.params\.displacement_A"):
        parse_evaluation({"tasks": [{"name": "phonons", "params": {
            "structure": {"element": "Ar", "structure": "fcc", "a_A": 5.3}, "displacement_A": -1}}]}, pm)


# --- phonons ----------------------------------------------------------------------------------
def _direct_phonopy(atoms, calc, sc, qpoints):
    """Frequencies (THz) at reduced q-points from phonopy's own API (no fusepot wrapper)."""
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms
    from ase import Atoms

    ph = Phonopy(PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=atoms.cell.array,
                              scaled_positions=atoms.get_scaled_positions(), masses=atoms.get_masses()),
                 supercell_matrix=np.diag(sc))
    ph.generate_displacements(distance=0.01)
    forces = []
    for s in ph.supercells_with_displacements:
        a = Atoms(s.symbols, cell=s.cell, scaled_positions=s.scaled_positions, pbc=True)
        a.calc = calc
        forces.append(a.get_forces())
    ph.forces = np.array(forces)
    ph.produce_force_constants()
    ph.symmetrize_force_constants()
    ph.run_qpoints(qpoints)
    return ph.qpoints.frequencies


def test_phonons_fcc_argon_match_phonopy_and_reference_tables(tmp_path):
    a = (4 * V_FCC) ** (1 / 3)
    params = {"structure": {"element": "Ar", "structure": "fcc", "a_A": a}, "supercell": [3, 3, 3], "path": "GXL",
              "npoints": 11, "mesh": [8, 8, 8], "sigma_THz": 0.05}
    ctx = _ctx(tmp_path, "ph0")
    rep = _task("phonons", params).run([_model("lj")], ctx)
    m = rep.metrics["lj"]
    assert m["imaginary_modes_path"] == 0 and m["imaginary_mode_fraction_mesh"] == 0
    assert m["min_frequency_THz"] > -1e-3 and 1.0 < m["max_frequency_THz"] < 3.0
    disp = read_table(ctx.out_dir / "dispersion.csv")
    q = np.column_stack([disp["q1"], disp["q2"], disp["q3"]])
    nu = np.column_stack([disp[f"nu{k}_THz"] for k in (1, 2, 3)])
    rows = [5, 10, 16, 21]  # inside Γ–X, X, inside X–L, L
    calc = _model("lj").calculator()
    direct = _direct_phonopy(bulk("Ar", "fcc", a=a), calc, (3, 3, 3), q[rows])
    np.testing.assert_allclose(nu[rows], direct, atol=1e-6)

    # the model's own DOS and dispersion as "experiment" and "reference": zero differences
    dos = read_table(ctx.out_dir / "dos.csv")
    keep = dos["dos_per_THz"] > 0
    (tmp_path / "dos.csv").write_text("# title: self\nnu_THz,dos\n" + "".join(
        f"{float(x)!r},{float(3 * y)!r}\n" for x, y in zip(dos["nu_THz"][keep], dos["dos_per_THz"][keep])))
    lab = ["G"] + [""] * 9 + ["X", "X"] + [""] * 9 + ["L"]
    (tmp_path / "disp.csv").write_text("# title: self\nk_path_invA,label,nu1_THz,nu2_THz,nu3_THz\n" + "".join(
        f"{float(7 * d)!r},{lb},{float(a1)!r},{float(a2)!r},{float(a3)!r}\n"
        for d, lb, (a1, a2, a3) in zip(disp["distance_invA"], lab, nu)))
    ctx = _ctx(tmp_path, "ph1")
    rep = _task("phonons", {**params, "experimental_dos": {"path": "dos.csv"},
                            "reference_dispersion": {"path": "disp.csv", "label": "self BvK"}}).run(
        [_model("lj"), _model("soft", eps=0.008)], ctx)
    m = rep.metrics["lj"]
    assert m["dos_rms_vs_experiment_per_THz"] < 1e-6 and m["dos_overlap_vs_experiment"] == pytest.approx(1, abs=1e-6)
    assert m["dispersion_rms_vs_reference_THz"] < 1e-9
    soft = rep.metrics["soft"]  # ε 0.0104 → 0.008 eV: frequencies × sqrt(0.008/0.0104)
    assert soft["max_frequency_THz"] == pytest.approx(m["max_frequency_THz"] * np.sqrt(0.008 / EPS), rel=1e-6)
    assert soft["dispersion_rms_vs_reference_THz"] > 0.1 and soft["dos_overlap_vs_experiment"] < 0.9
    assert "self BvK" in rep.markdown and (ctx.out_dir / "phonons.png").is_file()
    assert rep.metrics["references"]["self BvK"]["max_frequency_THz"] == pytest.approx(m["max_frequency_THz"], rel=1e-6)


def test_phonons_relax_and_imaginary_modes_reported(tmp_path):
    # bcc LJ compressed 5 %: relax=True finds the bcc lattice-sum minimum, where bcc LJ is
    # dynamically unstable; its imaginary modes are counted and shown (negative), not hidden
    v_bcc = _golden_min(lambda v: lattice_energy("bcc", v), 30.0, 45.0)
    ctx = _ctx(tmp_path, "relax")
    rep = _task("phonons", {"structure": {"element": "Ar", "structure": "bcc", "a_A": 0.95 * (2 * v_bcc) ** (1 / 3)},
                            "relax": True, "relax_fmax_eV_per_A": 1e-5, "supercell": [2, 2, 2], "path": "GHNG",
                            "npoints": 7, "mesh": [6, 6, 6]}).run([_model("lj")], ctx)
    r = rep.metrics["lj"]
    assert r["relax"]["converged"] and r["volume_A3_per_atom"] == pytest.approx(v_bcc, rel=1e-4)
    assert r["imaginary_modes_path"] > 0 and r["min_frequency_THz"] < -0.1 and r["imaginary_mode_fraction_mesh"] > 0
    assert "imag. modes on path" in rep.markdown and "relaxed by each model" in rep.markdown


# --- dft_errors -------------------------------------------------------------------------------
def _write_deepmd(folder, ds):
    s0 = ds.samples[0]
    (folder / "set.000").mkdir(parents=True)
    (folder / "type.raw").write_text("\n".join(str(int(t)) for t in s0.species) + "\n")
    (folder / "type_map.raw").write_text("Ar\n")
    for name, get in (("box", lambda s: s.box), ("coord", lambda s: s.positions), ("energy", lambda s: [s.energy]),
                      ("force", lambda s: s.forces), ("virial", lambda s: s.virial)):
        np.save(folder / "set.000" / f"{name}.npy", np.stack([np.ravel(get(s)) for s in ds.samples]))


@pytest.fixture(scope="module")
def dft_data(tmp_path_factory):
    """16 rattled, strained fcc Ar cells of 32 atoms labelled by the exact LJ model."""
    rng = np.random.default_rng(0)
    base = bulk("Ar", "fcc", a=(4 * V_FCC) ** (1 / 3), cubic=True).repeat(2)
    samples = []
    for _ in range(16):
        e = rng.normal(0, 0.02, (3, 3))
        cell = base.cell.array @ (np.eye(3) + 0.5 * (e + e.T))
        pos = base.get_scaled_positions() @ cell + rng.normal(0, 0.08, (len(base), 3))
        samples.append(Sample(pos, np.zeros(len(base), np.int32), cell, 0.0, np.zeros((len(base), 3)), np.zeros((3, 3))))
    ds = label_dataset(lj_argon(EPS, SIG, RC_SIG), Dataset(tuple(samples), ("Ar",)))
    root = tmp_path_factory.mktemp("dft") / "ar32"
    _write_deepmd(root, ds)
    return root


DFT_RUN = """
name: {name}
seed: 0
dtype: float64
system: {{crystal: {{element: Ar, structure: fcc, a: 5.26, cubic: true}}}}
potential: {{name: lennard_jones, params: {{epsilon: 0.0095, sigma: 3.35}}}}
dft: {{data: {{paths: ["{path}"], split: [0.5, 0.25, 0.25], split_seed: 1{extra}}}}}
trainer: {{kind: dft}}
"""


def test_dft_errors_zero_for_the_labeller_and_shift_matches_trainer(tmp_path, dft_data):
    ctx = _ctx(tmp_path, "dft")
    params = {"data": {"paths": [str(dft_data)], "split": [0.5, 0.25, 0.25]}, "batch_size": 4}
    other = _model("other", eps=0.0120, sig=3.35)
    rep = _task("dft_errors", params).run([_model("exact"), other], ctx)
    ex = rep.metrics["exact"]["raw"]
    assert rep.metrics["exact"]["n_samples"] == 4
    for k in ("energy_rmse_meV_per_atom", "force_rmse_eV_per_A", "virial_rmse_meV_per_atom", "virial_rmse_eV"):
        assert ex[k] < 1e-8
    o = rep.metrics["other"]
    assert o["raw"]["energy_rmse_meV_per_atom"] > 1 and o["raw"]["force_rmse_eV_per_A"] > 1e-3
    # the shift row equals the trainer's energy_shift_per_atom + EnergyShifted on the same split
    from fusepot.core.trainers.fused import load_dft_data
    from types import SimpleNamespace
    from fusepot.core.spec import DFTDataSpec

    d = DFTDataSpec(paths=[str(dft_data)], split=(0.5, 0.25, 0.25))
    train, _, test = load_dft_data(SimpleNamespace(dft=SimpleNamespace(data=d)), tmp_path, ["Ar"],
                                   Progress(enabled=False))
    shift = energy_shift_per_atom(other.potential, train)
    assert o["energy_shift_eV_per_atom"] == pytest.approx(shift, rel=1e-10)
    ref = evaluate(EnergyShifted(other.potential, shift), test)
    assert o["energy_shifted"]["energy_rmse_meV_per_atom"] == pytest.approx(ref.energy_rmse_mev_per_atom, rel=1e-8)
    assert o["energy_shifted"]["energy_rmse_meV_per_atom"] < o["raw"]["energy_rmse_meV_per_atom"]
    for f in ("errors.csv", "errors.json", "predictions.csv", "parity.png"):
        assert (ctx.out_dir / f).is_file()
    assert len(read_table(ctx.out_dir / "errors.csv")) == 4  # 2 models × (raw, shift removed)
    assert "| exact | raw |" in rep.markdown and "shift removed" in rep.markdown
    # split "all" evaluates every configuration
    rep = _task("dft_errors", {**params, "split": "all", "energy_shift": False}).run([_model("exact")],
                                                                                     _ctx(tmp_path, "all"))
    assert rep.metrics["exact"]["n_samples"] == 16 and "energy_shifted" not in rep.metrics["exact"]


def test_dft_errors_defaults_to_each_runs_data_and_notes_problems(tmp_path, dft_data):
    run_a = make_run(tmp_path / "a", DFT_RUN.format(name="a", path=dft_data, extra=""))
    run_b = make_run(tmp_path / "b", DFT_RUN.format(name="b", path=dft_data, extra=", max_samples: 8"))
    run_c = make_run(tmp_path / "c", DFT_RUN.format(name="c", path="../missing", extra=""))
    models = [EvalModel.from_run(r) for r in (run_a, run_b, run_c)] + [_model("in-code")]
    ctx = _ctx(tmp_path, "dft")
    rep = _task("dft_errors", {}).run(models, ctx)
    assert rep.metrics["a"]["n_samples"] == 4 and rep.metrics["b"]["n_samples"] == 2
    # the same numbers as the trainer's evaluate on the run's own test split
    from fusepot.core.trainers.fused import load_dft_data

    run = models[0].run
    test = load_dft_data(run.spec, run.spec_dir, ["Ar"], Progress(enabled=False))[2]
    assert rep.metrics["a"]["raw"]["force_rmse_eV_per_A"] == pytest.approx(
        evaluate(run.potential, test).force_rmse, rel=1e-10)
    assert "different data" in rep.markdown
    notes = rep.metrics["not_evaluated"]
    assert "run_info.json" in notes["c"] and "not found" in notes["c"]
    assert "no run folder" in notes["in-code"]
    assert (ctx.out_dir / "model_errors.txt").is_file()


# --- through the CLI --------------------------------------------------------------------------
def test_cli_report_with_static_sections(tmp_path, dft_data, capsys):
    run = make_run(tmp_path / "run", DFT_RUN.format(name="ar", path=dft_data, extra=""))
    _write_reference(tmp_path / "ref.csv")
    a = (4 * V_FCC) ** (1 / 3)
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(textwrap.dedent(f"""
        title: static sections
        tasks:
          - name: dft_errors
          - name: ev_curves
            params:
              reference: ref.csv
              structures:
                - {{name: fcc, element: Ar, structure: fcc, a_A: {a}}}
                - {{name: bcc, element: Ar, structure: bcc, a_A: {(2 * V_FCC) ** (1 / 3)}}}
          - name: phonons
            params:
              structure: {{element: Ar, structure: fcc, a_A: {a}}}
              supercell: [2, 2, 2]
              path: GXL
              npoints: 5
              mesh: [4, 4, 4]
        """))
    out = tmp_path / "report"
    assert main(["evaluate", str(run), "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    md = (out / "report.md").read_text()
    for heading in ("## DFT test-set errors", "## Energy–volume curves", "## Phonons"):
        assert heading in md
    assert "| ar | raw |" in md and "| fcc | ar |" in md and "imag. modes on path" in md
    for png in ("dft_errors/parity.png", "ev_curves/ev_curves.png", "phonons/phonons.png"):
        assert (out / png).stat().st_size > 1000
    res = json.loads((out / "report.json").read_text())
    assert [t["status"] for t in res["tasks"]] == ["ok"] * 3
    # several runs need --out
    assert main(["evaluate", str(run), str(run), "--config", str(cfg)]) == 2
    assert "--out" in capsys.readouterr().err
