"""Report sections elastic_vs_temperature and npt_lattice (plugins/evaluation/solid_tasks.py) on
Lennard-Jones argon: agreement with a direct computation through the solid plugins, experiment
comparison, NPT lattice constants vs the static lattice, parameter errors, the CLI."""
import json

import numpy as np
import pytest
import yaml

from fusepot.core.cli import main
from fusepot.core.evaluation import EvalModel, TaskContext, read_table
from fusepot.core.interfaces import StatePoint
from fusepot.core.plugins import get_plugin_manager
from fusepot.core.progress import Progress
from fusepot.core.spec import SpecError, parse_evaluation
from fusepot.plugins.evaluation.solid_tasks import born_stable
from fusepot.plugins.solid import energy_volume_curve, fit_birch_murnaghan
from fusepot.plugins.solid.evaluate import block_error, per_frame_values
from fusepot.plugins.solid.voigt import voigt_moduli_cubic
from helpers import argon_fcc, lj_argon, make_run

PM = get_plugin_manager()
# short LJ runs.  NVT has no equilibration so that the direct computation below uses the very ensemble
# the task builds (an ensemble's run settings are static: any difference means another compilation)
NVT = {"name": "nvt_langevin", "params": {"timestep_fs": 5, "production_ps": 4, "sample_every_ps": 0.1,
                                          "friction_per_ps": 1.0, "chunk_frames": 8}}
NVT_EQ = {"name": "nvt_langevin", "params": {**NVT["params"], "equilibration_ps": 1.0}}
NPT = {"name": "npt_nose_hoover", "params": {"timestep_fs": 5, "production_ps": 4, "equilibration_ps": 2,
                                             "sample_every_ps": 0.1}}
SIGMA = 3.35  # as in helpers.make_run's spec: the cutoff (static) matches, so compiled MD is shared between tests


def _ctx(config_dir, out="out"):
    (config_dir / out).mkdir(parents=True, exist_ok=True)
    return TaskContext(config_dir / out, config_dir, Progress(enabled=False), seed=0, n_blocks=10)


def _task(name, params):
    return PM.build("evaluation", name, params)


def _models():
    return [EvalModel("lj", lj_argon(sigma=SIGMA), ["Ar"], np.float64),
            EvalModel("lj_soft", lj_argon(epsilon=0.0095, sigma=SIGMA), ["Ar"], np.float64)]


