"""Bottom-up training on DFT labels (energy, forces, virial): loss, epochs, evaluation, checkpoints.

Loss (mean over samples s, weighted by the samples' relative weights w_s):

    L = Σ_s w_s [ ω_U (U_s − Ũ_s)² + ω_F/(3N_s) Σ_i |F_si − F̃_si|² + h_s ω_V/9 Σ_ab (W_s,ab − W̃_s,ab)² ] / Σ_s w_s

U per configuration (eV), F (eV/Å), virial W = −∂U/∂ε (eV, core/mechanics.py); h_s = 1 only for
samples whose virial is a label (`has_virial`).  Weights are in internal units: ω_U and ω_V in
eV⁻², ω_F in Å²/eV².  See docs/dft_training.md for the defaults and for converting the weights
of the chemtrain titanium scripts (kJ/mol, nm) with `DFTLossWeights.from_kj_mol_nm`.

Structure: `loss_terms` / `train_step` are pure and jitted (one compilation per bucket shape);
`DFTTrainer.epoch(model, opt_state, key)` runs one shuffled pass on the host and returns the new
model and optimiser state — it shares nothing with other trainers but the model, so a fused
trainer can alternate it with an EXP update.  `train_dft` adds validation, best-model selection,
early stopping, JSON-lines metrics, checkpoints (equinox leaf serialisation + JSON sidecar, no
pickle), resume and a final test table.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence, Union

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from pydantic import BaseModel, ConfigDict, Field

from ..checkpoint import CheckpointError, atomic_write, load_json, save_json
from ..datasets import Batch, Dataset, PaddedDataset, pad_dataset
from ..interfaces import Potential
from ..mechanics import energy_forces_virial
from ..neighbors import NeighborList
from ..optim import apply_updates
from ..system import Configuration
from ..units import KJ_PER_MOL_IN_EV

Progress = Optional[Callable[[str], None]]
DataLike = Union[Dataset, PaddedDataset]


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
class DFTLossWeights(BaseModel):
    """Loss weights in internal units.  Defaults emphasise forces: with typical errors of
    0.1–0.2 eV/Å, a few meV/atom and ~1 eV virial on 10–60-atom cells the force term is
    10–100× the others (an assumption of this project, not the paper's values)."""

    model_config = ConfigDict(extra="forbid")
    energy: float = Field(1e-2, ge=0, description="ω_U in 1/eV², multiplies (U − Ũ)² per configuration")
    forces: float = Field(1.0, ge=0, description="ω_F in Å²/eV², multiplies the mean over 3N components of (F − F̃)²")
    virial: float = Field(1e-3, ge=0, description="ω_V in 1/eV², multiplies the mean over 9 components of (W − W̃)²")

    @classmethod
    def from_kj_mol_nm(cls, energy: float, forces: float, virial: float) -> "DFTLossWeights":
        """Convert weights written for kJ/mol and nm (chemtrain's titanium scripts use
        γ_U = 1e-6, γ_F = 1e-2, γ_V = 4e-6) to eV and Å: ω = γ · (unit factor)²."""
        kj = 1.0 / KJ_PER_MOL_IN_EV  # 1 eV in kJ/mol (≈ 96.485)
        return cls(energy=energy * kj**2, forces=forces * (kj * 10.0) ** 2, virial=virial * kj**2)

    def vector(self, dtype=None):
        return jnp.asarray([self.energy, self.forces, self.virial], dtype=dtype or jnp.asarray(0.0).dtype)


class DFTTrainConfig(BaseModel):
    """Settings of `train_dft` / `DFTTrainer` (units: eV, Å; time in minutes)."""

    model_config = ConfigDict(extra="forbid")
    weights: DFTLossWeights = Field(default_factory=DFTLossWeights)
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1)
    eval_batch_size: Optional[int] = Field(None, ge=1, description="default: 4 × batch_size")
    learning_rate: float = Field(1e-3, gt=0)
    final_learning_rate_fraction: float = Field(
        0.01, gt=0, le=1, description="exponential decay to this fraction of learning_rate over all planned steps")
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = Field(0.0, ge=0, description="adamw only")
    grad_clip_norm: Optional[float] = Field(None, gt=0)
    patience: Optional[int] = Field(20, ge=1, description="stop after this many epochs without improvement "
                                                          "of the validation loss; None: never")
    min_delta: float = Field(0.0, ge=0, description="relative improvement that counts for early stopping")
    seed: int = 0
    buckets: Optional[list[int]] = Field(None, description="atom-count bounds for padding buckets")
    skin: float = Field(0.0, ge=0, description="neighbor-list skin (Å); training configurations do not move")
    time_budget_minutes: Optional[float] = Field(None, gt=0, description="stop (after validating) when exceeded")
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints")
    progress_every_s: float = Field(30.0, ge=0, description="seconds between progress lines inside an epoch")


