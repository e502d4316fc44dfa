"""DFT trainer: LJ teacher recovery, virial masking, buffer growth, checkpoint/resume, energy shift."""
import json
from dataclasses import replace

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from fusepot.core import datasets as D
from fusepot.core.trainers import dft
from test_datasets import labelled, lj


@pytest.fixture(scope="module")
def splits():
    return D.split_dataset(labelled(20, seed=1, species=["Ar"]), (0.6, 0.2, 0.2), seed=0)


def student():
    return lj(["Ar"], epsilon=0.3, sigma=2.1)


# one padding bucket and equal train/eval batch sizes keep the number of compilations small
CFG = dict(batch_size=4, eval_batch_size=4, learning_rate=0.05, patience=None, progress_every_s=0.0)


def test_recovers_lj_teacher_parameters(splits, tmp_path):
    train, val, test = splits
    before = dft.evaluate(student(), test, batch_size=4)
    cfg = dft.DFTTrainConfig(epochs=40, checkpoint_every=20, **CFG)
    best, hist = dft.train_dft(student(), train, val, test, cfg, tmp_path, progress=None)
    after = dft.evaluate(best, test, batch_size=4)
    assert after.force_rmse < before.force_rmse / 50
    np.testing.assert_allclose(np.asarray(best.epsilon), 0.2, rtol=0.02)
    np.testing.assert_allclose(np.asarray(best.sigma), 2.3, rtol=0.005)
    # zero-force baseline is the RMS of the labels; outputs on disk
    fl = np.concatenate([s.forces.ravel() for s in test])
    np.testing.assert_allclose(after.force_rms_label, np.sqrt(np.mean(fl**2)))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(hist) == 40 and json.loads(lines[-1])["val"]["force_rmse"] > 0
    tab = json.loads((tmp_path / "test_table.json").read_text())
    assert tab["force_rmse"] == pytest.approx(after.force_rmse, rel=1e-9)
    assert "| forces (eV/Å) |" in (tmp_path / "test_table.md").read_text()
    assert json.loads((tmp_path / "best_model.json").read_text())["model_class"] == "LennardJones"


def test_virial_counts_only_where_flagged(splits):
    train = splits[0]
    pd = D.pad_dataset(train[:4], 5.0)
    batch = next(pd.batches(4))
    w = dft.DFTLossWeights(virial=1.0).vector()
    pot = student()
    loss = eqx.filter_jit(lambda b: dft.loss_terms(pot, b, w)[0])
    base = loss(batch)
    off = replace_batch(batch, has_virial=jnp.array([False, True, True, True]))
    garbage = replace_batch(off, virial=off.virial.at[0].set(jnp.nan))
    wrong_flagged = replace_batch(batch, virial=batch.virial.at[0].add(3.0))
    l_off = loss(off)
    assert float(loss(garbage)) == pytest.approx(float(l_off), rel=1e-14)
    assert float(l_off) < float(base)
    assert float(loss(wrong_flagged)) > float(base)


def replace_batch(batch, **kw):
    return eqx.tree_at(lambda b: [getattr(b, k) for k in kw], batch, list(kw.values()))


def test_checkpoint_resume_continues_exactly(splits, tmp_path):
    train, val, _ = splits
    cfg = dft.DFTTrainConfig(epochs=4, **CFG)
    full, hist_full = dft.train_dft(student(), train, val, None, cfg, tmp_path / "full", progress=None)

    class Killed(Exception):
        pass

    def kill_after_epoch_2(line):
        if line.startswith("dft epoch 2/4"):
            raise Killed

    with pytest.raises(Killed):
        dft.train_dft(student(), train, val, None, cfg, tmp_path / "cut", progress=kill_after_epoch_2)
    meta = json.loads((tmp_path / "cut" / "checkpoint_last.json").read_text())
    assert meta["epoch"] == 2
    lines = []
    resumed, hist = dft.train_dft(student(), train, val, None, cfg, tmp_path / "cut", resume=True,
                                  progress=lines.append)
    assert any("resumed" in x for x in lines)
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    np.testing.assert_allclose(np.asarray(resumed.log_sigma), np.asarray(full.log_sigma), rtol=1e-12)
    np.testing.assert_allclose(hist[-1]["val_loss"], hist_full[-1]["val_loss"], rtol=1e-10)
    # checkpoints are equinox leaf files, loadable into a fresh template
    loaded, meta = dft.load_checkpoint(tmp_path / "cut" / "best_model.eqx", student())
    assert meta["best_epoch"] == hist[-1]["best_epoch"]