def test_elastic_vs_temperature_matches_direct_computation(tmp_path):
    (tmp_path / "lattice.csv").write_text("# units: K, Å\nT_K,a_A\n5,5.20\n45,5.24\n")
    (tmp_path / "exp.csv").write_text("# citation: invented for the test\nT_K,C11_GPa,C12_GPa,C44_GPa\n"
                                      "10,4.0,2.2,2.25\n30,3.7,2.0,2.1\n50,3.4,1.9,2.0\n")
    temps = [10.0, 30.0]
    task = _task("elastic_vs_temperature", dict(
        element="Ar", structure="fcc", symmetry="cubic", supercell=[2, 2, 2], temperatures_K=temps,
        lattice={"table": "lattice.csv"}, experiment={"table": "exp.csv", "label": "invented"}, ensemble=NVT))
    ctx = _ctx(tmp_path)
    models = _models()
    rep = task.run(models, ctx)
    assert set(rep.files) == {"elastic_constants.csv", "experiment.csv", "relative_errors.csv",
                              "elastic_vs_temperature.png"}
    assert all((ctx.out_dir / f).stat().st_size > 0 for f in rep.files)
    assert rep.metrics["failures"] == [] and rep.metrics["mechanically_unstable"] == [] and rep.metrics["n_frames"] == 40

    # the same numbers straight from the solid plugins (model 1 at the second temperature)
    a = np.interp(30.0, [5, 45], [5.20, 5.24])
    conf, masses = argon_fcc(2, a=a)
    ens = PM.build("ensemble", NVT["name"], NVT["params"])
    traj, _ = ens.sample(models[1].potential, conf, masses, StatePoint(30.0), ctx.key(1, 1))
    obs = PM.build("observable", "elastic_constants", {"symmetry": "cubic"})
    direct = block_error(obs, per_frame_values(obs, models[1].potential, traj), traj.frames(), n_blocks=10)
    got = rep.metrics["lj_soft"]
    np.testing.assert_allclose([got[f"{c}_GPa"][1] for c in ("C11", "C12", "C44")], direct.mean, rtol=1e-6)
    np.testing.assert_allclose([got[f"{c}_err_GPa"][1] for c in ("C11", "C12", "C44")], direct.error, rtol=1e-5)
    k, g, nu = voigt_moduli_cubic(*direct.mean)
    np.testing.assert_allclose([got["K_GPa"][1], got["G_GPa"][1], got["nu"][1]], [k, g, nu], rtol=1e-6)
    assert all(e > 0 for e in got["K_err_GPa"] + got["G_err_GPa"] + got["nu_err"])

    # experiment: K, G, ν from its C_ij; relative errors averaged over both temperatures
    exp = read_table(ctx.out_dir / "experiment.csv")
    k_exp, g_exp, nu_exp = voigt_moduli_cubic(4.0, 2.2, 2.25)
    np.testing.assert_allclose([exp["K_GPa"][0], exp["G_GPa"][0], exp["nu"][0]], [k_exp, g_exp, nu_exp])
    c11_exp = np.array([4.0, 3.7])
    mre = np.mean(np.abs(np.array(got["C11_GPa"]) - c11_exp) / c11_exp)
    np.testing.assert_allclose(got["mean_relative_error"]["C11"], mre, rtol=1e-10)
    rel = read_table(ctx.out_dir / "relative_errors.csv")
    assert len(rel) == 2 * 6 and set(rel["n_temperatures"]) == {2.0}
    table = read_table(ctx.out_dir / "elastic_constants.csv")
    assert list(table["model"]) == ["lj", "lj", "lj_soft", "lj_soft"] and list(table["T_K"]) == temps * 2
    assert "Mean relative error vs experiment over 2 temperature(s)" in rep.markdown
    assert "| 30 | invented |" in rep.markdown and "| 30 | lj_soft |" in rep.markdown


def test_born_stability_criteria():
    assert born_stable("hexagonal", [160.9, 92.5, 69.1, 179.5, 46.2])  # Ti, 323 K (Fisher & Renken)
    assert not born_stable("hexagonal", [160.9, 92.5, 69.1, 179.5, -1.0])
    assert not born_stable("hexagonal", [100.0, 90.0, 120.0, 100.0, 40.0])  # 2 C13² > C33 (C11 + C12)
    assert born_stable("cubic", [4.1, 2.3, 2.3]) and not born_stable("cubic", [2.0, 2.5, 1.0])


