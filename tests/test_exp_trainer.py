"""EXP trainer: several state points, sharding over devices, MD-failure rollback."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fusepot.core import cli
from fusepot.core.md import MDFailure

SPEC = Path(__file__).parent / "data" / "multi_state.yaml"


def test_sharded_state_points_match_sequential(tmp_path):
    """Two state points on two (forced) host devices give the same parameters as on one.

    The one-device reference runs in this process (one host device; its compiled programs are
    shared with the other runs of this spec in the module); the sharded run needs its own process
    (the device count is fixed when jax starts)."""
    import jax

    assert len(jax.devices()) == 1, "the reference run needs a single-device session"
    outs = {}
    for ndev in (1, 2):
        out = tmp_path / f"dev{ndev}"
        if ndev == 1:
            assert cli.main(["run", str(SPEC), "--out", str(out), "--quiet"]) == 0
        else:
            env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={ndev}")
            code = ("import sys, jax; from fusepot.core import cli; assert len(jax.devices()) == int(sys.argv[1]);"
                    "sys.exit(cli.main(['run', sys.argv[2], '--out', sys.argv[3], '--quiet']))")
            r = subprocess.run([sys.executable, "-c", code, str(ndev), str(SPEC), str(out)], env=env, capture_output=True,
                               text=True)
            assert r.returncode == 0, r.stderr
        outs[ndev] = np.load(out / "final_potential.npz")
        lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        assert set(lines[0]["state_points"]) == {"cold", "warm"}
    for k in outs[1].files:
        np.testing.assert_allclose(outs[1][k], outs[2][k], rtol=1e-12)


@pytest.fixture
def failing_once(monkeypatch):
    from fusepot.plugins.ensembles.langevin import LangevinNVT

    real = LangevinNVT.sample
    calls = {"n": 0}

    def sample(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise MDFailure("injected explosion")
        return real(self, *a, **k)

    monkeypatch.setattr(LangevinNVT, "sample", sample)
    return calls


def test_md_failure_rolls_back_and_continues(tmp_path, failing_once, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.read_text().replace("reuse_threshold: 0.95", "reuse_threshold: 1.0"))  # resample every update
    out = tmp_path / "run"
    assert cli.main(["run", str(spec), "--out", str(out)]) == 0
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    rejected = [l for l in lines if "rejected" in l]
    assert len(rejected) == 1 and "injected explosion" in rejected[0]["rejected"]
    done = [l for l in lines if "loss" in l]
    assert [l["update"] for l in done] == [1, 2]
    assert done[-1]["lr_scale"] == pytest.approx(0.5)
    assert "rolled back" in capsys.readouterr().err


def test_multi_stage_protocol_in_the_spec(tmp_path):
    """NPT at 60 K → NPT at the state point's 40 K → NVT production in the NPT mean cell, in one spec."""
    spec = Path(__file__).parent / "data" / "protocol_state.yaml"
    out = tmp_path / "run"
    assert cli.main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["state_points"]["staged"]["n_frames"] for l in lines] == [10, 10]
    assert all(l["state_points"]["staged"]["resampled"] for l in lines)
    from fusepot.core.spec import load_spec
    from fusepot.core.plugins import get_plugin_manager

    sp = load_spec(spec).state_points[0]
    ens = get_plugin_manager().build("ensemble", sp.ensemble.name, sp.ensemble.params)
    assert ens.names == ("npt_hot", "npt_cool", "production") and ens.repeat == (False, False, True)


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted(tmp_path):
    """A real SIGKILL of `fusepot run` after its first checkpoint, then --resume: same final parameters."""
    from helpers import assert_same_final_parameters, sigkill_after_checkpoint

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.read_text().replace("updates: 2", "updates: 4"))
    run = [sys.executable, "-m", "fusepot.core.cli", "run", str(spec), "--quiet", "--out"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert subprocess.run(run + [str(full)]).returncode == 0
    assert sigkill_after_checkpoint(run + [str(cut)], cut / "checkpoint" / "meta.json", "update", poll_s=0.2) < 4
    assert subprocess.run(run + [str(cut), "--resume"]).returncode == 0
    assert_same_final_parameters(full, cut)



TWO_BOXES_DIMENET = """
name: shared_structure
seed: 0
dtype: float32
system: {crystal: {element: Ti, structure: hcp, a: 2.95, c: 4.68, orthorhombic: true}, supercell: [2, 1, 1]}
potential:
  name: dimenet_pp
  params: {embed_size: 8, out_embed_size: 8, type_embed_size: 4, int_embed_size: 4, basis_embed_size: 2,
           n_interaction_blocks: 1, n_residual_after_skip: 1, n_dense_output: 1}
state_points:
  - name: dense
    temperature: 300
    box: {lattice: {a: 2.80, c: 4.45}}
    ensemble: {name: nvt_langevin, params: {timestep_fs: 1, production_ps: 0.01, sample_every_ps: 0.005}}
    targets: [{observable: {name: pressure}, value: 0.0, unit: GPa, uncertainty: 1.0}]
  - name: loose
    temperature: 900
    box: {lattice: {a: 3.10, c: 4.92}}
    ensemble: {name: nvt_langevin, params: {timestep_fs: 1, production_ps: 0.01, sample_every_ps: 0.005}}
    targets: [{observable: {name: pressure}, value: 0.0, unit: GPa, uncertainty: 1.0}]
trainer: {kind: exp, updates: 1}
optimizer: {name: adam, learning_rate: 0.001}
"""


def test_state_points_of_one_system_size_share_one_buffer_structure(tmp_path):
    """Same atoms, different boxes → one merged DimeNet++ structure (the larger of each
    capacity), so MD and reweighting compile once for both state points instead of once each;
    a buffer grown by MD at one state point reaches the other.  (Host-side sizing only, no MD.)"""
    import dataclasses

    import jax
    import yaml

    from fusepot.core import neighbors as nb
    from fusepot.core.spec import parse_spec
    from fusepot.core.trainers.exp import ExpTrainer

    trainer = ExpTrainer(parse_spec(yaml.safe_load(TWO_BOXES_DIMENET)), tmp_path, tmp_path / "out")
    dense, loose = trainer.points
    own = {}
    for pt in (dense, loose):
        nbrs = nb.allocate(pt.conf.positions, pt.conf.box, trainer.potential.cutoff, skin=0.0)
        own[pt.name] = trainer.potential.resized(pt.conf, nbrs)
    assert own["dense"].edge_capacity > own["loose"].edge_capacity  # the boxes really differ
    trainer._for_point(loose, trainer.potential)
    assert dense.structure is loose.structure
    assert (dense.structure.max_neighbors, dense.structure.edge_capacity) == (
        max(own["dense"].max_neighbors, own["loose"].max_neighbors), own["dense"].edge_capacity)
    # growth during MD at one state point (the sampler hands back a grown copy) reaches the other
    grown = dataclasses.replace(loose.structure, max_neighbors=loose.structure.max_neighbors + 3)
    loose.structure = grown
    trainer._share_structure(loose)
    assert dense.structure is loose.structure
    assert (dense.structure.max_neighbors, dense.structure.edge_capacity) == (grown.max_neighbors, own["dense"].edge_capacity)
    used = trainer._for_point(dense, trainer.potential)
    assert jax.tree_util.tree_structure(used) == jax.tree_util.tree_structure(trainer._for_point(loose, trainer.potential))


def test_potential_merged():
    """Potential.merged: without buffers → self; DimeNet++ → larger capacities, None when either
    derives its capacities from the neighbor list (0) or the other is not a DimeNet++."""
    import dataclasses

    from fusepot.core.plugins import BuildContext, get_plugin_manager

    pm = get_plugin_manager()
    lj = pm.build("potential", "lennard_jones", {"epsilon": 0.01, "sigma": 3.4}, BuildContext(species=["Ar"]))
    assert lj.merged(lj) is lj
    net = pm.build("potential", "dimenet_pp", {"embed_size": 8, "out_embed_size": 8, "type_embed_size": 4,
                                               "int_embed_size": 4, "basis_embed_size": 2, "n_interaction_blocks": 1},
                   BuildContext(species=["Ti"]))
    a = dataclasses.replace(net, max_neighbors=20, edge_capacity=300)
    b = dataclasses.replace(net, max_neighbors=25, edge_capacity=200)
    m = a.merged(b)
    assert (m.max_neighbors, m.edge_capacity) == (25, 300) and m.merged(a) is not None
    assert net.merged(a) is None and a.merged(lj) is None and lj.merged(a) is None