class BufferedLJ(type(lj())):
    """LJ with a fake internal pair buffer that must hold every listed pair."""

    max_pairs: int = eqx.field(static=True, default=1)

    def overflow(self, conf, nbrs):
        return jnp.sum(nbrs.mask) > self.max_pairs

    def grow(self, conf, nbrs):
        return BufferedLJ(self.log_epsilon, self.log_sigma, self.r_cut, int(1.5 * int(jnp.sum(nbrs.mask))))


def test_buffer_overflow_grows_and_redoes_step(splits):
    train, val, _ = splits
    s = student()
    model = BufferedLJ(s.log_epsilon, s.log_sigma, s.r_cut, 1)
    trainer = dft.DFTTrainer(train, None, dft.DFTTrainConfig(epochs=1, **CFG), model.cutoff)
    lines = []
    grown, _, stats = trainer.epoch(model, trainer.init(model), 0, progress=lines.append)
    assert stats.complete and np.isfinite(stats.train_loss)
    assert grown.max_pairs >= max(int(b.arrays["count"].max()) for b in trainer.train.buckets)
    assert any("overflow" in x for x in lines)


def test_energy_shift_post_correction(splits):
    test = splits[2]
    shifted = D.Dataset([replace(s, energy=s.energy + 0.1 * s.n_atoms) for s in test], test.species)
    teacher = lj(["Ar"])
    shift = dft.energy_shift_per_atom(teacher, shifted)
    assert shift == pytest.approx(0.1, abs=1e-10)
    tab = dft.evaluate(dft.EnergyShifted(teacher, shift), shifted)
    assert tab.energy_rmse_mev_per_atom < 1e-6 and tab.force_rmse < 1e-10


def test_weights_from_paper_units():
    w = dft.DFTLossWeights.from_kj_mol_nm(energy=1e-6, forces=1e-2, virial=4e-6)
    # 1 eV = 96.485 kJ/mol, 1 eV/Å = 964.85 kJ/mol/nm
    assert w.energy == pytest.approx(1e-6 * 96.4853**2, rel=1e-5)
    assert w.forces == pytest.approx(1e-2 * 964.853**2, rel=1e-5)
    assert w.forces / w.energy == pytest.approx(1e6, rel=1e-9)
    with pytest.raises(Exception):
        dft.DFTTrainConfig(epochs=1, bogus=1)


@pytest.mark.slow  # ~15 s: reads the whole Saidi set and plots; run with `pytest -m slow`
def test_saidi_benchmark_script_runs_with_lennard_jones(shared_data, tmp_path):
    import importlib.util
    from pathlib import Path

    tar = shared_data / "dft" / "ti_pbe_saidi_iter0.tar.xz"
    if not tar.is_file():
        pytest.skip(f"{tar} not found")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_dft_saidi.py"
    spec = importlib.util.spec_from_file_location("train_dft_saidi", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--data", str(tar), "--potential", "lennard_jones", "--max-train", "16", "--max-eval", "8",
                      "--epochs", "1", "--batch-size", "4", "--buckets", "", "--lr", "0.01", "--out", str(tmp_path)])
    assert out["n_test"] == 8 and out["test"]["force_rms_label"] > 0.5
    assert (tmp_path / "parity.png").stat().st_size > 1000 and (tmp_path / "summary.json").is_file()
