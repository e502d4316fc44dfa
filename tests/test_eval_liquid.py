"""Liquid report sections (plugins/evaluation/liquid_tasks.py) on a small Lennard-Jones argon liquid:
the task's g(r)/ADF are the observables' trajectory averages, RMS against the model's own curve is
zero, Green–Kubo and Einstein agree, runaway NPT volumes fail loudly, and the CLI writes a report."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import yaml

from fusepot.core.cli import main
from fusepot.core.evaluation import EvalModel, TaskContext, read_table
from fusepot.core.plugins import BuildContext, get_plugin_manager
from fusepot.core.progress import Progress
from fusepot.core.spec import SpecError, parse_evaluation
from fusepot.plugins.evaluation.liquid_tasks import LiquidStructure, LiquidStructureParams
from fusepot.plugins.structure.evaluate import trajectory_average
from helpers import lj_argon, make_run

# 108 LJ argon atoms (fcc 3×3×3) melted at 200 K and 0.05 GPa, liquid at 110–120 K; 5 fs steps
SYSTEM = {"element": "Ar", "structure": "fcc", "a_A": 5.26, "cell": "cubic", "supercell": [3, 3, 3],
          "md": {"timestep_fs": 5.0, "tau_t_ps": 0.2, "tau_p_ps": 1.0, "segment_ps": 0.5}}
STRUCTURE = {**SYSTEM, "protocol": {"melt_temperature_K": 200, "temperature_K": 110, "pressure_gpa": 0.05,
                                    "melt_ps": 0.5, "npt_ps": 1.0, "production_ps": 1.0, "sample_every_ps": 0.1,
                                    "replicate": [1, 1, 1]},
             "rdf": {"r_max": 8.0, "n_bins": 100}, "adf": {"cutoff": 4.6, "n_bins": 60}}
DIFFUSION = {**SYSTEM, "temperatures_K": [120.0], "nvt_equilibration_ps": 0.5,
             "protocol": {"melt_temperature_K": 200, "pressure_gpa": 0.05, "melt_ps": 0.5, "npt_ps": 1.0,
                          "sample_every_ps": 0.1, "dynamics_sample_every_ps": 0.02, "n_origins": 16,
                          "origin_spacing_ps": 0.2, "correlation_ps": 1.5, "replicate": [1, 1, 1]}}


def _ctx(path, n_blocks=5):
    path.mkdir(parents=True, exist_ok=True)
    return TaskContext(path, path, Progress(enabled=False), seed=0, n_blocks=n_blocks)


@pytest.fixture(scope="module")
def lj_run(tmp_path_factory):
    """A fake finished LJ argon run; every test uses this one potential, so the compiled MD and
    observables are shared between tests (the CLI test only runs MD)."""
    return make_run(tmp_path_factory.mktemp("liquid") / "run", trained=lj_argon())


@pytest.fixture(scope="module")
def lj_liquid(lj_run):
    """One real MD run of the structure protocol (NPT frames, production frames, words)."""
    model = EvalModel.from_run(lj_run, label="lj")
    task = LiquidStructure(LiquidStructureParams(**STRUCTURE))
    return model, task.simulate(model, jax.random.PRNGKey(0), lambda f, m: None)


def _structure_task(monkeypatch, lj_liquid, **params):
    task = LiquidStructure(LiquidStructureParams(**{**STRUCTURE, **params}))
    monkeypatch.setattr(task, "simulate", lambda model, key, progress: lj_liquid[1])  # no second MD
    return task


def test_structure_curves_are_the_observables_trajectory_averages(tmp_path, monkeypatch, lj_liquid):
    model, (npt_traj, traj, words) = lj_liquid
    assert traj.n_frames == 10 and npt_traj.n_frames == 10 and "108 atoms" in words
    ctx = _ctx(tmp_path)
    rep = _structure_task(monkeypatch, lj_liquid).run([model], ctx)
    bctx = BuildContext(species=["Ar"])
    g = trajectory_average(get_plugin_manager().build("observable", "rdf", STRUCTURE["rdf"], bctx), traj, 5)
    adf = trajectory_average(get_plugin_manager().build("observable", "adf", STRUCTURE["adf"], bctx), traj, 5)
    t = read_table(tmp_path / "rdf.csv")
    np.testing.assert_allclose(t["g lj"], g.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t["g_err lj"], g.error, rtol=1e-12, atol=1e-12)
    a = read_table(tmp_path / "adf.csv")
    np.testing.assert_allclose(a["P_per_deg lj"], adf.mean, rtol=1e-12, atol=1e-12)
    # a liquid: first peak near 2^(1/6) σ ≈ 3.8 Å, density of LJ argon near 1.3 g/cm³, atoms diffuse
    v = rep.metrics["lj"]
    assert 3.5 < v["peak_r_A"] < 4.0 and 2.0 < v["peak_g"] < 3.5
    assert 1.1 < v["density_g_cm3"] < 1.5 and v["density_err_g_cm3"] > 0
    assert v["msd_A2"] > 0.5 and abs(v["T_kin_K"] - 110) < 15
    assert "| lj |" in rep.markdown and "No experimental ADF" in rep.markdown
    assert set(rep.files) >= {"rdf.png", "adf.png", "rdf.csv", "adf.csv", "summary.csv"}
    assert all((tmp_path / f).is_file() for f in rep.files)


def test_rms_against_own_curve_is_zero_and_flags_are_skipped(tmp_path, monkeypatch, lj_liquid):
    model = lj_liquid[0]
    first = _structure_task(monkeypatch, lj_liquid).run([model], _ctx(tmp_path / "a"))
    t = read_table(tmp_path / "a" / "rdf.csv")
    rows = [f"{r:.17g},{g:.17g}," for r, g in zip(t["r_A"], t["g lj"])]
    (tmp_path / "own.csv").write_text("\n".join(["# title: the model's own g(r)", "r_A,g,flag", "0.5,7.0,bogus"]
                                                + rows) + "\n")  # plus one flagged bad point
    exp = {"table": "own.csv", "g_column": "g"}
    ctx = _ctx(tmp_path / "b")
    ctx.config_dir = tmp_path
    rep = _structure_task(monkeypatch, lj_liquid, experiment=exp).run([model], ctx)
    assert rep.metrics["lj"]["rms_vs_experiment"] < 1e-9
    assert "1 flagged point(s) left out" in rep.markdown
    ctx = _ctx(tmp_path / "c")
    ctx.config_dir = tmp_path
    rep = _structure_task(monkeypatch, lj_liquid, experiment={**exp, "skip_flagged": False}).run([model], ctx)
    assert rep.metrics["lj"]["rms_vs_experiment"] > 0.1  # the bogus point now counts
    assert first.metrics["lj"]["peak_g"] == rep.metrics["lj"]["peak_g"]


def test_runaway_npt_volume_fails_the_model_loudly(tmp_path, lj_run):
    """A gas at zero pressure expands without bound: the model fails with a message, never a density."""
    model = EvalModel.from_run(lj_run, label="lj")
    params = LiquidStructureParams(**{**STRUCTURE, "max_volume_ratio": 1.5, "protocol": {
        **STRUCTURE["protocol"], "melt_temperature_K": 1500, "pressure_gpa": 0.0}})
    with pytest.raises(RuntimeError, match=r"every model failed: lj: MDFailure: melt stage .*does not hold the liquid"):
        LiquidStructure(params).run([model], _ctx(tmp_path))


def test_params_are_checked_with_field_names():
    pm = get_plugin_manager()

    def parse(name, params):
        return parse_evaluation({"tasks": [{"name": name, "params": params}]}, pm)

    with pytest.raises(SpecError, match=r"protocol.n_origins: not used by this task"):
        parse("liquid_structure", {**STRUCTURE, "protocol": {**STRUCTURE["protocol"], "n_origins": 10}})
    with pytest.raises(SpecError, match=r"protocol.production_ps: not used"):
        parse("self_diffusion", {**DIFFUSION, "protocol": {**DIFFUSION["protocol"], "production_ps": 3.0}})
    with pytest.raises(SpecError, match=r"md.segment_ps \(0.25 ps\) must be a whole number of protocol.sample_every_ps"):
        parse("liquid_structure", {**STRUCTURE, "md": {**STRUCTURE["md"], "segment_ps": 0.25}})
    with pytest.raises(SpecError, match=r"rdf.*n_bins"):
        parse("liquid_structure", {**STRUCTURE, "rdf": {"n_bins": 0}})
    with pytest.raises(SpecError, match=r"temperatures_K"):
        parse("self_diffusion", {**DIFFUSION, "temperatures_K": [-5.0]})
    with pytest.raises(SpecError, match=r"c_A: the hcp structure needs c"):
        parse("liquid_structure", {**STRUCTURE, "structure": "hcp"})
    with pytest.raises(SpecError, match=r"protocol.bogus"):
        parse("liquid_structure", {**STRUCTURE, "protocol": {"bogus": 1}})


def test_cli_report_and_diffusion_green_kubo_vs_einstein(tmp_path, lj_run):
    """Both sections through `fusepot evaluate`; D by Green–Kubo and Einstein agree within 20 %."""
    (tmp_path / "exp_rdf.csv").write_text("# title: a flat g(r)\nr_A,g_r,flag\n3.0,0.5,x\n4.0,1.0,\n8.0,1.0,\n")
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"citation": "made up", "values": [
        {"T_K": 120.0, "D_m2_per_s": 3.0e-9, "D_err_m2_per_s": 0.2e-9}]}))
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"title": "liquid", "n_blocks": 5, "tasks": [
        {"name": "liquid_structure", "params": {**STRUCTURE, "experiment": {"table": "exp_rdf.csv"},
                                                "save_trajectories": True}},
        {"name": "self_diffusion", "params": {**DIFFUSION, "experiment": {"file": "d.yaml"}}}]}))
    out = tmp_path / "report"
    assert main(["evaluate", str(lj_run), "--config", str(cfg), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    report = json.loads((out / "report.json").read_text())
    assert [t["status"] for t in report["tasks"]] == ["ok", "ok"], report
    diffusion = report["tasks"][1]["metrics"]["tiny"]
    (pt,) = diffusion["points"]
    print(f"\nLJ 108 atoms, 120 K: D_GK = {pt['D_GK']:.3f} ± {pt['D_GK_err']:.3f}, "
          f"D_E = {pt['D_E']:.3f} ± {pt['D_E_err']:.3f} (1e-9 m²/s)")
    assert pt["n_origins"] == 16 and pt["D_GK_err"] > 0 and pt["D_E_err"] > 0
    assert abs(pt["D_GK"] - pt["D_E"]) < 0.2 * pt["D_E"]
    assert 1.0 < pt["D_GK"] < 8.0  # LJ argon near its triple point: a few 1e-9 m²/s
    (cmp,) = diffusion["vs_experiment"]
    assert cmp["D_exp"] == pytest.approx(3.0) and cmp["relative_deviation"] == pytest.approx(pt["D_GK"] / 3.0 - 1)
    assert json.loads((out / "self_diffusion" / "diffusion.json").read_text())["experiment"]["D_err"] == [
        pytest.approx(0.2)]
    assert "| model | density (g/cm³) | V/atom (Å³) | g(r) RMS vs exp. |" in md
    assert "| model | T (K) | D Green–Kubo | D Einstein |" in md and "| experiment | 120 | 3.00 ± 0.20 |" in md
    for f in ("liquid_structure/rdf.png", "liquid_structure/adf.png", "self_diffusion/diffusion_vs_T.png",
              "self_diffusion/vacf_msd.png", "liquid_structure/trajectory_tiny.npz"):
        assert (out / f).is_file(), f
    tr = np.load(out / "liquid_structure" / "trajectory_tiny.npz")
    assert tr["positions_A"].shape == (10, 108, 3) and np.allclose(np.diff(tr["times_ps"]), 0.1)


def test_titanium_blocks_in_the_docs_validate():
    """The paper/quick/smoke task blocks of docs/evaluation_report.md parse as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "evaluation_report.md").read_text()
    section = text[text.index("### Liquid sections for the titanium example"):]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    for block in blocks:
        cfg = parse_evaluation({"tasks": yaml.safe_load(block)}, get_plugin_manager())
        assert [t.name for t in cfg.tasks] == ["liquid_structure", "self_diffusion"]
