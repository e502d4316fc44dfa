"""The titanium example end to end: every spec and evaluation config validates, and a reduced
quick fused run followed by `fusepot evaluate` with the smoke config writes a report with numbers
(the CI proof of issue #7; the full quick specs are timed by hand, see docs/titanium.md)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from fusepot.core.cli import main
from fusepot.core.spec import parse_evaluation

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "titanium"
SPECS = sorted((EXAMPLE / "specs").glob("*.yaml"))
EVALS = sorted((EXAMPLE / "evaluation").glob("*.yaml"))
MODELS = ("dft", "sequential", "fused", "fused_323K")


def test_every_model_has_a_paper_and_a_quick_spec():
    names = {p.stem for p in SPECS}
    assert {m for m in MODELS} <= names and {f"quick_{m}" for m in MODELS} <= names
    assert {p.stem for p in EVALS} >= {"paper", "quick", "smoke"}


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_spec_validates(spec, capsys):
    assert main(["validate", str(spec)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("config", EVALS, ids=lambda p: p.stem)
def test_evaluation_config_validates_and_its_files_exist(config):
    ev = parse_evaluation(yaml.safe_load(config.read_text()), source=str(config))
    # every relative path in a task's params names a file next to the config
    for t in ev.tasks:
        for v in _strings(t.params):
            if v.endswith((".csv", ".yaml", ".json")):
                assert (config.parent / v).is_file(), f"{config.name}: task {t.key}: {v} not found"


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _finite_numbers(obj):
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _finite_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _finite_numbers(v)


def smoke_spec(tmp_path: Path) -> Path:
    """quick_fused.yaml at a still smaller size: 24 configurations, 1 DFT epoch, one state point,
    0.36 ps of MD sampled every 0.03 ps, one fused epoch.  Same model, data, targets and trainer
    otherwise.  Compilation dominates the cost, so the MD is shaped to compile little: 12 frames
    (a whole number of reweighting batches of 4) and an equilibration as long as the production
    (one MD chunk shape for both)."""
    spec = yaml.safe_load((EXAMPLE / "specs" / "quick_fused.yaml").read_text())
    spec["dft"]["data"]["paths"] = [str(EXAMPLE / "data" / "dft_chgnet")]
    spec["dft"]["data"]["max_samples"] = 24
    spec["dft"]["train"].update(epochs=1)
    sp = spec["state_points"][0]
    sp["ensemble"]["params"].update(equilibration_ps=0.36, production_ps=0.36, sample_every_ps=0.03)
    spec["state_points"] = [sp]
    spec["trainer"]["epochs"] = 1
    path = tmp_path / "smoke_fused.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# CI evaluates the static sections only (about a minute); the MD sections (elastic constants,
# NPT lattice, liquid structure, diffusion) compile DimeNet++ MD and strain derivatives for another
# ~5 minutes on 2 cores: they run in the slow variant below (`pytest -m slow`).
CI_SECTIONS = ["dft_errors", "ev_curves", "phonons"]


@pytest.mark.parametrize("sections", [pytest.param(CI_SECTIONS, id="ci"),
                                      pytest.param(None, id="all", marks=pytest.mark.slow)])
def test_quick_fused_reduced_then_evaluate_smoke(tmp_path, capsys, sections):
    run, report = tmp_path / "run", tmp_path / "report"
    assert main(["run", str(smoke_spec(tmp_path)), "--out", str(run), "--quiet"]) == 0, capsys.readouterr().err
    for f in ("final_potential.npz", "summary.json", "metrics.jsonl", "run_info.json"):
        assert (run / f).is_file(), f
    only = [a for s in sections for a in ("--only", s)] if sections else []
    rc = main(["evaluate", str(run), "--config", str(EXAMPLE / "evaluation" / "smoke.yaml"), "--out", str(report),
               "--quiet", *only])
    data = json.loads((report / "report.json").read_text())
    failed = {t["id"]: t["error"] for t in data["tasks"] if t["status"] != "ok"}
    assert rc == 0 and not failed, failed
    config = parse_evaluation(yaml.safe_load((EXAMPLE / "evaluation" / "smoke.yaml").read_text()))
    assert [t["id"] for t in data["tasks"]] == (sections or [t.key for t in config.tasks])
    md = (report / "report.md").read_text()
    for t in data["tasks"]:
        assert f"## {t['title']}" in md
        numbers = list(_finite_numbers(t["metrics"]))
        assert numbers, f"section {t['id']} reported no numbers"
        assert all(math.isfinite(x) for x in numbers), f"section {t['id']} has non-finite numbers"
        for f in t["files"]:
            assert (report / t["id"] / f).stat().st_size > 0, f"{t['id']}/{f} is empty"
        assert any(f.endswith(".png") for f in t["files"]), f"section {t['id']} wrote no plot"