def make_optimizer(config: DFTTrainConfig, total_steps: int) -> optax.GradientTransformation:
    lr = optax.exponential_decay(config.learning_rate, max(1, total_steps), config.final_learning_rate_fraction)
    opt = optax.adamw(lr, weight_decay=config.weight_decay) if config.optimizer == "adamw" else optax.adam(lr)
    if config.grad_clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
    return opt


# --------------------------------------------------------------------------------------------
# pure, jitted pieces
# --------------------------------------------------------------------------------------------
def predict_batch(model: Potential, batch: Batch):
    """(U (B,), F (B, N, 3), W (B, 3, 3)) for every sample of a batch."""
    return jax.vmap(lambda c, n: energy_forces_virial(model, c, n))(batch.conf, batch.nbrs)


def loss_terms(model: Potential, batch: Batch, weights: jnp.ndarray):
    """Per-sample squared errors: (energy (U−Ũ)² eV², force mean-square eV²/Å², virial mean-square
    eV², zero where no virial label) and the weighted-mean loss.  weights = [ω_U, ω_F, ω_V]."""
    u, f, w = predict_batch(model, batch)
    n = jnp.maximum(batch.n_atoms, 1).astype(u.dtype)
    e2 = (u - batch.energy) ** 2
    df = jnp.where(batch.conf.mask[..., None], f - batch.forces, 0.0)
    f2 = jnp.sum(df**2, axis=(-1, -2)) / (3.0 * n)
    # where() (not multiplication) so that an unflagged garbage virial cannot leak NaN into the loss
    v2 = jnp.where(batch.has_virial, jnp.sum((w - batch.virial) ** 2, axis=(-1, -2)) / 9.0, 0.0)
    per = weights[0] * e2 + weights[1] * f2 + weights[2] * v2
    sw = batch.weight
    loss = jnp.sum(sw * per) / jnp.maximum(jnp.sum(sw), 1e-30)
    return loss, (e2, f2, v2)


def _overflow(model: Potential, batch: Batch):
    """(B,) flags: neighbor-list overflow or the potential's internal buffer overflow."""
    ovf = jax.vmap(model.overflow)(batch.conf, batch.nbrs)
    return jnp.logical_or(batch.nbrs.overflow, ovf) & batch.sample_mask


_overflow_jit = eqx.filter_jit(_overflow)


@eqx.filter_jit
def train_step(model, opt_state, batch: Batch, weights, optimizer: optax.GradientTransformation):
    """One optimiser step on a batch: returns (model, opt_state, loss, overflow flags (B,))."""

    def f(m):
        return loss_terms(m, batch, weights)[0]

    loss, grads = eqx.filter_value_and_grad(f)(model)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    return apply_updates(model, updates), opt_state, loss, _overflow(model, batch)


@eqx.filter_jit
def _eval_step(model, batch: Batch, weights):
    loss, (e2, f2, v2) = loss_terms(model, batch, weights)
    u, f, w = predict_batch(model, batch)
    return loss, u, f, w, _overflow(model, batch)


# --------------------------------------------------------------------------------------------
# host-side helpers
# --------------------------------------------------------------------------------------------
def _pad(data: DataLike, cutoff: float, config: Optional[DFTTrainConfig] = None,
         buckets: Optional[Sequence[int]] = None) -> PaddedDataset:
    if isinstance(data, PaddedDataset):
        if data.cutoff < cutoff:
            raise ValueError(f"padded dataset was built for cutoff {data.cutoff} Å < the model's {cutoff} Å")
        return data
    c = config or DFTTrainConfig()
    return pad_dataset(data, cutoff, skin=c.skin, buckets=buckets if buckets is not None else c.buckets)


def _sample(batch: Batch, k: int):
    return jax.tree_util.tree_map(lambda x: x[k], (batch.conf, batch.nbrs))


