"""DFT-only, sequential (DFT → EXP) and fused (alternating DFT and EXP) training from a spec.

Fused training (Röcken & Zavadlav, npj Comput. Mater. 10, 69 (2024)): start from a DFT
pre-trained model and alternate one DFT epoch (weighted MSE on energies, forces, virials) with
one EXP update (DiffTRe over all state points).  The two steps keep separate optimiser states
by default; `optimizer_states: shared` drives both with the spec's `optimizer`.  After every
fused epoch a checkpoint holds the parameters, both optimiser states, the trajectories and MD
states, the RNG keys and the selection state, so `--resume` after a kill continues exactly.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from .. import checkpoint as ckpt
from ..build import build_potential, build_system
from ..datasets import filter_dataset, read_dataset, split_dataset
from ..interfaces import Potential
from ..optim import make_optimizer
from ..progress import Progress
from ..spec import ExperimentSpec, SpecError
from .dft import DFTTrainConfig, DFTTrainer, EnergyShifted, energy_shift_per_atom, evaluate, train_dft
from .exp import ExpTrainer, _dtype, truncate_metrics


def load_dft_data(spec: ExperimentSpec, spec_dir: Path, species: list[str], progress: Progress):
    """(train, val, test) datasets from the spec's `dft.data` section."""
    d = spec.dft.data
    paths = [str(p if Path(p).is_absolute() else Path(spec_dir) / p) for p in d.paths]
    for p, raw in zip(paths, d.paths):
        if not Path(p).exists():
            raise SpecError(f"dft.data.paths: {raw!r} not found (resolved to {p})")
    ds = read_dataset(paths, species, exclude=d.exclude, energy_unit=d.energy_unit, length_unit=d.length_unit)
    ds = filter_dataset(ds, max_force=d.max_force, energy_per_atom=d.energy_per_atom, log=progress.line)
    if d.max_samples is not None and len(ds) > d.max_samples:
        ds = split_dataset(ds, (d.max_samples / len(ds),), seed=d.split_seed)[0]
    parts = split_dataset(ds, d.split, seed=d.split_seed)
    progress.line(f"dft data: {len(ds)} configurations → train {len(parts[0])}, validation {len(parts[1])}, "
                  f"test {len(parts[2])}")
    return parts


def _dft_config(spec: ExperimentSpec) -> DFTTrainConfig:
    cfg = DFTTrainConfig.model_validate(spec.dft.train)
    return cfg if "seed" in spec.dft.train else cfg.model_copy(update={"seed": spec.seed})


def _load_pretrained(path: str, spec_dir: Path, like: Potential) -> Potential:
    p = Path(path) if Path(path).is_absolute() else Path(spec_dir) / path
    if p.is_dir():
        p = p / "final_potential.npz"
    if not p.is_file():
        raise SpecError(f"trainer.pretrained: {p} not found")
    return ckpt.load_tree(p, like)


def run_dft(spec: ExperimentSpec, spec_dir: Path, out: Path, progress: Progress, resume: bool = False,
            potential: Optional[Potential] = None, data=None) -> tuple[Potential, dict]:
    """DFT-only training; writes `final_potential.npz` (best by validation) and the test table."""
    dtype = _dtype(spec)
    species = build_system(spec, spec_dir, dtype).species
    model = potential if potential is not None else build_potential(spec, species, spec_dir, dtype)
    train, val, test = data or load_dft_data(spec, spec_dir, species, progress)
    best, history = train_dft(model, train, val, test if len(test) else None, _dft_config(spec), out, resume=resume,
                              progress=progress.line)
    ckpt.save_tree(out / "final_potential.npz", best)
    summary = {"trainer": "dft", "epochs": len(history)}
    if len(test):
        summary["test"] = evaluate(best, test).as_dict()
    return best, summary


