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
    import signal
    import time

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.read_text().replace("updates: 2", "updates: 4"))
    full = tmp_path / "full"
    assert subprocess.run([sys.executable, "-m", "fusepot.core.cli", "run", str(spec), "--out", str(full), "--quiet"]
                          ).returncode == 0
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "fusepot.core.cli", "run", str(spec), "--out", str(cut), "--quiet"])
    meta = cut / "checkpoint" / "meta.json"
    t0 = time.time()
    while not (meta.exists() and json.loads(meta.read_text())["update"] >= 1):
        assert proc.poll() is None and time.time() - t0 < 600
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads(meta.read_text())["update"] < 4
    assert subprocess.run([sys.executable, "-m", "fusepot.core.cli", "run", str(spec), "--out", str(cut), "--quiet",
                           "--resume"]).returncode == 0
    a, b = np.load(full / "final_potential.npz"), np.load(cut / "final_potential.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])
