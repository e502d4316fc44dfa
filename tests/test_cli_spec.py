"""CLI and spec: exit codes, error messages naming fields, schema, run outputs, resume."""
import json
import textwrap

import numpy as np
import pytest
import yaml

from fusepot.core import cli
from fusepot.core.spec import SpecError, parse_spec
from helpers import SMALL_RUN_SPEC, assert_same_final_parameters

SMALL = SMALL_RUN_SPEC  # the tiny LJ argon EXP spec shared with the calculator and evaluation tests


def write(tmp_path, text, name="spec.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_plugins_table(capsys):
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "lennard_jones" in out and "nvt_langevin" in out and "pressure" in out and "fusepot" in out


def test_validate_ok_and_errors_name_field_paths(tmp_path, capsys):
    assert cli.main(["validate", str(write(tmp_path, SMALL))]) == 0
    bad = SMALL.replace("production_ps: 1.0", "production_ps: 1.0, bogus_key: 1").replace("unit: GPa", "unit: furlongs")
    assert cli.main(["validate", str(write(tmp_path, bad, "bad.yaml"))]) == 2
    err = capsys.readouterr().err
    assert "state_points.0.ensemble.params.bogus_key: unknown key" in err
    assert "state_points.0.targets.0.unit" in err and "furlongs" in err
    assert "Traceback" not in err


def test_unknown_top_level_key_and_wrong_type():
    data = yaml.safe_load(SMALL)
    data["colour"] = "red"
    data["state_points"][0]["temperature"] = "hot"
    with pytest.raises(SpecError) as e:
        parse_spec(data)
    assert "colour: unknown key" in str(e.value)
    assert "state_points.0.temperature" in str(e.value)


def test_unknown_plugin_and_time_correlation_target_rejected():
    data = yaml.safe_load(SMALL)
    data["potential"]["name"] = "nope"
    with pytest.raises(SpecError, match=r"potential.name: no potential plugin named 'nope'; available"):
        parse_spec(data)


def test_bad_yaml_and_missing_file_exit_2(tmp_path, capsys):
    assert cli.main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert cli.main(["validate", str(write(tmp_path, "a: [1,", "broken.yaml"))]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "not valid YAML" in err


def test_unknown_flag_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--frobnicate"])
    assert e.value.code == 2


def test_schema(tmp_path):
    out = tmp_path / "schema.json"
    assert cli.main(["schema", "-o", str(out)]) == 0
    schema = json.loads(out.read_text())
    assert "state_points" in schema["properties"]
    assert "potential:lennard_jones" in schema["x-fusepot-plugins"]


def test_run_writes_outputs_and_refuses_to_overwrite(tmp_path, capsys):
    spec = write(tmp_path, SMALL)
    out = tmp_path / "run"
    assert cli.main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    for f in ("spec.resolved.yaml", "metrics.jsonl", "final_potential.npz", "summary.json", "checkpoint/meta.json"):
        assert (out / f).exists(), f
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["update"] for l in lines] == [1, 2, 3]
    sp = lines[0]["state_points"]["cold"]
    assert {"loss", "n_eff", "targets"} <= set(sp) and "wall_s" in lines[0]
    before = (out / "metrics.jsonl").read_text()
    assert cli.main(["run", str(spec), "--out", str(out), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == before  # nothing lost


def test_checkpoints_contain_no_pickle(tmp_path):
    spec = write(tmp_path, SMALL.replace("updates: 3", "updates: 1"))
    out = tmp_path / "run"
    assert cli.main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    for f in (out / "checkpoint").glob("*.npz"):
        with np.load(f, allow_pickle=False) as d:  # raises if any entry needs pickle
            for k in d.files:
                assert d[k].dtype != object


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
    from fusepot.core.trainers import exp

    spec = write(tmp_path, SMALL)
    full = tmp_path / "full"
    assert cli.main(["run", str(spec), "--out", str(full), "--quiet"]) == 0

    cut = tmp_path / "cut"
    real_save = exp.ExpTrainer._save
    calls = {"n": 0}

    def save_then_die(self, d):
        real_save(self, d)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # simulated kill right after the 2nd checkpoint

    monkeypatch.setattr(exp.ExpTrainer, "_save", save_then_die)
    assert cli.main(["run", str(spec), "--out", str(cut), "--quiet"]) == 130
    monkeypatch.setattr(exp.ExpTrainer, "_save", real_save)
    assert cli.main(["run", str(spec), "--out", str(cut), "--quiet", "--resume"]) == 0
    assert_same_final_parameters(full, cut)  # bitwise identical
    assert [json.loads(l)["update"] for l in (cut / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_resume_with_changed_spec_refused(tmp_path, capsys):
    spec = write(tmp_path, SMALL.replace("updates: 3", "updates: 1"))
    out = tmp_path / "run"
    assert cli.main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    changed = write(tmp_path, SMALL.replace("updates: 3", "updates: 1").replace("seed: 3", "seed: 4"), "changed.yaml")
    assert cli.main(["run", str(changed), "--out", str(out), "--quiet", "--resume"]) == 2
    assert "differs" in capsys.readouterr().err


def test_bad_dataset_exits_2_naming_file_and_frame(tmp_path, capsys):
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write as ase_write

    frames = []
    for k in range(3):
        a = bulk("Ar", "fcc", a=5.26, cubic=True)
        f = np.zeros((4, 3))
        if k == 2:
            f[1, 0] = np.nan
        a.calc = SinglePointCalculator(a, energy=-0.3, forces=f)
        frames.append(a)
    ase_write(tmp_path / "bad.extxyz", frames)
    spec = write(tmp_path, SMALL.replace("trainer: {kind: exp, updates: 3, reuse_threshold: 0.95}",
                                         "dft: {data: {paths: [bad.extxyz]}}\ntrainer: {kind: dft}"))
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bad.extxyz" in err and "2" in err and "Traceback" not in err