class FusedTrainer:
    """Alternates DFT epochs and EXP updates (`trainer.kind: fused`)."""

    def __init__(self, spec: ExperimentSpec, spec_dir: Path, out: Path, progress: Progress, pretrained: Potential,
                 data):
        self.spec, self.out, self.progress = spec, Path(out), progress
        tr = spec.trainer
        self.exp = ExpTrainer(spec, spec_dir, out, progress, potential=pretrained, total_updates=tr.epochs)
        train, val, self.test = data
        cfg = _dft_config(spec)
        if tr.optimizer_states == "shared":
            dft_opt = self.exp.optimizer
        elif tr.dft_optimizer is not None:
            dft_opt = make_optimizer(tr.dft_optimizer, "trainer.dft_optimizer")
        else:
            dft_opt = None
        self.dft = DFTTrainer(train, val, cfg, pretrained.cutoff, dft_opt)
        self.exp.potential = self.dft.prepare(self.exp.potential, progress.line)
        self.dft_state = self.dft.init(self.exp.potential)
        if tr.optimizer_states == "shared":
            self.exp.opt_state = self.dft_state
        self.epoch = 0
        self.best = {"criterion": math.inf, "epoch": 0, "bad": 0}
        self.key = jax.random.PRNGKey(spec.seed + 1)

    # -- checkpoints ---------------------------------------------------------------------------
    def _save(self):
        final = self.out / "checkpoint"
        d = ckpt.staging_dir(final)
        self.exp._save(d)
        ckpt.save_tree(d / "dft_optimizer.npz", self.dft_state)
        ckpt.save_json(d / "fused.json", {"epoch": self.epoch, "best": self.best, "key": np.asarray(self.key).tolist()})
        ckpt.commit_dir(d, final)

    def _load(self):
        d = ckpt.resolve_dir(self.out / "checkpoint")
        self.exp._load(d)
        self.dft_state = ckpt.load_tree(d / "dft_optimizer.npz", self.dft_state)
        meta = ckpt.load_json(d / "fused.json")
        self.epoch, self.best = meta["epoch"], meta["best"]
        self.key = jnp.asarray(meta["key"], dtype=jnp.uint32)
        if self.spec.trainer.optimizer_states == "shared":
            self.exp.opt_state = self.dft_state

    # -- loop ----------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> Potential:
        tr = self.spec.trainer
        self.out.mkdir(parents=True, exist_ok=True)
        metrics = self.out / "metrics.jsonl"
        exp_metrics = self.out / "exp_events.jsonl"
        if resume and (ckpt.resolve_dir(self.out / "checkpoint") / "fused.json").exists():
            self._load()
            self.progress.line(f"resumed fused training after epoch {self.epoch}")
        truncate_metrics(metrics, "epoch", self.epoch)
        truncate_metrics(exp_metrics, "update", self.exp.update_index)
        t_start, e0 = time.perf_counter(), self.epoch
        while self.epoch < tr.epochs:
            t0 = time.perf_counter()
            self.key, k_dft = jax.random.split(self.key)
            seed = int(jax.random.randint(k_dft, (), 0, 2**31 - 1))
            if tr.switching == "epoch":
                model, self.dft_state, stats = self.dft.epoch(self.exp.potential, self.dft_state, key=seed,
                                                              progress=self.progress.line, label="fused dft")
                self.exp.potential = model
                if tr.optimizer_states == "shared":
                    self.exp.opt_state = self.dft_state
                t_dft = time.perf_counter() - t0
                exp_rec = self._exp_update(exp_metrics)
                exp_records = [exp_rec]
            else:
                exp_records, stats, t_dft = self._batchwise_epoch(seed, exp_metrics)
            val = self.dft.validate(self.exp.potential)
            exp_loss = float(np.mean([r["loss"] for r in exp_records]))
            sel = tr.selection
            crit = sel.dft_weight * (val.loss if val is not None else stats.train_loss) + sel.exp_weight * exp_loss
            self.epoch += 1
            improved = crit < self.best["criterion"]
            if improved:
                self.best = {"criterion": crit, "epoch": self.epoch, "bad": 0}
                ckpt.save_tree(self.out / "best_potential.npz", self.exp.potential)
            else:
                self.best["bad"] += 1
            record = {"epoch": self.epoch, "dft_train_loss": stats.train_loss,
                      "dft_validation": val.as_dict() if val is not None else None,
                      "exp": exp_records[-1], "exp_loss": exp_loss, "criterion": crit, "best_epoch": self.best["epoch"],
                      "time_s": {"dft_epoch": t_dft, "sampling": sum(r["sample_s"] for r in exp_records),
                                 "reweighting_gradient": sum(r["reweight_s"] for r in exp_records),
                                 "total": time.perf_counter() - t0}}
            with open(metrics, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            self._save()
            el = time.perf_counter() - t_start
            eta = el / (self.epoch - e0) * (tr.epochs - self.epoch)
            fr = "" if val is None else f", validation force RMSE {val.force_rmse:.4f} eV/Å"
            self.progress.line(f"fused epoch {self.epoch}/{tr.epochs}: DFT loss {stats.train_loss:.4g}{fr}, EXP loss "
                               f"{exp_loss:.4g}, criterion {crit:.4g}{' (best)' if improved else ''}; ETA {eta:.0f} s")
            if sel.patience is not None and self.best["bad"] >= sel.patience:
                self.progress.line(f"early stop: no improvement for {sel.patience} epochs (best epoch {self.best['epoch']})")
                break
        ckpt.save_tree(self.out / "final_potential.npz", self.exp.potential)
        return self.exp.potential

    def _exp_update(self, events: Path) -> dict:
        while True:  # a rejected update rolls back and is retried with a smaller step (bounded by max_failures)
            rec = self.exp.try_update(events)
            if rec is not None:
                if self.spec.trainer.optimizer_states == "shared":
                    self.dft_state = self.exp.opt_state
                return rec

    def _batchwise_epoch(self, seed, events):
        """One pass over the DFT batches with an EXP update after every `switch_every` batches."""
        tr = self.spec.trainer
        t_dft, records, losses, n = 0.0, [], [], 0
        for chunk in self.dft.batch_chunks(tr.switch_every, seed):
            t0 = time.perf_counter()
            model, self.dft_state, stats = self.dft.epoch(self.exp.potential, self.dft_state, key=seed,
                                                          progress=self.progress.line, label="fused dft", batches=chunk)
            self.exp.potential = model
            if tr.optimizer_states == "shared":
                self.exp.opt_state = self.dft_state
            t_dft += time.perf_counter() - t0
            losses.append(stats.train_loss * stats.n_steps)
            n += stats.n_steps
            records.append(self._exp_update(events))
        from .dft import EpochStats

        return records, EpochStats(sum(losses) / max(n, 1), n, t_dft, True), t_dft


def run_sequential_or_fused(spec: ExperimentSpec, spec_dir: Path, out: Path, progress: Progress, resume: bool) -> dict:
    tr = spec.trainer
    dtype = _dtype(spec)
    species = build_system(spec, spec_dir, dtype).species
    template = build_potential(spec, species, spec_dir, dtype)
    data = load_dft_data(spec, spec_dir, species, progress) if spec.dft is not None else None
    if tr.pretrained:
        model = _load_pretrained(tr.pretrained, spec_dir, template)
        progress.line(f"starting from pre-trained parameters {tr.pretrained}")
    else:
        progress.line("DFT pre-training")
        model, _ = run_dft(spec, spec_dir, out / "dft_pretrain", progress, resume=resume, potential=template, data=data)
    summary: dict = {"trainer": tr.kind}
    if tr.kind == "sequential":
        exp = ExpTrainer(spec, spec_dir, out, progress, potential=model)
        final = exp.run(resume=resume)
        summary["final_estimates"] = exp.final_estimates()
        if data is not None and len(data[2]):
            summary["test"] = evaluate(final, data[2]).as_dict()
            if tr.energy_shift:
                shift = energy_shift_per_atom(final, data[0])
                summary["energy_shift_per_atom_eV"] = shift
                summary["test_energy_shifted"] = evaluate(EnergyShifted(final, shift), data[2]).as_dict()
        return summary
    fused = FusedTrainer(spec, spec_dir, out, progress, model, data)
    final = fused.run(resume=resume)
    summary.update(epochs=fused.epoch, best_epoch=fused.best["epoch"], final_estimates=fused.exp.final_estimates())
    if len(data[2]):
        summary["test"] = evaluate(final, data[2]).as_dict()
    return summary