def _grow_until_fits(model: Potential, batch: Batch, flags, progress: Progress) -> Potential:
    """Host-side: grow the potential's buffers for the first overflowing sample (never drop)."""
    flags = np.asarray(flags)
    if np.any(np.asarray(batch.nbrs.overflow) & np.asarray(batch.sample_mask)):
        raise OverflowError("neighbor list of a padded batch overflowed; pad_dataset sizes lists exactly, "
                            "so this batch was built inconsistently")
    k = int(np.nonzero(flags)[0][0])
    conf, nbrs = _sample(batch, k)
    grown = model.grow(conf, nbrs)
    if progress:
        progress(f"dft: {type(model).__name__} internal buffer overflow on a batch; grown and step redone")
    return grown


def _rebase_opt_state(optimizer, opt_state, model: Potential):
    """After a potential grew its buffers (static fields changed, parameters not), carry the
    optimiser state's leaves over to the structure of the grown model."""
    fresh = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    old_leaves, new_def = jax.tree_util.tree_leaves(opt_state), jax.tree_util.tree_structure(fresh)
    new_leaves = jax.tree_util.tree_leaves(fresh)
    if len(old_leaves) != len(new_leaves) or any(jnp.shape(a) != jnp.shape(b) for a, b in zip(old_leaves, new_leaves)):
        raise OverflowError(f"{type(model).__name__}.grow changed the trainable parameters; "
                            "grow may only enlarge static buffers")
    return jax.tree_util.tree_unflatten(new_def, old_leaves)


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def _seed_of(key) -> int:
    if key is None:
        return 0
    if isinstance(key, (int, np.integer)):
        return int(key)
    return int(jax.random.randint(key, (), 0, 2**31 - 1))


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
@dataclass
class Predictions:
    """Labels and predictions per sample, dataset order (eV, eV/Å)."""

    n_atoms: np.ndarray  # (S,)
    energy: np.ndarray  # (S,) label
    energy_pred: np.ndarray
    forces: list  # S arrays (N_s, 3)
    forces_pred: list
    virial: np.ndarray  # (S, 3, 3)
    virial_pred: np.ndarray
    has_virial: np.ndarray  # (S,) bool
    weight: np.ndarray  # (S,)
    loss: float  # weighted-mean loss


@dataclass
class ErrorTable:
    """Test/validation errors (the layout of Table 1 of the titanium fused-training paper)."""

    n_samples: int
    n_virial: int
    loss: float
    energy_rmse_mev_per_atom: float
    energy_mae_mev_per_atom: float
    force_rmse: float  # eV/Å, over all force components
    force_mae: float
    force_rms_label: float  # eV/Å: the RMSE of a zero-force model (baseline)
    virial_rmse: float  # eV, over components of flagged samples (nan if none)
    virial_mae: float
    virial_rmse_mev_per_atom: float
    virial_mae_mev_per_atom: float

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.__dict__.items()}

    def to_markdown(self, title: str = "") -> str:
        def f(x, p=3):
            return "–" if not math.isfinite(x) else f"{x:.{p}f}"

        rows = [f"{'### ' + title if title else ''}".strip(), "",
                "| quantity | RMSE | MAE |", "|---|---|---|",
                f"| energy (meV/atom) | {f(self.energy_rmse_mev_per_atom, 2)} | {f(self.energy_mae_mev_per_atom, 2)} |",
                f"| forces (eV/Å) | {f(self.force_rmse)} | {f(self.force_mae)} |",
                f"| virial (eV) | {f(self.virial_rmse)} | {f(self.virial_mae)} |",
                f"| virial (meV/atom) | {f(self.virial_rmse_mev_per_atom, 2)} | {f(self.virial_mae_mev_per_atom, 2)} |",
                "", f"{self.n_samples} samples ({self.n_virial} with virial); zero-force baseline force RMSE "
                    f"{self.force_rms_label:.3f} eV/Å; loss {self.loss:.4g}"]
        return "\n".join(r for r in rows if r is not None).lstrip() + "\n"


