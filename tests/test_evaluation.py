"""`fusepot evaluate`: the report framework (task plugins, side-by-side models, failures, CLI)."""
from __future__ import annotations

import json

import numpy as np
import pydantic
import pytest
import yaml
from ase.build import bulk

from fusepot.core.cli import main
from fusepot.core.evaluation import EvalModel, TaskReport, evaluate, markdown_table, write_csv
from fusepot.core.interfaces import EvaluationTask
from fusepot.core.plugins import Component, PluginManager, hookimpl
from fusepot.core.progress import Progress
from fusepot.core.spec import SpecError, parse_evaluation
from helpers import lj_argon, make_run


class LatticeParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    a: list[float]
    fail: bool = False


class LatticeEnergy(EvaluationTask):
    """Static energy per atom of fcc Ar at several lattice constants, each model one column."""

    title = "fcc energy per atom"

    def __init__(self, params: LatticeParams):
        self.p = params

    def run(self, models, ctx):
        if self.p.fail:
            raise RuntimeError("deliberate failure")
        rows = []
        for a in self.p.a:
            row = {"a_A": a}
            for m in models:
                atoms = bulk("Ar", "fcc", a=a, cubic=True)
                atoms.calc = m.calculator()
                row[m.label] = atoms.get_potential_energy() / len(atoms)
            rows.append(row)
        write_csv(ctx.out_dir / "energies.csv", rows)
        metrics = {m.label: {"min_energy_eV": min(r[m.label] for r in rows)} for m in models}
        md = markdown_table(["a (Å)"] + [m.label for m in models], [[r["a_A"]] + [r[m.label] for m in models] for r in rows])
        return TaskReport(md, metrics, ["energies.csv"])


class _Plugin:
    @hookimpl
    def fusepot_evaluations(self):
        return [Component("lattice_energy", LatticeEnergy, LatticeParams, lambda p, ctx: LatticeEnergy(p))]


def _pm():
    pm = PluginManager()
    pm.register(_Plugin(), name="test-evals", package="tests")
    return pm


def test_report_side_by_side_and_failures_recorded(tmp_path):
    pm = _pm()
    run = make_run(tmp_path / "run")
    models = [EvalModel.from_run(run, label="trained"),
              EvalModel("initial", lj_argon(epsilon=0.0095, sigma=3.35, cutoff=2.5), ["Ar"], np.float64)]
    cfg = parse_evaluation({"title": "T", "tasks": [
        {"name": "lattice_energy", "params": {"a": [5.2, 5.3]}},
        {"name": "lattice_energy", "id": "broken", "params": {"a": [5.2], "fail": True}},
        {"name": "lattice_energy", "id": "again", "params": {"a": [5.4]}}]}, pm)
    out = tmp_path / "report"
    res = evaluate(models, cfg, tmp_path, out, Progress(enabled=False), pm=pm)
    assert [t["status"] for t in res["tasks"]] == ["ok", "failed", "ok"]  # a failure does not stop the others
    assert "deliberate failure" in (out / "broken" / "error.txt").read_text()
    csv = (out / "lattice_energy" / "energies.csv").read_text().splitlines()
    assert csv[0] == "a_A,trained,initial" and len(csv) == 3
    e_trained = res["tasks"][0]["metrics"]["trained"]["min_energy_eV"]
    e_initial = res["tasks"][0]["metrics"]["initial"]["min_energy_eV"]
    assert e_trained < 0 and e_initial < 0 and abs(e_trained - e_initial) > 1e-4  # trained leaves were loaded
    md = (out / "report.md").read_text()
    assert "## fcc energy per atom" in md and "**Failed**" in md and "RuntimeError: deliberate failure" in md
    assert json.loads((out / "report.json").read_text())["runs"][0]["trainer"] == "exp"
    # a non-empty report folder is never overwritten
    with pytest.raises(Exception, match="not empty"):
        evaluate(models, cfg, tmp_path, out, pm=pm)


def test_config_errors_name_the_field():
    pm = _pm()
    with pytest.raises(SpecError, match=r"tasks.0.params.a"):
        parse_evaluation({"tasks": [{"name": "lattice_energy", "params": {"a": "x"}}]}, pm)
    with pytest.raises(SpecError, match=r"tasks.0.name: no evaluation plugin named 'nope'"):
        parse_evaluation({"tasks": [{"name": "nope"}]}, pm)
    with pytest.raises(SpecError, match=r"repeated: \['lattice_energy'\]"):
        parse_evaluation({"tasks": [{"name": "lattice_energy", "params": {"a": [1]}}] * 2}, pm)


def test_cli_errors_exit_2_and_keep_files(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    # the spec has no evaluation section and no --config was given
    assert main(["evaluate", str(run)]) == 2
    assert "no `evaluation` section" in capsys.readouterr().err
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"tasks": [{"name": "not_a_task"}]}))
    assert main(["evaluate", str(run), "--config", str(cfg)]) == 2
    assert "tasks.0.name" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