def test_npt_lattice_low_temperature_matches_static_lattice(tmp_path):
    """At 2 K the NPT lattice constant is the static one (+ tiny thermal expansion); under
    0.2 GPa it shrinks by about P/(3 B0) with B0 from the static E(V) fit."""
    (tmp_path / "exp.csv").write_text("# citation: invented\nT_K,a_A,suspect\n1,5.18,0\n2,5.40,1\n30,5.23,0\n")
    pot = lj_argon(sigma=SIGMA)
    task = _task("npt_lattice", dict(
        element="Ar", structure="fcc", symmetry="cubic", supercell=[2, 2, 2], temperatures_K=[2.0],
        start={"a_A": 5.19}, experiment={"table": "exp.csv"}, pressures_GPa=[0.0, 0.2], pressure_temperature_K=2.0,
        ensemble=NPT))
    ctx = _ctx(tmp_path)
    rep = task.run([EvalModel("lj", pot, ["Ar"], np.float64)], ctx)
    conf, _ = argon_fcc(2, a=5.19)
    curve = energy_volume_curve(pot, conf, np.linspace(0.97, 1.03, 9))
    fit = fit_birch_murnaghan(curve.volumes, curve.energies)
    a0 = (fit["V0"] / 8) ** (1 / 3)
    m = rep.metrics["lj"]
    a_T, (a_p0, a_p) = m["a_A_vs_T"][0], m["a_A_vs_P"]
    assert a_p0 == a_T  # the (2 K, 0 GPa) point is run once and reused
    print(f"static a0 {a0:.5f} Å, NPT 2 K {a_T:.5f} ± {m['a_err_A_vs_T'][0]:.5f} Å, 0.2 GPa {a_p:.5f} Å")
    assert abs(a_T - a0) / a0 < 2e-3 and a_T > a0
    strain = (a_p - a_p0) / a_p0
    np.testing.assert_allclose(strain, -0.2 / (3 * fit["B0_GPa"]), rtol=0.3)
    # experiment: the suspect 2 K row is dropped, so 2 K is interpolated between 1 and 30 K
    a_exp = np.interp(2.0, [1, 30], [5.18, 5.23])
    np.testing.assert_allclose(m["mean_relative_error"]["a"], abs(a_T - a_exp) / a_exp, rtol=1e-10)
    assert "Rows flagged `suspect` are not used: T = 2 K" in rep.markdown
    assert set(rep.files) == {"lattice_vs_temperature.csv", "lattice_vs_pressure.csv", "relative_errors.csv",
                              "lattice_vs_temperature.png", "lattice_vs_pressure.png"}


def test_parameter_errors_name_the_field(tmp_path):
    base = dict(element="Ar", structure="hcp", symmetry="hexagonal", temperatures_K=[10.0])

    def bad(name, params, match):
        with pytest.raises(SpecError, match=match):
            parse_evaluation({"tasks": [{"name": name, "params": params}]})

    bad("elastic_vs_temperature", {**base, "lattice": {"a_A": 3.7}}, r"params: .*lattice.c_A: hexagonal symmetry needs c")
    bad("elastic_vs_temperature", {**base, "temperatures_K": "experiment", "lattice": {"a_A": 3.7, "c_A": 6.0}},
        r"temperatures_K: 'experiment' needs an experiment table")
    bad("elastic_vs_temperature", {**base, "temperatures_K": [-5], "lattice": {"a_A": 3.7, "c_A": 6.0}},
        r"params.temperatures_K")
    bad("elastic_vs_temperature", {**base, "lattice": {"a_A": 3.7, "table": "x.csv"}},
        r"params.lattice: .*exactly one of a_A")
    bad("elastic_vs_temperature", {**base, "lattice": {"a_A": 3.7, "c_A": 6.0},
                                   "ensemble": {"name": "nvt_langevin", "params": {"timestep_fs": 1}}},
        r"params.ensemble.*params.production_ps: Field required")
    bad("elastic_vs_temperature", {**base, "lattice": {"a_A": 3.7, "c_A": 6.0}, "supercell": [0, 1, 1]},
        r"params.supercell")
    bad("npt_lattice", {**base, "start": {"a_A": 3.7, "c_A": 6.0},
                        "ensemble": {"name": "npt_nose_hoover", "params": {"production_ps": 1, "pressure_gpa": 1.0}}},
        r"ensemble.params.pressure_gpa")
    bad("npt_lattice", {**base, "start": {"a_A": 3.7, "c_A": 6.0}, "max_steps": 3}, r"params.max_steps")
    # run-time problems (tables, species) raise before any MD, naming the parameter
    (tmp_path / "lat.csv").write_text("T_K,a_A,c_A\n100,3.7,6.0\n200,3.72,6.05\n")
    task = _task("elastic_vs_temperature", {**base, "lattice": {"table": "lat.csv"}})
    with pytest.raises(ValueError, match=r"lattice.table: temperature\(s\) \[10.0\] K lie outside"):
        task.run(_models()[:1], _ctx(tmp_path))
    task = _task("elastic_vs_temperature", {**base, "element": "Ti", "lattice": {"a_A": 3.7, "c_A": 6.0}})
    with pytest.raises(ValueError, match=r"element: 'Ti' is not a species"):
        task.run(_models()[:1], _ctx(tmp_path))