def predict(model: Potential, data: DataLike, batch_size: int = 32, weights: Optional[DFTLossWeights] = None,
            progress: Progress = None, buckets: Optional[Sequence[int]] = None) -> tuple[Potential, Predictions]:
    """Predict every sample (grows the potential's buffers if needed; returns the possibly grown
    model).  A `Dataset` is padded here (`buckets` as in `pad_dataset`)."""
    pd = _pad(data, model.cutoff, buckets=buckets)
    wv = (weights or DFTLossWeights()).vector(pd.dtype)
    s = len(pd.dataset)
    u_pred = np.zeros(s)
    v_pred = np.zeros((s, 3, 3))
    f_pred: list = [None] * s
    lsum = wsum = 0.0
    for idx, batch in pd.indexed_batches(batch_size):
        while True:
            loss, u, f, w, ovf = _eval_step(model, batch, wv)
            if not bool(np.any(np.asarray(ovf))):
                break
            model = _grow_until_fits(model, batch, ovf, progress)
        u, f, w = np.asarray(u), np.asarray(f), np.asarray(w)
        bw = float(np.sum(np.asarray(batch.weight)))
        lsum += float(loss) * bw
        wsum += bw
        for r, k in enumerate(idx):
            n = pd.dataset.samples[k].n_atoms
            u_pred[k], v_pred[k], f_pred[k] = u[r], w[r], f[r, :n]
    ds = pd.dataset.samples
    return model, Predictions(
        n_atoms=np.array([x.n_atoms for x in ds]), energy=np.array([x.energy for x in ds]), energy_pred=u_pred,
        forces=[x.forces for x in ds], forces_pred=f_pred, virial=np.array([x.virial for x in ds]).reshape(s, 3, 3),
        virial_pred=v_pred, has_virial=np.array([x.has_virial for x in ds], bool),
        weight=np.array([x.weight for x in ds]), loss=lsum / wsum if wsum > 0 else float("nan"))


def error_table(p: Predictions) -> ErrorTable:
    n = p.n_atoms.astype(np.float64)
    de = (p.energy_pred - p.energy) / n * 1e3
    df = np.concatenate([(a - b).ravel() for a, b in zip(p.forces_pred, p.forces)]) if len(n) else np.zeros(0)
    fl = np.concatenate([b.ravel() for b in p.forces]) if len(n) else np.zeros(0)
    hv = p.has_virial
    dv = (p.virial_pred - p.virial)[hv]
    dva = dv / n[hv][:, None, None] * 1e3

    def rms(x):
        return float(np.sqrt(np.mean(x**2))) if x.size else float("nan")

    def mae(x):
        return float(np.mean(np.abs(x))) if x.size else float("nan")

    return ErrorTable(n_samples=int(len(n)), n_virial=int(hv.sum()), loss=float(p.loss),
                      energy_rmse_mev_per_atom=rms(de), energy_mae_mev_per_atom=mae(de),
                      force_rmse=rms(df), force_mae=mae(df), force_rms_label=rms(fl),
                      virial_rmse=rms(dv), virial_mae=mae(dv),
                      virial_rmse_mev_per_atom=rms(dva), virial_mae_mev_per_atom=mae(dva))


def evaluate(model: Potential, data: DataLike, batch_size: int = 32, weights: Optional[DFTLossWeights] = None,
             buckets: Optional[Sequence[int]] = None) -> ErrorTable:
    """Error table (energy meV/atom, forces eV/Å, virial eV and meV/atom, RMSE and MAE)."""
    return error_table(predict(model, data, batch_size, weights, buckets=buckets)[1])


def energy_shift_per_atom(model: Potential, data: DataLike, batch_size: int = 32,
                          buckets: Optional[Sequence[int]] = None) -> float:
    """Mean over samples of (Ũ_s − U_s)/N_s in eV/atom: add `shift · N` to the model's energies
    (e.g. `EnergyShifted(model, shift)`) to remove its mean per-atom offset from the labels —
    the post-correction of a model fine-tuned on experiments after DFT pre-training."""
    p = predict(model, data, batch_size, buckets=buckets)[1]
    return float(np.mean((p.energy - p.energy_pred) / p.n_atoms))


def label_dataset(potential: Potential, data: Dataset, batch_size: int = 32) -> Dataset:
    """A copy of `data` with energy, forces and virial computed by `potential` (teacher labels,
    synthetic data); every sample gets has_virial = True."""
    from dataclasses import replace

    p = predict(potential, data, batch_size)[1]
    return Dataset(tuple(replace(s, energy=float(p.energy_pred[k]), forces=np.asarray(p.forces_pred[k], np.float64),
                                 virial=np.asarray(p.virial_pred[k], np.float64), has_virial=True)
                         for k, s in enumerate(data.samples)), data.species)


