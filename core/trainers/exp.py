"""EXP trainer: DiffTRe over one or more state points.

One update = for every state point, sample (or reuse) a trajectory with the current potential,
reweight to the current parameters, compute the loss Σ_m λ_m mean((⟨O_m⟩ − Õ_m)²); the update's
loss is the mean over state points; one optimiser step.  A trajectory is reused while its
N_eff/N stays above `reuse_threshold`.  MD failures (NaN, unrecoverable overflow) reject the
update: parameters roll back, the learning rate is scaled down, the event is logged.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import checkpoint as ckpt
from .. import difftre
from .. import neighbors as nb
from ..build import build_ensemble, build_potential, build_system, build_targets, state_configuration, state_point
from ..interfaces import Ensemble, Potential, StatePoint, Trajectory
from ..md import Carry, MDFailure
from ..optim import apply_updates, make_optimizer, trainable, with_structure
from ..progress import Progress
from ..spec import ExperimentSpec

log = logging.getLogger("fusepot.exp")


@dataclass
class StatePointRun:
    name: str
    conf: Any
    masses: Any
    state: StatePoint
    ensemble: Ensemble
    targets: list
    traj: Optional[Trajectory] = None
    carry: Optional[Carry] = None
    templates: Any = None
    structure: Any = None  # the potential as sized for this state point (static buffer capacities)


def _dtype(spec):
    if spec.dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    return jnp.float64 if spec.dtype == "float64" else jnp.float32


def truncate_metrics(path: Path, key: str, upto: int) -> None:
    """Keep the JSON lines of `path` whose `key` ≤ `upto` (a resumed run redoes what the last
    checkpoint did not cover, so lines written after it are dropped, not duplicated)."""
    if not path.exists():
        return
    keep = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l).get(key, 0) <= upto]
    path.write_text("".join(l + "\n" for l in keep))


class ExpTrainer:
    """Runs the DiffTRe loop described by an ExperimentSpec, writing into `out_dir`."""

    def __init__(self, spec: ExperimentSpec, spec_dir: Path, out_dir: Path, progress: Progress | None = None,
                 potential: Optional[Potential] = None, total_updates: Optional[int] = None):
        """`potential`: start from these parameters instead of building them from the spec (e.g.
        a DFT pre-trained model).  `total_updates`: default `spec.trainer.updates`."""
        self.spec, self.spec_dir, self.out = spec, Path(spec_dir), Path(out_dir)
        self.settings = spec.trainer
        self.total_updates = total_updates if total_updates is not None else getattr(spec.trainer, "updates", 0)
        self.progress = progress or Progress(spec.progress_every_s)
        self.dtype = _dtype(spec)
        system = build_system(spec, self.spec_dir, self.dtype)
        self.species = system.species
        self.potential: Potential = potential if potential is not None else build_potential(
            spec, system.species, self.spec_dir, self.dtype)
        self.points: list[StatePointRun] = []
        for i, sp in enumerate(spec.state_points):
            self.points.append(StatePointRun(
                sp.name, state_configuration(spec, sp, system, self.spec_dir, self.dtype), jnp.asarray(system.masses, self.dtype),
                state_point(sp, self.dtype), build_ensemble(sp, i, self.spec_dir, self.dtype),
                build_targets(sp, i, system.species, self.spec_dir, self.dtype)))
        self.optimizer = make_optimizer(spec.optimizer)
        params, _ = trainable(self.potential)
        self.opt_state = self.optimizer.init(params)
        self.key = jax.random.PRNGKey(spec.seed)
        self.update_index = 0
        self.lr_scale = 1.0
        self.failures = 0
        self._before_step = None
        self._share_now = True

    # -- sampling ------------------------------------------------------------------------------
    def _sample(self, pt: StatePointRun, key, potential) -> float:
        t0 = time.perf_counter()
        prog = lambda f, msg: self.progress(f, f"update {self.update_index + 1}/{self.total_updates} | {pt.name}: {msg}")
        traj, carry = pt.ensemble.sample(potential, pt.conf, pt.masses, pt.state, key, restart=pt.carry, progress=prog)
        if carry is not None and getattr(carry, "potential", None) is not None:
            # the sampler may have grown internal buffers (static structure, same parameters)
            pt.structure = carry.potential
            if self._share_now:
                self._share_structure(pt)
            potential = with_structure(potential, pt.structure)
        # U_ref recomputed by the reweighting code path itself, so that weights are exactly 1/N at θ = θ̂
        u, _, templates = difftre.evaluate_frames(potential, traj, {}, pt.templates, self.settings.reweight_batch)
        pt.traj = eqx.tree_at(lambda t: t.ref_energy, traj, u)
        pt.carry = carry
        # keep the neighbor templates: same shapes → no recompilation; overflow is checked and reallocated
        pt.templates = pt.templates or templates
        return time.perf_counter() - t0

    # -- one update ----------------------------------------------------------------------------
    def _for_point(self, pt: StatePointRun, potential):
        """`potential`'s parameters in the structure sized for this state point's system.

        The model may carry buffers sized for other work (e.g. DFT batches of 128-atom cells
        in fused training); MD and reweighting of a small cell in those would pay for the
        padding.  First use: `Potential.resized` on the state point's configuration; after
        that the structure the MD left (grown on overflow, never dropped)."""
        if pt.structure is None:
            # all state points at once, so that those of one system size start with one structure
            fresh = [p for p in self.points if p.structure is None]
            for p in fresh:
                nbrs = nb.allocate(p.conf.positions, p.conf.box, potential.cutoff, skin=0.0)
                p.structure = potential.resized(p.conf, nbrs)
            for p in fresh:
                self._share_structure(p)
        return with_structure(potential, pt.structure)

    def _share_structure(self, pt: StatePointRun) -> None:
        """Give `pt`'s structure, merged with theirs (`Potential.merged`: the larger buffers), to
        every state point whose system has the same shape and species: one compiled MD chunk
        and one compiled reweighting pass serve them all (the paper's four temperatures differ
        only in box and temperature, which are traced).  A potential that cannot merge keeps
        one structure per state point."""
        group = [p for p in self.points if p.structure is not None and p.conf.positions.shape == pt.conf.positions.shape
                 and np.array_equal(np.asarray(p.conf.species), np.asarray(pt.conf.species))]
        merged = pt.structure
        for p in group:
            if p is not pt:
                merged = merged.merged(p.structure)
                if merged is None:
                    return
        for p in group:
            p.structure = merged

    def _process_point(self, pt: StatePointRun, key, potential, device=None):
        """Sample-or-reuse, reweight and differentiate one state point (runs on `device`)."""
        tr = self.settings
        potential = self._for_point(pt, potential)
        if device is not None:
            potential = jax.device_put(potential, device)
            pt.traj, pt.carry = jax.device_put(pt.traj, device), jax.device_put(pt.carry, device)
            pt.templates = jax.device_put(pt.templates, device)
        t_sample = t_rew = 0.0
        resampled, r = False, None
        if pt.traj is not None and tr.reuse_threshold < 1.0:
            # reuse test on the forward pass only; the gradient pass (the expensive one) runs once,
            # on whichever trajectory is kept.  reuse_threshold 1.0 always resamples: no test.
            t0 = time.perf_counter()
            r = difftre.reweight(potential, pt.traj, pt.targets, templates=pt.templates, batch_size=tr.reweight_batch,
                                 with_grad=False)
            if r.n_eff / pt.traj.n_frames >= tr.reuse_threshold:
                r = difftre.reweight(potential, pt.traj, pt.targets, templates=r.templates,
                                     batch_size=tr.reweight_batch, values=r.values)
            else:
                pt.templates, r = r.templates, None
            t_rew += time.perf_counter() - t0
        if r is None:
            t_sample += self._sample(pt, key, potential)
            potential = with_structure(potential, pt.structure)  # as grown by the sampler
            resampled = True
            t0 = time.perf_counter()
            r = difftre.reweight(potential, pt.traj, pt.targets, templates=pt.templates, batch_size=tr.reweight_batch)
            t_rew += time.perf_counter() - t0
        pt.templates = r.templates
        rec = {
            "loss": r.loss, "n_eff": r.n_eff, "n_frames": pt.traj.n_frames, "resampled": resampled,
            "sample_s": t_sample, "reweight_s": t_rew,
            "targets": {t.name: {"estimate": np.asarray(r.estimates[t.name]).tolist(),
                                 "block_error": (np.asarray(r.errors[t.name]).tolist() if r.errors and t.name in r.errors
                                                 else None),
                                 "target": np.asarray(t.value_in_obs_unit).tolist(), "unit": t.obs_unit,
                                 "loss_term": r.terms[t.name]} for t in pt.targets},
        }
        self.progress.line(f"update {self.update_index + 1} | {pt.name}: loss {r.loss:.4g}, "
                           f"N_eff {r.n_eff:.1f}/{pt.traj.n_frames}" + (" (resampled)" if resampled else " (reused)") +
                           "".join(f", {t.name} {np.round(np.asarray(r.estimates[t.name]), 4).tolist()} "
                                   f"(target {np.round(t.value_in_obs_unit, 4).tolist()} {t.obs_unit})" for t in pt.targets))
        return rec, r, potential

    def _update(self):
        keys = jax.random.split(self.key, len(self.points) + 1)
        self.key = keys[0]
        devices = jax.devices()
        record = {"update": self.update_index + 1, "state_points": {}}
        for pt in self.points:  # host-side buffer sizing before any worker starts
            self._for_point(pt, self.potential)
        threaded = len(devices) > 1 and len(self.points) > 1
        # sharing a grown structure between state points mutates the other points: in the threaded
        # path only after all workers are done (run-to-run determinism)
        self._share_now = not threaded
        if threaded:
            # state points are independent: one worker thread per device (JAX releases the GIL while computing)
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(len(devices), len(self.points))) as pool:
                futs = [pool.submit(self._process_point, pt, keys[i + 1], self.potential, devices[i % len(devices)])
                        for i, pt in enumerate(self.points)]
                outs = [f.result() for f in futs]
            outs = [(rec, dataclasses.replace(r, grad=jax.device_put(r.grad, devices[0])), p) for rec, r, p in outs]
        else:
            outs = [self._process_point(pt, keys[i + 1], self.potential) for i, pt in enumerate(self.points)]
        if threaded:
            for pt in self.points:
                self._share_structure(pt)
        results = []
        params, static = trainable(self.potential)
        for pt, (rec, r, used) in zip(self.points, outs):
            record["state_points"][pt.name] = rec
            # gradients come in each state point's structure; bring them to the model's
            results.append(dataclasses.replace(r, grad=with_structure(r.grad, params)))
        t_sample = sum(rec["sample_s"] for rec, _, _ in outs)
        t_rew = sum(rec["reweight_s"] for rec, _, _ in outs)
        n = len(results)
        loss = sum(r.loss for r in results) / n
        grads = jax.tree_util.tree_map(lambda *g: sum(g) / n, *[r.grad for r in results])
        self._before_step = (self.potential, self.opt_state)
        updates, self.opt_state = self.optimizer.update(grads, self.opt_state, params)
        updates = jax.tree_util.tree_map(lambda u: u * self.lr_scale, updates)
        new_params = apply_updates(params, updates)
        if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(new_params)):
            raise FloatingPointError("non-finite parameters after the optimiser step")
        self.potential = eqx.combine(new_params, static)
        record.update(loss=loss, sample_s=t_sample, reweight_s=t_rew, lr_scale=self.lr_scale)
        return record

    # -- checkpoints ---------------------------------------------------------------------------
    def _save(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        ckpt.save_tree(d / "potential.npz", self.potential)
        ckpt.save_tree(d / "optimizer.npz", self.opt_state)
        for i, pt in enumerate(self.points):
            if pt.traj is not None:
                ckpt.save_tree(d / f"traj_{i}.npz", pt.traj)
            if pt.carry is not None:
                ckpt.save_tree(d / f"carry_{i}.npz", (pt.carry.state, pt.carry.nbrs))
        # metadata last: it marks the checkpoint as complete
        ckpt.save_json(d / "meta.json", {"update": self.update_index, "key": np.asarray(self.key).tolist(),
                                         "lr_scale": self.lr_scale, "failures": self.failures,
                                         "has_traj": [pt.traj is not None for pt in self.points],
                                         "has_carry": [pt.carry is not None for pt in self.points]})

    def _load(self, d: Path) -> None:
        meta = ckpt.load_json(d / "meta.json")
        self.potential = ckpt.load_tree(d / "potential.npz", self.potential)
        params, _ = trainable(self.potential)
        self.opt_state = ckpt.load_tree(d / "optimizer.npz", self.optimizer.init(params))
        self.update_index, self.lr_scale, self.failures = meta["update"], meta["lr_scale"], meta["failures"]
        self.key = jnp.asarray(meta["key"], dtype=jnp.uint32)
        for i, pt in enumerate(self.points):
            if meta["has_traj"][i]:
                like = Trajectory(*(jnp.zeros((1,) + x.shape[1:], x.dtype) if hasattr(x, "shape") else x for x in (
                    jnp.zeros((1, pt.conf.n_atoms, 3), self.dtype), jnp.zeros((1, 3, 3), self.dtype),
                    jnp.zeros((1, pt.conf.n_atoms, 3), self.dtype), jnp.zeros((1,), self.dtype), jnp.zeros((1,), self.dtype))),
                    pt.conf.species, pt.masses, pt.state)
                pt.traj = ckpt.load_tree(d / f"traj_{i}.npz", like)
            if meta["has_carry"][i]:
                tmpl = pt.ensemble.initial_carry(self.potential, pt.conf, pt.masses, pt.state, jax.random.PRNGKey(0))
                if tmpl is not None:
                    state, nbrs = ckpt.load_tree(d / f"carry_{i}.npz", (tmpl.state, tmpl.nbrs))
                    pt.carry = Carry(state, nbrs, self.potential)
        self.progress.line(f"resumed from {d} after update {self.update_index}")

    # -- main loop -----------------------------------------------------------------------------
    def try_update(self, metrics_path: Path) -> Optional[dict]:
        """One DiffTRe update with failure handling: returns its record, or None when the update
        was rejected (MD failure, NaN, unrecoverable overflow → parameters rolled back, learning
        rate scaled down, event logged to `metrics_path`).  Raises MDFailure after too many."""
        tr = self.settings
        t0 = time.perf_counter()
        backup = [(p.traj, p.carry, p.templates) for p in self.points]
        try:
            record = self._update()
        except (MDFailure, FloatingPointError, OverflowError) as exc:
            self.failures += 1
            # roll back the optimiser step that produced the failing parameters; sampling restarts
            # from the last good trajectories/states
            if self._before_step is not None:
                self.potential, self.opt_state = self._before_step
                self._before_step = None
            for p, (t, c, tm) in zip(self.points, backup):
                p.traj, p.carry, p.templates = t, c, tm
            self.lr_scale *= tr.lr_reduction_on_failure
            msg = (f"update {self.update_index + 1} rejected ({type(exc).__name__}: {exc}); parameters rolled back, "
                   f"learning-rate scale now {self.lr_scale:g} (failure {self.failures}/{tr.max_failures})")
            log.warning(msg)
            self.progress.line(msg)
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps({"update": self.update_index + 1, "rejected": str(exc)}) + "\n")
            if self.failures > tr.max_failures:
                raise MDFailure(f"too many failed updates ({self.failures}); last: {exc}") from exc
            return None
        self.update_index += 1
        record["wall_s"] = time.perf_counter() - t0
        return record

    def run(self, resume: bool = False) -> Potential:
        """The EXP-only training loop (`trainer.kind: exp`)."""
        self.out.mkdir(parents=True, exist_ok=True)
        metrics_path = self.out / "metrics.jsonl"
        ck = self.out / "checkpoint"
        if resume and (ckpt.resolve_dir(ck) / "meta.json").exists():
            self._load(ckpt.resolve_dir(ck))
        elif resume:
            self.progress.line(f"--resume: no checkpoint in {self.out}; starting fresh")
        truncate_metrics(metrics_path, "update", self.update_index)
        t_start, done0 = time.perf_counter(), self.update_index
        while self.update_index < self.total_updates:
            record = self.try_update(metrics_path)
            if record is None:
                continue
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            tmp = ckpt.staging_dir(ck)
            self._save(tmp)
            ckpt.commit_dir(tmp, ck)
            el = time.perf_counter() - t_start
            eta = el / (self.update_index - done0) * (self.total_updates - self.update_index)
            self.progress.line(f"update {self.update_index}/{self.total_updates} done: loss {record['loss']:.4g} "
                               f"({record['wall_s']:.1f} s; sampling {record['sample_s']:.1f} s, reweighting "
                               f"{record['reweight_s']:.1f} s; ETA {eta:.0f} s)")
        ckpt.save_tree(self.out / "final_potential.npz", self.potential)
        return self.potential

    def final_estimates(self) -> dict:
        """Reweighted estimates at the final parameters on the last trajectories (no gradient)."""
        out = {}
        for pt in self.points:
            if pt.traj is None:
                continue
            # state points may live on other devices after a sharded update; on one device, no
            # device_put: committed arguments would make jit compile the reweighting pass again
            put = (lambda x: jax.device_put(x, jax.devices()[0])) if len(jax.devices()) > 1 else (lambda x: x)
            r = difftre.reweight(put(self._for_point(pt, self.potential)), put(pt.traj), pt.targets,
                                 with_grad=False, templates=put(pt.templates), batch_size=self.settings.reweight_batch)
            out[pt.name] = {t.name: np.asarray(r.estimates[t.name]).tolist() for t in pt.targets} | {"n_eff": r.n_eff}
        return out