def test_cli_report_with_both_sections(tmp_path):
    """hcp (hexagonal) elastic constants vs an experiment table, a cubic single-temperature entry
    with its own id and no experiment (like bcc at 1273 K), and NPT lattice constants."""
    run = make_run(tmp_path / "run")
    (tmp_path / "ec.csv").write_text("# citation: invented\nT_K,C11_GPa,C12_GPa,C13_GPa,C33_GPa,C44_GPa\n"
                                     "10,4.2,2.0,1.6,4.6,1.0\n40,3.9,1.9,1.5,4.4,0.9\n")
    (tmp_path / "lat.csv").write_text("T_K,a_A,c_A,suspect\n10,3.62,5.91,0\n25,3.70,6.00,1\n40,3.64,5.94,0\n")
    hcp = dict(element="Ar", structure="hcp", symmetry="hexagonal", supercell=[2, 1, 1])
    cfg = {"title": "solid", "tasks": [
        {"name": "elastic_vs_temperature", "params": {**hcp, "temperatures_K": "experiment", "lattice": {"table": "lat.csv"},
                                                      "experiment": {"table": "ec.csv"}, "ensemble": NVT_EQ}},
        {"name": "elastic_vs_temperature", "id": "fcc_cold",
         "params": {"element": "Ar", "structure": "fcc", "symmetry": "cubic", "supercell": [2, 2, 2],
                    "temperatures_K": [20.0], "lattice": {"a_A": 5.2}, "ensemble": NVT}},
        {"name": "npt_lattice", "params": {**hcp, "temperatures_K": [10.0, 40.0], "start": {"a_A": 3.63, "c_A": 5.92},
                                           "experiment": {"table": "lat.csv"}, "pressures_GPa": [0.1],
                                           "pressure_temperature_K": 10.0, "ensemble": NPT}}]}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "report"
    assert main(["evaluate", str(run), "--config", str(tmp_path / "eval.yaml"), "--out", str(out), "--quiet"]) == 0
    md = (out / "report.md").read_text()
    report = json.loads((out / "report.json").read_text())
    assert [t["status"] for t in report["tasks"]] == ["ok", "ok", "ok"]
    assert "## Elastic constants vs temperature (hcp Ar)" in md and "| C11 | C12 | C13 | C33 | C44 | K | G | ν |" in md
    assert "## Lattice constants from NPT MD (hcp Ar)" in md and "| T (K) | model | a | c | c/a |" in md
    assert "Rows flagged `suspect` are not used: T = 25 K" in md
    cold = next(t for t in report["tasks"] if t["id"] == "fcc_cold")
    assert "mean_relative_error" not in cold["metrics"]["tiny"] and len(cold["metrics"]["tiny"]["C44_GPa"]) == 1
    hexa = report["tasks"][0]["metrics"]
    assert hexa["temperatures_K"] == [10.0, 40.0] and set(hexa["tiny"]["mean_relative_error"]) == {
        "C11", "C12", "C13", "C33", "C44", "K", "G", "nu"}
    for f in ("elastic_vs_temperature/elastic_vs_temperature.png", "fcc_cold/elastic_vs_temperature.png",
              "npt_lattice/lattice_vs_temperature.png", "npt_lattice/lattice_vs_pressure.png"):
        assert (out / f).stat().st_size > 1000, f
        assert f in md
    npt = report["tasks"][2]["metrics"]["tiny"]
    assert all(np.isfinite(npt["c_over_a_vs_T"])) and 1.5 < npt["c_over_a_vs_T"][0] < 1.8


def test_titanium_blocks_in_the_docs_validate():
    """The paper/quick/smoke solid-state task blocks of docs/evaluation_report.md parse as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "evaluation_report.md").read_text()
    start = text.index("### Solid-state sections for the titanium example")
    section = text[start:text.index("\n## ", start)]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    for block in blocks:
        cfg = parse_evaluation({"tasks": yaml.safe_load(block)}, PM)
        assert {t.name for t in cfg.tasks} == {"elastic_vs_temperature", "npt_lattice"}