class EnergyShifted(Potential):
    """U(conf) = inner(conf) + shift · (number of real atoms); forces and virial are unchanged."""

    inner: Potential
    shift_per_atom: float = eqx.field(static=True)  # eV/atom, not trained

    def __init__(self, inner: Potential, shift_per_atom: float):
        self.inner = inner
        self.shift_per_atom = float(shift_per_atom)

    @property
    def cutoff(self) -> float:
        return self.inner.cutoff

    def energy(self, conf: Configuration, nbrs: NeighborList):
        return self.inner.energy(conf, nbrs) + self.shift_per_atom * jnp.sum(conf.mask)

    def overflow(self, conf, nbrs):
        return self.inner.overflow(conf, nbrs)

    def grow(self, conf, nbrs):
        return EnergyShifted(self.inner.grow(conf, nbrs), self.shift_per_atom)


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------
@dataclass
class EpochStats:
    train_loss: float  # mean of the batch losses
    n_steps: int
    seconds: float
    complete: bool  # False when a deadline cut the epoch short
    learning_rate: float = float("nan")


class DFTTrainer:
    """Holds the padded data, the loss weights and the optimiser; no model, no mutable training
    state: `epoch` maps (model, opt_state) to new ones.

    `optimizer`: any optax transformation (e.g. from the spec); default from `config` with an
    exponential decay over `config.epochs` epochs.
    """

    def __init__(self, train: DataLike, val: Optional[DataLike], config: DFTTrainConfig, cutoff: float,
                 optimizer: Optional[optax.GradientTransformation] = None):
        self.config = config
        self.train = _pad(train, cutoff, config)
        self.val = _pad(val, cutoff, config) if val is not None and len(val) > 0 else None
        self.steps_per_epoch = self.train.n_batches(config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.optimizer = optimizer or make_optimizer(config, self.total_steps)
        self.weights = config.weights.vector(self.train.dtype)
        self._lr = None if optimizer is not None else optax.exponential_decay(
            config.learning_rate, max(1, self.total_steps), config.final_learning_rate_fraction)

    def init(self, model: Potential):
        """Optimiser state for the model's trainable (inexact array) leaves."""
        return self.optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    def prepare(self, model: Potential, progress: Progress = None) -> Potential:
        """Grow the potential's internal buffers until every training and validation batch fits."""
        bs = self.config.batch_size
        for pd in [self.train] + ([self.val] if self.val is not None else []):
            for batch in pd.batches(bs):
                while True:
                    ovf = np.asarray(_overflow_jit(model, batch))
                    if not ovf.any():
                        break
                    model = _grow_until_fits(model, batch, ovf, progress)
        return model

    def batch_chunks(self, every: int, key=None) -> list[list]:
        """The shuffled batches of one epoch cut into consecutive groups of `every` (for the
        batch-wise switching of fused training); same order as `epoch(key=key)`."""
        batches = list(self.train.batches(self.config.batch_size, seed=_seed_of(key), shuffle=True))
        return [batches[k:k + every] for k in range(0, len(batches), every)]

    def epoch(self, model: Potential, opt_state, key=None, deadline: Optional[float] = None,
              progress: Progress = None, label: str = "dft", batches=None) -> tuple[Potential, object, EpochStats]:
        """One shuffled pass over the training batches (host loop over a jitted `train_step`).

        key: jax PRNG key or int seed for the shuffle (ignored when `batches` is given).  deadline: time.monotonic() value after
        which the epoch stops early (stats.complete = False).  A buffer overflow discards the
        step, grows the potential and redoes the step.
        """
        t0 = last = time.monotonic()
        losses = []
        complete = True
        nb = self.steps_per_epoch
        if batches is None:
            batches = self.train.batches(self.config.batch_size, seed=_seed_of(key), shuffle=True)
        else:  # an explicit subset of batches (fused training, batch-wise switching)
            batches = list(batches)
            nb = len(batches)
        for k, batch in enumerate(batches):
            if deadline is not None and time.monotonic() > deadline:
                complete = False
                break
            while True:
                new_model, new_state, loss, ovf = train_step(model, opt_state, batch, self.weights, self.optimizer)
                if not bool(np.any(np.asarray(ovf))):
                    break
                model = _grow_until_fits(model, batch, ovf, progress)  # discard the step, grow, redo
                opt_state = _rebase_opt_state(self.optimizer, opt_state, model)
            model, opt_state = new_model, new_state
            losses.append(float(loss))
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"{label}: training loss became {losses[-1]} at batch {k + 1}/{nb}; "
                                         "lower the learning rate or check the data")
            now = time.monotonic()
            if progress and self.config.progress_every_s and now - last > self.config.progress_every_s:
                last = now
                rate = (now - t0) / (k + 1)
                progress(f"{label}: batch {k + 1}/{nb} loss {np.mean(losses):.4g} "
                         f"({rate:.2f} s/batch, epoch ETA {_fmt_time(rate * (nb - k - 1))})")
        stats = EpochStats(float(np.mean(losses)) if losses else float("nan"), len(losses), time.monotonic() - t0,
                           complete, self.learning_rate(opt_state))
        return model, opt_state, stats

    def learning_rate(self, opt_state) -> float:
        """Current learning rate of the default optimiser (nan for a custom optimiser)."""
        counts = [x for x in jax.tree_util.tree_leaves(opt_state) if hasattr(x, "dtype")
                  and jnp.issubdtype(x.dtype, jnp.integer) and x.ndim == 0]
        return float(self._lr(counts[0])) if counts and self._lr is not None else float("nan")

    def validate(self, model: Potential) -> Optional[ErrorTable]:
        if self.val is None:
            return None
        bs = self.config.eval_batch_size or 4 * self.config.batch_size
        return evaluate(model, self.val, bs, self.config.weights)


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
def save_checkpoint(path, tree, metadata: dict) -> None:
    """Leaves of `tree` via equinox (no pickle, no code) + `<path>.json` sidecar, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: eqx.tree_serialise_leaves(fh, tree))
    save_json(path.with_suffix(".json"), metadata)


def load_checkpoint(path, like):
    """(tree, metadata): leaves from `path` into the structure of `like` (same model/optimiser)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            tree = eqx.tree_deserialise_leaves(fh, like)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise CheckpointError(f"cannot load checkpoint {path}: {exc}") from exc
    meta_path = path.with_suffix(".json")
    meta = load_json(meta_path) if meta_path.is_file() else {}
    return tree, meta


def _clean(d):
    if isinstance(d, dict):
        return {k: _clean(v) for k, v in d.items()}
    if isinstance(d, float) and not math.isfinite(d):
        return None
    return d


# --------------------------------------------------------------------------------------------
# the training loop
# --------------------------------------------------------------------------------------------
LAST, BEST, METRICS = "checkpoint_last.eqx", "best_model.eqx", "metrics.jsonl"


def train_dft(model: Potential, train_ds: DataLike, val_ds: Optional[DataLike], test_ds: Optional[DataLike],
              config: DFTTrainConfig, out_dir, resume: bool = False, progress: Progress = print,
              optimizer: Optional[optax.GradientTransformation] = None) -> tuple[Potential, list[dict]]:
    """Train `model` on DFT labels; returns (best model by validation loss, per-epoch history).

    Writes to out_dir: metrics.jsonl (one JSON object per epoch), checkpoint_last.eqx/.json
    (model + optimiser state, every `checkpoint_every` epochs), best_model.eqx/.json, and after
    training test_table.md / test_table.json (errors of the best model on test_ds).  With
    resume=True training continues from checkpoint_last (same model class, data and config).
    Without a validation set the last model is "best" and there is no early stopping.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = progress or (lambda s: None)
    t_start = time.monotonic()
    deadline = t_start + 60.0 * config.time_budget_minutes if config.time_budget_minutes else None
    trainer = DFTTrainer(train_ds, val_ds, config, model.cutoff, optimizer)
    model = trainer.prepare(model, progress)
    opt_state = trainer.init(model)
    start, best_loss, best_epoch, bad = 0, float("inf"), -1, 0
    best_model = model
    history: list[dict] = []
    if resume and (out / LAST).is_file():
        (model, opt_state), meta = load_checkpoint(out / LAST, (model, opt_state))
        start, best_loss, best_epoch, bad = (int(meta["epoch"]), meta.get("best_val_loss") or float("inf"),
                                             int(meta.get("best_epoch", -1)), int(meta.get("bad_epochs", 0)))
        if (out / BEST).is_file():
            best_model, _ = load_checkpoint(out / BEST, model)
        if (out / METRICS).is_file():
            history = [json.loads(x) for x in (out / METRICS).read_text().splitlines() if x.strip()]
            history = [h for h in history if h["epoch"] < start]
        if meta.get("steps_per_epoch") not in (None, trainer.steps_per_epoch):
            log(f"dft: warning: checkpoint had {meta['steps_per_epoch']} steps/epoch, now {trainer.steps_per_epoch} "
                "(data or batch size changed)")
        log(f"dft: resumed from {out / LAST} after epoch {start} (best epoch {best_epoch})")
    elif resume:
        log(f"dft: nothing to resume in {out}; starting fresh")
    if not resume or start == 0:
        (out / METRICS).write_text("")
    else:
        (out / METRICS).write_text("".join(json.dumps(h) + "\n" for h in history))
    log(f"dft: {len(trainer.train)} training samples in {trainer.steps_per_epoch} batches/epoch"
        f"{'' if trainer.val is None else f', {len(trainer.val)} validation samples'}; epochs {start + 1}–{config.epochs}")

    def meta(epoch):
        return {"epoch": epoch, "best_epoch": best_epoch, "best_val_loss": best_loss if math.isfinite(best_loss) else None,
                "bad_epochs": bad, "steps_per_epoch": trainer.steps_per_epoch, "model_class": type(model).__name__,
                "species": list(trainer.train.dataset.species), "config": config.model_dump(),
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}

    stop_reason = "epochs"
    epoch_times = []
    for epoch in range(start, config.epochs):
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed), epoch)
        model, opt_state, st = trainer.epoch(model, opt_state, key, deadline, progress, f"dft epoch {epoch + 1}")
        epoch_times.append(st.seconds)
        val = trainer.validate(model)
        val_loss = val.loss if val is not None else st.train_loss
        improved = val_loss < best_loss * (1.0 - config.min_delta) if math.isfinite(best_loss) else True
        if improved:
            best_loss, best_epoch, best_model, bad = val_loss, epoch, model, 0
            save_checkpoint(out / BEST, model, meta(epoch + 1))
        else:
            bad += 1
        rec = {"epoch": epoch, "train_loss": st.train_loss, "val_loss": val.loss if val else None,
               "learning_rate": st.learning_rate, "steps": st.n_steps, "complete": st.complete,
               "seconds": round(st.seconds, 3), "best_epoch": best_epoch,
               "val": val.as_dict() if val is not None else None}
        history.append(_clean(rec))
        with open(out / METRICS, "a") as fh:
            fh.write(json.dumps(_clean(rec)) + "\n")
        if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs:
            save_checkpoint(out / LAST, (model, opt_state), meta(epoch + 1))
        eta = np.mean(epoch_times) * (config.epochs - epoch - 1)
        if deadline is not None:
            eta = min(eta, max(0.0, deadline - time.monotonic()))
        vtxt = "" if val is None else (f" val loss {val.loss:.4g} E {val.energy_rmse_mev_per_atom:.2f} meV/atom "
                                       f"F {val.force_rmse:.4f} eV/Å")
        log(f"dft epoch {epoch + 1}/{config.epochs}: train loss {st.train_loss:.4g}{vtxt}"
            f"{' *' if improved else ''} ({st.seconds:.1f} s, ETA {_fmt_time(eta)})")
        if config.patience is not None and trainer.val is not None and bad >= config.patience:
            stop_reason = f"early stopping (no improvement for {bad} epochs)"
            break
        if deadline is not None and time.monotonic() > deadline:
            if (epoch + 1) % config.checkpoint_every:
                save_checkpoint(out / LAST, (model, opt_state), meta(epoch + 1))
            stop_reason = "time budget"
            break
    log(f"dft: stopped after epoch {len(history)} ({stop_reason}); best epoch {best_epoch + 1}, "
        f"loss {best_loss:.4g}, {_fmt_time(time.monotonic() - t_start)}")
    if test_ds is not None and len(test_ds) > 0:
        tab = evaluate(best_model, _pad(test_ds, best_model.cutoff, config),
                       config.eval_batch_size or 4 * config.batch_size, config.weights)
        (out / "test_table.md").write_text(tab.to_markdown(f"Test errors (best epoch {best_epoch + 1})"))
        (out / "test_table.json").write_text(json.dumps(tab.as_dict(), indent=2))
        log(tab.to_markdown("Test errors"))
    return best_model, history
