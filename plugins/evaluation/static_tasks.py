"""Static report sections for `fusepot evaluate` (hook `fusepot_evaluations`):

- `dft_errors`: energy / force / virial errors on a DFT test set (the layout of Table 1 of the
  titanium fused-training paper), raw and with the mean per-atom energy shift removed, plus a
  parity plot;
- `ev_curves`: static energy–volume curves of several crystal structures vs a reference curve
  (e.g. DFT), Birch–Murnaghan V0, B0, B0' and phase energy differences;
- `phonons`: phonon dispersion and DOS (phonopy finite displacements through the ASE
  calculator) vs a measured DOS and an optional reference dispersion.

Nothing here knows an element: structures, lattice constants, data sets and reference tables
come from the task parameters (relative paths: the evaluation config's folder).  The numerical
work is the library code of `core/trainers/dft.py` (prediction, error table, energy shift),
`core/trainers/fused.py` (how a run loads and splits its DFT data), `ev_curve.py` and
`phonons.py`; this module adds parameters, side-by-side tables and multi-model plots.

A model that cannot be evaluated (no DFT data, an element it does not know, a failed phonon
calculation, non-finite predictions) gets a note in the section and in `metrics`; the other
models still run.  The section fails only when no model could be evaluated.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Literal, Optional, Sequence, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fusepot.core.checkpoint import atomic_write
from fusepot.core.evaluation import TaskReport, markdown_table, read_table, write_csv
from fusepot.core.interfaces import EvaluationTask
from fusepot.core.plugins import Component
from fusepot.core.spec import DFTDataSpec

log = logging.getLogger("fusepot.evaluate.static")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------
def _finite(x) -> Optional[float]:
    """float, or None for nan/inf (JSON has no nan)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _write_json(path: Path, data) -> None:
    def default(o):
        if isinstance(o, (np.floating, np.integer)):
            return _finite(o.item()) if isinstance(o, np.floating) else o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    def clean(o):
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, float) and not math.isfinite(o):
            return None
        return o

    text = json.dumps(clean(data), indent=2, default=default)
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def _figure(figsize):
    """A matplotlib Figure on the Agg canvas (no display, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


class _Failures:
    """Per-model failures: logged, noted in the section, tracebacks in `model_errors.txt`."""

    FILE = "model_errors.txt"

    def __init__(self, out_dir: Path, task: str):
        self.out_dir, self.task = out_dir, task
        self.notes: dict[str, str] = {}
        self.tracebacks: list[str] = []

    def add(self, label: str, exc: BaseException, what: str = "") -> None:
        msg = f"{type(exc).__name__}: {exc}"
        self.notes[label] = f"{what + ': ' if what else ''}{msg}"
        self.tracebacks.append(f"=== {label}{' (' + what + ')' if what else ''}\n{traceback.format_exc()}")
        log.error("%s: model %s failed%s: %s", self.task, label, f" ({what})" if what else "", msg)

    def files(self) -> list[str]:
        if not self.tracebacks:
            return []
        text = "\n".join(self.tracebacks)
        atomic_write(self.out_dir / self.FILE, lambda f: f.write(text.encode()))
        return [self.FILE]

    def markdown(self) -> str:
        if not self.notes:
            return ""
        lines = ["**Models not evaluated** (tracebacks in `model_errors.txt`):", ""]
        lines += [f"- {k}: {v}" for k, v in self.notes.items()]
        return "\n".join(lines) + "\n"

    def raise_if_all_failed(self, models) -> None:
        if models and len(self.notes) == len(models):
            raise RuntimeError(f"{self.task}: no model could be evaluated: " +
                               "; ".join(f"{k}: {v}" for k, v in self.notes.items()))


class CrystalParams(_Strict):
    """A periodic crystal: an ase.build.bulk structure, or an explicit cell ('custom')."""

    element: str = Field(..., description="chemical symbol (one of the models' species)")
    structure: str = Field(..., description="ase.build.bulk crystal structure (hcp, bcc, fcc, sc, diamond, ...), "
                                            "or 'custom' with cell_A and scaled_positions")
    a_A: Optional[float] = Field(None, gt=0, description="lattice constant a in Å (bulk structures)")
    c_A: Optional[float] = Field(None, gt=0, description="lattice constant c in Å (hcp and other hexagonal/"
                                                         "tetragonal structures; default: ase's ideal value)")
    cell_A: Optional[list[list[float]]] = Field(None, description="custom: 3×3 lattice vectors (rows) in Å")
    scaled_positions: Optional[list[list[float]]] = Field(
        None, description="custom: fractional coordinates of the atoms (one triple per atom)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.structure == "custom":
            if self.cell_A is None or self.scaled_positions is None:
                raise ValueError("structure 'custom' needs cell_A (3×3, Å) and scaled_positions")
            if self.a_A is not None or self.c_A is not None:
                raise ValueError("structure 'custom' takes its lattice from cell_A; drop a_A/c_A")
            if np.shape(self.cell_A) != (3, 3):
                raise ValueError(f"cell_A must be 3×3, got shape {np.shape(self.cell_A)}")
            if abs(np.linalg.det(np.asarray(self.cell_A, float))) < 1e-9:
                raise ValueError("cell_A has zero volume")
            sp = np.asarray(self.scaled_positions, float)
            if sp.ndim != 2 or sp.shape[1] != 3 or len(sp) == 0:
                raise ValueError(f"scaled_positions must be a list of [x, y, z] triples, got shape {sp.shape}")
        else:
            if self.cell_A is not None or self.scaled_positions is not None:
                raise ValueError(f"cell_A/scaled_positions are only for structure 'custom', not {self.structure!r}")
            if self.a_A is None:
                raise ValueError(f"structure {self.structure!r} needs a_A (Å)")
        return self

    def atoms(self):
        """ASE Atoms (primitive cell of a bulk structure, or the custom cell)."""
        from ase import Atoms
        from ase.build import bulk

        if self.structure == "custom":
            return Atoms([self.element] * len(self.scaled_positions), cell=np.asarray(self.cell_A, float),
                         scaled_positions=np.asarray(self.scaled_positions, float), pbc=True)
        kw = {"a": self.a_A}
        if self.c_A is not None:
            kw["c"] = self.c_A
        try:
            return bulk(self.element, self.structure, **kw)
        except Exception as exc:  # noqa: BLE001 - ase raises several types for bad input
            raise ValueError(f"structure: ase.build.bulk({self.element!r}, {self.structure!r}, {kw}) failed: "
                             f"{exc}") from None

    def describe(self) -> str:
        if self.structure == "custom":
            return f"custom {self.element} cell ({len(self.scaled_positions)} atoms)"
        c = f", c = {self.c_A:g} Å" if self.c_A is not None else ""
        return f"{self.structure} {self.element}, a = {self.a_A:g} Å{c}"


def _check_element(model, element: str) -> None:
    if element not in model.species:
        raise ValueError(f"element {element!r} is not among the model's species {model.species}")


# --------------------------------------------------------------------------------------------
# dft_errors
# --------------------------------------------------------------------------------------------
class DFTErrorsParams(_Strict):
    data: Optional[DFTDataSpec] = Field(
        None, description="evaluate on this data set instead of each run's own `dft.data` (same fields: paths "
                          "relative to the evaluation config, exclude, max_force, split fractions, split_seed, "
                          "max_samples, units); a plain list of paths is accepted")
    split: Literal["test", "validation", "train", "all"] = Field(
        "test", description="which part of the (train, validation, test) split to evaluate")
    energy_shift: bool = Field(True, description="also report errors with the mean per-atom energy shift removed "
                                                 "(fitted on the training split, applied to the evaluated split)")
    batch_size: int = Field(32, ge=1, description="configurations per jitted prediction batch")
    buckets: Optional[list[int]] = Field(None, description="atom-count padding buckets (default: the run's "
                                                           "dft.train.buckets, else one bucket)")
    max_plot_points: int = Field(20000, ge=100, description="force/virial components per model in the parity plot "
                                                            "(a uniform random subset; errors use all)")

    @field_validator("data", mode="before")
    @classmethod
    def _paths_only(cls, v):
        if isinstance(v, str):
            return {"paths": [v]}
        if isinstance(v, list):
            return {"paths": v}
        return v


ERROR_COLUMNS = [
    ("energy_rmse_mev_per_atom", "energy_rmse_meV_per_atom"), ("energy_mae_mev_per_atom", "energy_mae_meV_per_atom"),
    ("force_rmse", "force_rmse_eV_per_A"), ("force_mae", "force_mae_eV_per_A"),
    ("virial_rmse_mev_per_atom", "virial_rmse_meV_per_atom"), ("virial_mae_mev_per_atom", "virial_mae_meV_per_atom"),
    ("virial_rmse", "virial_rmse_eV"), ("virial_mae", "virial_mae_eV"),
    ("force_rms_label", "force_rms_label_eV_per_A"),
]


class DFTErrors(EvaluationTask):
    """DFT test-set errors per model (energy meV/atom, forces eV/Å, virial meV/atom and eV)."""

    title = "DFT test-set errors"

    def __init__(self, params: DFTErrorsParams):
        self.p = params

    # -- which data each model is evaluated on ----------------------------------------------
    def _source(self, model, ctx):
        """(data spec, base folder, description, where) or raises ValueError with a clear note."""
        if self.p.data is not None:
            return self.p.data, Path(ctx.config_dir), "task params `data`", "params.data"
        run = model.run
        if run is None:
            raise ValueError("no run folder (a potential built in code) and no `data` param: nothing to evaluate on")
        if run.spec.dft is None:
            raise ValueError(f"the run's spec ({run.run_dir}) has no `dft` section; give the task a `data` param")
        base = Path(run.spec_dir)
        info = "" if (Path(run.run_dir) / "run_info.json").is_file() else (
            f" (the run folder has no run_info.json, so relative paths resolve against the run folder {run.run_dir}; "
            "give the task a `data` param)")
        for raw in run.spec.dft.data.paths:
            p = Path(raw) if Path(raw).is_absolute() else base / raw
            if not p.exists():
                raise ValueError(f"the run's dft.data.paths entry {raw!r} was not found (resolved to {p}){info}")
        return run.spec.dft.data, base, f"the run's `dft.data` ({run.run_dir}/spec.resolved.yaml)", "dft.data"

    @staticmethod
    def _key(d: DFTDataSpec, base: Path) -> str:
        paths = [str((Path(x) if Path(x).is_absolute() else base / x).resolve()) for x in d.paths]
        rest = d.model_dump(exclude={"paths"})
        return json.dumps({"paths": paths, **rest}, sort_keys=True, default=str)

    def _load(self, d: DFTDataSpec, base: Path, species, ctx):
        """(train, validation, test) exactly as a run splits its data (core/trainers/fused.py)."""
        from fusepot.core.trainers.fused import load_dft_data

        return load_dft_data(SimpleNamespace(dft=SimpleNamespace(data=d)), base, list(species), ctx.progress)

    def _buckets(self, model):
        if self.p.buckets is not None:
            return self.p.buckets
        if model.run is not None and model.run.spec.dft is not None:
            return model.run.spec.dft.train.get("buckets")
        return None

    # -- the task ------------------------------------------------------------------------------
    def run(self, models, ctx):
        from fusepot.core.datasets import concatenate, pad_dataset
        from fusepot.core.trainers.dft import error_table, predict

        p = self.p
        fails = _Failures(ctx.out_dir, "dft_errors")
        cache: dict = {}
        results: dict[str, dict] = {}
        n = len(models)
        for i, m in enumerate(models):
            ctx.progress(i / n, f"dft_errors: {m.label}: data")
            try:
                d, base, origin, where = self._source(m, ctx)
                key = self._key(d, base)
                ck = (key, tuple(m.species))
                if ck not in cache:
                    try:
                        cache[ck] = self._load(d, base, m.species, ctx)
                    except (ValueError, OSError) as exc:  # name where the data spec came from
                        raise ValueError(f"{where}: {exc}") from exc
                train, val, test = cache[ck]
                parts = {"train": train, "validation": val, "test": test}
                ds = concatenate([train, val, test]) if p.split == "all" else parts[p.split]
                if len(ds) == 0:
                    raise ValueError(f"the {p.split} split is empty (split fractions {list(d.split)}, "
                                     f"{len(train) + len(val) + len(test)} configurations)")
                # the energy shift is fitted on the training split (on the evaluated data if there is none);
                # one padded set and one prediction pass serve both (one compilation)
                fit_own = p.energy_shift and p.split in ("test", "validation") and len(train) > 0
                union = concatenate([ds, train]) if fit_own else ds
                if fit_own:
                    fit_rows = slice(len(ds), None)
                elif p.split == "all" and len(train):
                    fit_rows = slice(0, len(train))  # `all` is train + validation + test, in that order
                else:
                    fit_rows = slice(0, None)  # split `train`, or no training split: the evaluated data
                pot = m.potential
                ctx.progress((i + 0.2) / n, f"dft_errors: {m.label}: predicting {len(union)} configurations")
                padded = pad_dataset(union, pot.cutoff, dtype=m.dtype, buckets=self._buckets(m))
                pot = fit_buffers(pot, padded, p.batch_size, ctx.progress.line)
                pot, allpred = predict(pot, padded, p.batch_size, progress=ctx.progress.line)
                pred, fitpred = _rows(allpred, slice(0, len(ds))), _rows(allpred, fit_rows)
                bad = _nonfinite(allpred)
                if bad:
                    raise FloatingPointError(f"non-finite predictions (energy, forces or virial) for {bad} of "
                                             f"{len(union)} configurations")
                rec = {"origin": origin, "data_key": key, "data": d.model_dump(), "base": str(base),
                       "split": p.split, "pred": pred, "tables": {"none": error_table(pred)}, "shift": None,
                       "shift_note": ""}
                if p.energy_shift:
                    rec["shift_note"] = ("training split" if len(train) else
                                         f"evaluated {p.split} split (the training split is empty)")
                    shift = mean_energy_shift(fitpred)
                    if not math.isfinite(shift):
                        raise FloatingPointError(f"energy shift on the {rec['shift_note']} is {shift}")
                    rec["shift"] = shift
                    rec["tables"]["energy_shift"] = error_table(shifted_predictions(pred, shift))
                results[m.label] = rec
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one model must not hide the others
                fails.add(m.label, exc)
        ctx.progress(1.0, "dft_errors: predictions done")
        files = fails.files()
        if not results:
            md = "No model could be evaluated on DFT data.\n\n" + fails.markdown()
            return TaskReport(md, {"notes": fails.notes}, files)

        rows, metrics = [], {}
        for label, r in results.items():
            metrics[label] = {"n_samples": r["tables"]["none"].n_samples, "split": r["split"], "data": r["origin"],
                              "energy_shift_eV_per_atom": r["shift"]}
            for corr, tab in r["tables"].items():
                row = {"model": label, "energy_correction": corr, "split": r["split"], "n_samples": tab.n_samples,
                       "n_virial": tab.n_virial}
                row.update({name: _finite(getattr(tab, attr)) for attr, name in ERROR_COLUMNS})
                row["energy_shift_eV_per_atom"] = r["shift"] if corr == "energy_shift" else None
                rows.append(row)
                metrics[label]["raw" if corr == "none" else "energy_shifted"] = {
                    name: _finite(getattr(tab, attr)) for attr, name in ERROR_COLUMNS}
        write_csv(ctx.out_dir / "errors.csv", rows)
        files += ["errors.csv"]

        pred_rows = []
        for label, r in results.items():
            pr = r["pred"]
            for k in range(len(pr.n_atoms)):
                nk = float(pr.n_atoms[k])
                df = np.asarray(pr.forces_pred[k]) - np.asarray(pr.forces[k])
                pred_rows.append({"model": label, "sample": k, "n_atoms": int(pr.n_atoms[k]),
                                  "energy_label_eV_per_atom": pr.energy[k] / nk,
                                  "energy_pred_eV_per_atom": pr.energy_pred[k] / nk,
                                  "energy_pred_shifted_eV_per_atom": (pr.energy_pred[k] / nk + r["shift"])
                                  if r["shift"] is not None else None,
                                  "force_rmse_eV_per_A": float(np.sqrt(np.mean(df ** 2)))})
        write_csv(ctx.out_dir / "predictions.csv", pred_rows)
        files += ["predictions.csv"]

        same = len({r["data_key"] for r in results.values()}) == 1
        _write_json(ctx.out_dir / "errors.json", {
            "units": {"energy": "meV/atom", "forces": "eV/Å (all Cartesian components)",
                      "virial": "meV/atom and eV (all 9 components of samples with a virial label)"},
            "split": p.split, "same_data_for_all_models": same,
            "models": {label: {"data": r["data"], "data_origin": r["origin"], "relative_to": r["base"],
                               "energy_shift_eV_per_atom": r["shift"], "energy_shift_fitted_on": r["shift_note"] or None,
                               "errors": {c: t.as_dict() for c, t in r["tables"].items()}}
                       for label, r in results.items()},
            "not_evaluated": fails.notes})
        files += ["errors.json"]
        _parity_plot(ctx.out_dir / "parity.png", results, p.max_plot_points, ctx.seed)
        files += ["parity.png"]

        md = [markdown_table(
            ["model", "energy", "E RMSE (meV/atom)", "E MAE (meV/atom)", "F RMSE (eV/Å)", "F MAE (eV/Å)",
             "virial RMSE (meV/atom)", "virial MAE (meV/atom)", "configs (with virial)"],
            [[row["model"], "shift removed" if row["energy_correction"] == "energy_shift" else "raw",
              *[_cell(row[c]) for c in ("energy_rmse_meV_per_atom", "energy_mae_meV_per_atom", "force_rmse_eV_per_A",
                                        "force_mae_eV_per_A", "virial_rmse_meV_per_atom", "virial_mae_meV_per_atom")],
              f"{row['n_samples']} ({row['n_virial']})"] for row in rows]), ""]
        md.append(f"Split: **{p.split}**.  Forces: RMSE/MAE over all Cartesian components; virial W = −∂U/∂ε over "
                  "the 9 components of configurations with a virial label (per atom; eV values in `errors.csv`).")
        if p.energy_shift:
            md.append("\"shift removed\": the mean per-atom energy offset Ũ/N − U/N, fitted on the training split "
                      "of the same data, added to every predicted energy (forces and virials unchanged), as the "
                      "paper reports for models fine-tuned on experiments after DFT pre-training.  Shifts (eV/atom): " +
                      ", ".join(f"{k} {r['shift']:+.4f}" for k, r in results.items() if r["shift"] is not None) + ".")
        if same:
            r0 = next(iter(results.values()))
            md.append(f"{'All models on the same data' if len(results) > 1 else 'Data'}: {_describe_data(r0)}.")
        else:
            md.append("**The models were evaluated on different data** (their runs' `dft.data` sections differ), so "
                      "the rows are not directly comparable:")
            md += [f"- {k}: {_describe_data(r)}" for k, r in results.items()]
        md.append("")
        md.append(fails.markdown())
        return TaskReport("\n".join(md), metrics | ({"not_evaluated": fails.notes} if fails.notes else {}), files)


def _cell(v):
    """A table cell: None and non-finite numbers as "–"."""
    if v is None or (isinstance(v, (float, np.floating)) and not math.isfinite(v)):
        return "–"
    return v


def _describe_data(r) -> str:
    d = r["data"]
    extra = []
    if d.get("exclude"):
        extra.append(f"exclude {d['exclude']}")
    if d.get("max_samples"):
        extra.append(f"max_samples {d['max_samples']}")
    if d.get("max_force"):
        extra.append(f"max_force {d['max_force']} eV/Å")
    return (f"{', '.join(d['paths'])} (relative to {r['base']}; from {r['origin']}), split {list(d['split'])} seed "
            f"{d['split_seed']}{'; ' + ', '.join(extra) if extra else ''}; {r['tables']['none'].n_samples} "
            f"configurations in the {r['split']} split")


def fit_buffers(potential, padded, batch_size: int, progress=None):
    """The potential with its internal buffers (e.g. DimeNet++ edge/triplet capacities) grown until
    every batch fits: `DFTTrainer.prepare`, a cheap jitted overflow check per batch, so that the
    expensive prediction compiles once instead of once before and once after growing."""
    from fusepot.core.trainers.dft import DFTTrainConfig, DFTTrainer

    trainer = DFTTrainer(padded, None, DFTTrainConfig(batch_size=batch_size), potential.cutoff)
    return trainer.prepare(potential, progress)


def _rows(pred, rows: slice):
    """The predictions of a contiguous range of samples."""
    idx = range(len(pred.n_atoms))[rows]
    sl = slice(idx.start, idx.stop)
    return dataclasses.replace(pred, n_atoms=pred.n_atoms[sl], energy=pred.energy[sl], energy_pred=pred.energy_pred[sl],
                               forces=pred.forces[sl], forces_pred=pred.forces_pred[sl], virial=pred.virial[sl],
                               virial_pred=pred.virial_pred[sl], has_virial=pred.has_virial[sl], weight=pred.weight[sl],
                               loss=float("nan"))


def mean_energy_shift(pred) -> float:
    """Mean over samples of (Ũ_s − U_s)/N_s in eV/atom: `core.trainers.dft.energy_shift_per_atom`
    from predictions already made (the test checks they agree)."""
    return float(np.mean((pred.energy - pred.energy_pred) / pred.n_atoms))


def shifted_predictions(pred, shift: float):
    """The predictions of `EnergyShifted(model, shift)`: shift·N added to each energy, forces and
    virials unchanged (the test checks they agree)."""
    return dataclasses.replace(pred, energy_pred=pred.energy_pred + shift * pred.n_atoms, loss=float("nan"))


def _nonfinite(pred) -> int:
    bad = ~np.isfinite(pred.energy_pred)
    bad |= ~np.all(np.isfinite(pred.virial_pred.reshape(len(pred.virial_pred), -1)), axis=1)
    bad |= np.array([not np.all(np.isfinite(f)) for f in pred.forces_pred], bool)
    return int(bad.sum())


def _parity_plot(path: Path, results: dict, max_points: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    has_virial = any(r["pred"].has_virial.any() for r in results.values())
    ncol = 3 if has_virial else 2
    fig = _figure((4.2 * ncol, 4.2))
    axes = fig.subplots(1, ncol)

    def sub(x, y):
        if x.size > max_points:
            k = rng.choice(x.size, max_points, replace=False)
            return x[k], y[k]
        return x, y

    for i, (label, r) in enumerate(results.items()):
        pr, col = r["pred"], f"C{i}"
        n = pr.n_atoms.astype(float)
        tab = r["tables"]["none"]
        axes[0].plot(pr.energy / n, pr.energy_pred / n, "o", ms=3, alpha=0.6, color=col,
                     label=f"{label} ({tab.energy_rmse_mev_per_atom:.1f} meV/atom)")
        fl = np.concatenate([np.ravel(f) for f in pr.forces])
        fp = np.concatenate([np.ravel(f) for f in pr.forces_pred])
        axes[1].plot(*sub(fl, fp), ".", ms=1.5, alpha=0.4, color=col, rasterized=True,
                     label=f"{label} ({tab.force_rmse:.3f} eV/Å)")
        if has_virial and pr.has_virial.any():
            hv = pr.has_virial
            vl = (pr.virial[hv] / n[hv][:, None, None] * 1e3).ravel()
            vp = (pr.virial_pred[hv] / n[hv][:, None, None] * 1e3).ravel()
            axes[2].plot(*sub(vl, vp), ".", ms=2, alpha=0.5, color=col, rasterized=True,
                         label=f"{label} ({tab.virial_rmse_mev_per_atom:.1f} meV/atom)")
    names = [("energy (eV/atom)", "E"), ("force component (eV/Å)", "F"), ("virial component (meV/atom)", "W")]
    for ax, (name, _) in zip(axes, names):
        lo, hi = ax.get_xlim()
        lo2, hi2 = ax.get_ylim()
        lo, hi = min(lo, lo2), max(hi, hi2)
        ax.plot([lo, hi], [lo, hi], "-", color="0.5", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"reference {name}")
        ax.set_ylabel(f"predicted {name}")
        ax.legend(fontsize=7, loc="upper left", markerscale=3)
    fig.suptitle("DFT parity (raw predictions, RMSE in legend)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def static_energies(model, structures: Sequence, batch_size: int = 32) -> np.ndarray:
    """Energies per atom (eV/atom) of many small periodic cells with one model.

    All cells go through one padded data set and the jitted batch prediction of
    core/trainers/dft.py (`pad_dataset` + `predict`): one compilation for every structure and
    volume, where an ASE calculator would compile once per atom count.  Buffer overflows grow the
    potential (predict); non-finite energies raise FloatingPointError.
    """
    from fusepot.core.datasets import Dataset, Sample, pad_dataset
    from fusepot.core.trainers.dft import predict

    index = {s: i for i, s in enumerate(model.species)}
    samples = []
    for at in structures:
        sym = at.get_chemical_symbols()
        unknown = sorted(set(sym) - set(index))
        if unknown:
            raise ValueError(f"element(s) {unknown} are not among the model's species {model.species}")
        n = len(at)
        samples.append(Sample(positions=np.asarray(at.get_positions(), float), species=np.array([index[x] for x in sym],
                              np.int32), box=np.asarray(at.cell.array, float), energy=0.0, forces=np.zeros((n, 3)),
                              virial=np.zeros((3, 3))))
    ds = Dataset(tuple(samples), tuple(model.species))
    pd = pad_dataset(ds, model.potential.cutoff, dtype=model.dtype)
    _, pred = predict(fit_buffers(model.potential, pd, batch_size), pd, batch_size)
    e = pred.energy_pred / pred.n_atoms
    if not np.all(np.isfinite(e)):
        raise FloatingPointError(f"non-finite energies for {int(np.sum(~np.isfinite(e)))} of {len(e)} cells")
    return e


# --------------------------------------------------------------------------------------------
# ev_curves
# --------------------------------------------------------------------------------------------
class EVStructure(CrystalParams):
    name: str = Field(..., description="label of the curve; rows of the reference CSV with this `structure` value "
                                       "are its reference")
    scalings: Optional[list[float]] = Field(None, description="volumes as multiples of the structure's volume "
                                                              "(only without a reference curve)")
    volume_range_A3_per_atom: Optional[tuple[float, float]] = Field(
        None, description="[V_min, V_max] in Å³/atom, n_points equally spaced (only without a reference curve)")
    n_points: int = Field(11, ge=5, description="points of volume_range_A3_per_atom")

    @model_validator(mode="after")
    def _volumes(self):
        if self.scalings is not None and self.volume_range_A3_per_atom is not None:
            raise ValueError("give scalings or volume_range_A3_per_atom, not both")
        if self.scalings is not None and (len(self.scalings) < 5 or min(self.scalings) <= 0):
            raise ValueError("scalings: need at least 5 positive values (Birch–Murnaghan fit)")
        if self.volume_range_A3_per_atom is not None:
            lo, hi = self.volume_range_A3_per_atom
            if not 0 < lo < hi:
                raise ValueError(f"volume_range_A3_per_atom must be 0 < V_min < V_max, got {[lo, hi]}")
        return self


class EVCurvesParams(_Strict):
    structures: list[EVStructure] = Field(..., min_length=1, description="crystal structures, each one curve")
    reference: Optional[str] = Field(
        None, description="CSV (relative to the config) with columns structure, volume_A3_per_atom, "
                          "energy_eV_per_atom; a structure with reference rows is evaluated at those volumes")
    reference_label: Optional[str] = Field(None, description="name of the reference in tables and plot "
                                                             "(default: the CSV's `label` header, else 'reference')")
    zero: Optional[str] = Field(None, description="structure whose lowest energy is the zero of each source's "
                                                  "curves (default: the first structure)")
    scalings: list[float] = Field([round(0.90 + 0.02 * k, 2) for k in range(11)],
                                  description="default volume scalings V/V_structure (structures without reference "
                                              "or own volumes)")

    @model_validator(mode="after")
    def _names(self):
        names = [s.name for s in self.structures]
        dup = sorted({x for x in names if names.count(x) > 1})
        if dup:
            raise ValueError(f"structures: names must be unique, repeated {dup}")
        if self.zero is not None and self.zero not in names:
            raise ValueError(f"zero: {self.zero!r} is not one of the structures {names}")
        if len(self.scalings) < 5 or min(self.scalings) <= 0:
            raise ValueError("scalings: need at least 5 positive values (Birch–Murnaghan fit)")
        return self


class EVCurves(EvaluationTask):
    """Static E(V) of several structures per model vs a reference; Birch–Murnaghan parameters."""

    title = "Energy–volume curves"

    def __init__(self, params: EVCurvesParams):
        self.p = params

    def _reference(self, ctx):
        if self.p.reference is None:
            return {}, None, ""
        t = read_table(ctx.path(self.p.reference))
        for c in ("structure", "volume_A3_per_atom", "energy_eV_per_atom"):
            t[c]  # KeyError naming the file and the columns it has
        for c in ("volume_A3_per_atom", "energy_eV_per_atom"):
            if t[c].dtype.kind != "f":
                raise ValueError(f"reference {t.source}: column {c!r} is not numeric")
        label = self.p.reference_label or t.meta.get("label") or "reference"
        ref = {}
        names = np.asarray(t["structure"]).astype(str)
        for name in dict.fromkeys(names):
            rows = names == name
            v, e = np.asarray(t["volume_A3_per_atom"][rows], float), np.asarray(t["energy_eV_per_atom"][rows], float)
            order = np.argsort(v)
            v, e = v[order], e[order]
            if np.any(np.diff(v) <= 0):
                raise ValueError(f"reference {t.source}: structure {name!r} has repeated volumes")
            if not (np.all(np.isfinite(v)) and np.all(np.isfinite(e))):
                raise ValueError(f"reference {t.source}: structure {name!r} has non-numeric values")
            ref[name] = (v, e)
        return ref, label, t.source

    def _scalings(self, s: EVStructure, atoms, ref) -> np.ndarray:
        v_struct = atoms.get_volume() / len(atoms)
        if s.name in ref:
            if s.scalings is not None or s.volume_range_A3_per_atom is not None:
                raise ValueError(f"structures: {s.name!r} has a reference curve, so the model is evaluated at the "
                                 "reference volumes; drop its scalings/volume_range_A3_per_atom")
            return ref[s.name][0] / v_struct
        if s.volume_range_A3_per_atom is not None:
            lo, hi = s.volume_range_A3_per_atom
            return np.linspace(lo, hi, s.n_points) / v_struct
        return np.asarray(s.scalings if s.scalings is not None else self.p.scalings, float)

    def run(self, models, ctx):
        from .ev_curve import EVCurve, birch_murnaghan_fit, compare_energies, scaled

        p = self.p
        ref, ref_label, ref_source = self._reference(ctx)
        if ref and ref_label in {m.label for m in models}:
            ref_label = f"{ref_label} (reference)"
        atoms = {s.name: s.atoms() for s in p.structures}
        scal = {s.name: self._scalings(s, atoms[s.name], ref) for s in p.structures}
        zero = p.zero or p.structures[0].name
        notes = []
        unused = sorted(set(ref) - set(atoms))
        if unused:
            notes.append(f"Reference curves without a structure in the params (not evaluated): {unused}.")
        zero_mode: str = zero
        if ref and zero not in ref:
            zero_mode = "each"
            notes.append(f"The reference has no {zero!r} curve, so every curve is shown relative to its own minimum "
                         "(shapes only; no phase energy differences from the reference).")
        fails = _Failures(ctx.out_dir, "ev_curves")
        curves: dict[str, dict] = {}
        cells, where = [], []
        for s in p.structures:
            for x in scal[s.name]:
                cells.append(scaled(atoms[s.name], x))
                where.append(s.name)
        where = np.asarray(where)
        for i, m in enumerate(models):
            ctx.progress(i / len(models), f"ev_curves: {m.label}: {len(cells)} static energies")
            try:
                for s in p.structures:
                    _check_element(m, s.element)
                e = static_energies(m, cells)
                curves[m.label] = {
                    s.name: EVCurve(s.name, scal[s.name], np.array([c.get_volume() / len(c) for c, w in
                                                                    zip(cells, where) if w == s.name]),
                                    e[where == s.name]) for s in p.structures}
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001
                fails.add(m.label, exc)
        fails.raise_if_all_failed(models)

        # fits and phase energy differences, per source (models, then the reference)
        sources = {label: {n: (c.volumes, c.energies) for n, c in cm.items()} for label, cm in curves.items()}
        if ref:
            sources[ref_label] = {n: ref[n] for n in atoms if n in ref}
        fits, bm_rows = {}, []
        for src, cs in sources.items():
            fits[src] = {}
            for n, (v, e) in cs.items():
                try:
                    f = birch_murnaghan_fit(v, e)
                    fits[src][n] = {"v0_A3_per_atom": f.v0, "e0_eV_per_atom": f.e0, "b0_GPa": f.b0_gpa,
                                    "b0_prime": f.b0_prime, "rms_residual_meV_per_atom": 1e3 * f.rms_residual,
                                    "fit": f, "e_eq": f.e0, "from_fit": True,
                                    "v0_at_edge": bool(f.v0 < v[1] or f.v0 > v[-2])}
                except ValueError as exc:
                    fits[src][n] = {"v0_A3_per_atom": float("nan"), "e0_eV_per_atom": float("nan"),
                                    "b0_GPa": float("nan"), "b0_prime": float("nan"), "rms_residual_meV_per_atom": float("nan"), "fit": None,
                                    "e_eq": float(np.min(e)), "from_fit": False, "v0_at_edge": None,
                                    "note": str(exc)}
            z = fits[src].get(zero)
            for n, f in fits[src].items():
                f["dE_meV_per_atom"] = 1e3 * (f["e_eq"] - z["e_eq"]) if z is not None else float("nan")
                f["dE_from_fit"] = bool(f["from_fit"] and z is not None and z["from_fit"])
                bm_rows.append({"source": src, "structure": n, **{c: f[c] for c in (
                    "v0_A3_per_atom", "b0_GPa", "b0_prime", "e0_eV_per_atom", "rms_residual_meV_per_atom")},
                    "v0_at_edge": f["v0_at_edge"],
                    f"dE_vs_{zero}_meV_per_atom": f["dE_meV_per_atom"], "dE_from_fit": f["dE_from_fit"]})
        # model vs reference energies (each source relative to its own zero)
        errors = {}
        if ref:
            for label, cm in curves.items():
                common = {n: ref[n] for n in cm if n in ref}
                if common:
                    errors[label] = compare_energies({n: cm[n] for n in common}, common,
                                                     zero=zero_mode)
        # files
        curve_rows = []
        for src, cs in sources.items():
            off = _offsets(cs, zero_mode)
            for n, (v, e) in cs.items():
                for vi, ei in zip(v, e):
                    curve_rows.append({"source": src, "structure": n, "volume_A3_per_atom": float(vi),
                                       "energy_eV_per_atom": float(ei),
                                       "relative_energy_meV_per_atom": 1e3 * (float(ei) - off[n])})
        write_csv(ctx.out_dir / "ev_curves.csv", curve_rows)
        write_csv(ctx.out_dir / "birch_murnaghan.csv", bm_rows)
        files = ["ev_curves.csv", "birch_murnaghan.csv"]
        err_rows = [{"model": label, "structure": n, **v} for label, e in errors.items() for n, v in e.items()]
        if err_rows:
            write_csv(ctx.out_dir / "ev_errors.csv", err_rows)
            files.append("ev_errors.csv")
        clean_fits = {src: {n: {k2: v2 for k2, v2 in f.items() if k2 not in ("fit", "e_eq")} for n, f in fs.items()}
                      for src, fs in fits.items()}
        _write_json(ctx.out_dir / "ev_curves.json", {
            "zero": zero_mode, "reference": {"label": ref_label, "file": ref_source} if ref else None,
            "structures": {s.name: {"description": s.describe(), "volume_scalings": scal[s.name].tolist()}
                           for s in p.structures},
            "birch_murnaghan": clean_fits, "errors_vs_reference_meV_per_atom": errors, "not_evaluated": fails.notes})
        files.append("ev_curves.json")
        _ev_plot(ctx.out_dir / "ev_curves.png", [s.name for s in p.structures], sources, fits, zero_mode,
                 ref_label if ref else None)
        files.append("ev_curves.png")
        files += fails.files()

        # markdown
        order = list(curves) + ([ref_label] if ref else [])
        md = [markdown_table(
            ["structure", "source", "V0 (Å³/atom)", "B0 (GPa)", "B0'", f"ΔE vs {zero} (meV/atom)"],
            [[n, src, f"{fits[src][n]['v0_A3_per_atom']:.4g}†" if fits[src][n]["v0_at_edge"] else
              _cell(fits[src][n]["v0_A3_per_atom"]), _cell(fits[src][n]["b0_GPa"]), _cell(fits[src][n]["b0_prime"]),
              fits[src][n]["dE_meV_per_atom"] if fits[src][n]["dE_from_fit"] else
              f"{fits[src][n]['dE_meV_per_atom']:.4g}*"]
             for n in atoms for src in order if n in fits.get(src, {})]), ""]
        md.append(f"Static energies, ideal positions, each structure scaled isotropically (shape kept: "
                  f"{'; '.join(s.describe() for s in p.structures)}).  Third-order Birch–Murnaghan fits; ΔE = E0(s) − "
                  f"E0({zero}) between the fitted minima of the same source (* no minimum inside the sampled range: "
                  f"lowest sampled energy used, V0/B0 not available; † minimum in the outermost volume interval: "
                  f"extrapolated, unreliable).")
        if errors:
            md += ["", markdown_table(["structure"] + [f"{lab} RMSE / max (meV/atom)" for lab in errors],
                                      [[n] + [f"{errors[lab][n]['rmse_mev_per_atom']:.3g} / "
                                              f"{errors[lab][n]['max_mev_per_atom']:.3g}" if n in errors[lab] else "–"
                                              for lab in errors] for n in atoms if any(n in e for e in errors.values())]),
                   ""]
            conv = (f"each source's energies relative to its own lowest sampled {zero} energy (phase energy "
                    "differences count, the arbitrary energy zero of a potential does not)" if zero_mode != "each"
                    else "each curve relative to its own minimum (shapes only)")
            md.append(f"Errors vs {ref_label} ({ref_source}) at the reference volumes: {conv}.")
        md += notes
        md.append(fails.markdown())
        metrics = {label: {n: {k2: _finite(v2) if isinstance(v2, float) else v2 for k2, v2 in f.items()
                               if k2 not in ("fit", "e_eq", "note")} for n, f in fits[label].items()}
                   for label in fits}
        for label, e in errors.items():
            for n, v in e.items():
                metrics[label][n].update(v)
        if fails.notes:
            metrics["not_evaluated"] = fails.notes
        return TaskReport("\n".join(md), metrics, files)


def _offsets(curves: dict, zero_mode: str) -> dict:
    """Energy subtracted from each curve of one source: its zero structure's lowest energy, or
    (zero_mode 'each') the curve's own minimum."""
    if zero_mode == "each" or zero_mode not in curves:
        return {n: float(np.min(e)) for n, (_, e) in curves.items()}
    z = float(np.min(curves[zero_mode][1]))
    return {n: z for n in curves}


def _ev_plot(path: Path, names: list, sources: dict, fits: dict, zero_mode: str, ref_label: Optional[str]) -> None:
    nc = min(4, len(names))
    nr = int(math.ceil(len(names) / nc))
    fig = _figure((3.4 * nc + 0.6, 3.3 * nr + 0.4))
    axes = np.atleast_1d(fig.subplots(nr, nc, sharey=True, squeeze=False)).ravel()
    models = [s for s in sources if s != ref_label]
    for ax, n in zip(axes, names):
        for i, src in enumerate(models + ([ref_label] if ref_label else [])):
            cs = sources[src]
            if n not in cs:
                continue
            off = _offsets(cs, zero_mode)[n]
            v, e = cs[n]
            is_ref = src == ref_label
            col = "k" if is_ref else f"C{i}"
            ax.plot(v, 1e3 * (e - off), "s" if is_ref else "o", color=col, mfc="none" if is_ref else col,
                    ms=5 if is_ref else 3.5, label=src)
            f = fits[src][n]["fit"]
            if f is not None:
                vv = np.linspace(v.min(), v.max(), 200)
                ax.plot(vv, 1e3 * (f.energy(vv) - off), "--" if is_ref else "-", color=col, lw=1.0)
        ax.set_title(n)
        ax.set_xlabel("volume (Å³/atom)")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    zlab = "own minimum" if zero_mode == "each" else f"lowest {zero_mode} energy"
    for r in range(nr):
        axes[r * nc].set_ylabel(f"energy − {zlab} (meV/atom)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Static energy–volume curves (lines: Birch–Murnaghan fits)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


# --------------------------------------------------------------------------------------------
# phonons
# --------------------------------------------------------------------------------------------
class DOSTable(_Strict):
    """A measured phonon DOS: CSV read with core.evaluation.read_table."""

    path: str = Field(..., description="CSV path (relative to the config)")
    frequency_column: str = Field("nu_THz", description="frequency column, THz")
    density_column: str = Field("dos", description="density column (any units: normalised to unit area)")
    label: str = Field("experiment", description="legend/table label")


class DispersionTable(_Strict):
    """A reference dispersion along the same path: rows of a segment between labelled rows."""

    path: str = Field(..., description="CSV path (relative to the config)")
    distance_column: str = Field("k_path_invA", description="path coordinate (any scale: points are placed by "
                                                            "their fraction along each segment)")
    label_column: str = Field("label", description="special-point letter at segment ends (G for Γ), empty elsewhere")
    frequency_prefix: str = Field("nu", description="band columns: names starting with this and ending in _THz, "
                                                    "sorted ascending per row")
    label: str = Field("reference dispersion", description="legend/table label")


class PhononsParams(_Strict):
    structure: CrystalParams = Field(..., description="the primitive cell (element, structure, a_A, c_A or custom)")
    supercell: Union[tuple[int, int, int], list[list[int]]] = Field(
        (5, 5, 3), description="supercell of the primitive cell: 3 repeats or a 3×3 integer matrix")
    displacement_A: float = Field(0.01, gt=0, description="finite displacement in Å")
    path: str = Field("GMKGA", description="band path in ASE letters of the primitive cell (hcp G M K A L H; fcc G X "
                                           "W K L U; bcc G H N P); commas break the path")
    npoints: int = Field(51, ge=2, description="q-points per path segment")
    special_points: Optional[dict[str, tuple[float, float, float]]] = Field(
        None, description="extra/overriding special points, reduced coordinates")
    mesh: Union[float, tuple[int, int, int]] = Field(50.0, description="DOS q-mesh: 3 integers or a length in Å "
                                                                       "(phonopy)")
    sigma_THz: Optional[float] = Field(None, gt=0, description="Gaussian DOS smearing in THz (default: tetrahedron "
                                                               "method)")
    relax: bool = Field(False, description="relax the cell (lattice constants, symmetry kept) with each model "
                                           "first; default: use the given lattice")
    relax_fmax_eV_per_A: float = Field(1e-3, gt=0, description="relaxation: force/stress convergence (ASE units)")
    relax_max_steps: int = Field(300, ge=1)
    experimental_dos: Optional[DOSTable] = Field(None, description="measured DOS to compare with")
    reference_dispersion: Optional[DispersionTable] = Field(None, description="reference dispersion to overlay "
                                                                              "(e.g. a Born–von Kármán model)")
    imaginary_tol_THz: float = Field(0.05, ge=0, description="modes with ν < −tol count as imaginary")
    dos_edge_fraction: float = Field(0.01, gt=0, lt=1, description="DOS edge: highest frequency where the DOS "
                                                                   "exceeds this fraction of its peak")

    @field_validator("supercell")
    @classmethod
    def _sc(cls, v):
        a = np.asarray(v)
        if a.shape not in ((3,), (3, 3)):
            raise ValueError("supercell must be 3 integers or a 3×3 integer matrix")
        if a.shape == (3,) and np.any(a < 1):
            raise ValueError(f"supercell repeats must be >= 1, got {list(v)}")
        if a.shape == (3, 3) and abs(np.linalg.det(a)) < 0.5:
            raise ValueError("supercell matrix is singular")
        return v


def presized_calculator(model, atoms, skin: float = 0.5):
    """The model's ASE calculator with the potential's internal buffers already grown for `atoms`
    (host-side, eager overflow check), so the calculator's first call compiles once instead of
    compiling, overflowing, growing and compiling again.  Later overflows are still handled by
    the calculator (grow and recompute)."""
    from fusepot.core import neighbors as nb
    from fusepot.core.calculator import FusepotCalculator
    from fusepot.core.system import from_ase

    pot = model.potential
    conf, _ = from_ase(atoms, {s: i for i, s in enumerate(model.species)}, dtype=model.dtype)
    nbrs = nb.allocate(conf.positions, conf.box, pot.cutoff, skin)
    for _ in range(8):
        if not bool(pot.overflow(conf, nbrs)):
            break
        pot = pot.grow(conf, nbrs)
    return FusepotCalculator(pot, model.species, skin=skin, dtype=model.dtype)


def _relax_cell(atoms, calc, fmax: float, steps: int):
    """Relax lattice vectors and positions with the crystal symmetry fixed (ASE)."""
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    a = atoms.copy()
    a.calc = calc
    a.set_constraint(FixSymmetry(a))
    opt = BFGS(FrechetCellFilter(a), logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    stress = a.get_stress()
    a.set_constraint()
    out = a.copy()
    return out, {"converged": converged, "steps": int(opt.nsteps),
                 "max_stress_GPa": float(np.max(np.abs(stress)) * 160.21766208)}


def _edge(nu, g, fraction) -> float:
    g = np.asarray(g, float)
    above = np.nonzero(g > fraction * g.max())[0]
    return float(np.asarray(nu)[above[-1]]) if above.size else float("nan")


def _zero_extended(x, y, lo, hi):
    """A DOS extended by zeros to cover [lo, hi] (it vanishes outside its frequency range)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if lo < x[0]:
        x, y = np.concatenate([[lo], x]), np.concatenate([[0.0], y])
    if hi > x[-1]:
        x, y = np.concatenate([x, [hi]]), np.concatenate([y, [0.0]])
    return x, y


def _n_grid(lo, hi, *xs) -> int:
    """Points of a common grid on [lo, hi]: the finer of the curves' typical (median) spacings."""
    step = min(float(np.median(np.diff(np.sort(np.asarray(x, float))))) for x in xs)
    return int(min(100_000, max(2, np.ceil((hi - lo) / max(step, 1e-12)) + 1)))


def _dos_overlap(x1, g1, x2, g2) -> float:
    """∫ min(g1, g2) dν of two unit-area densities (1 = identical), each zero outside its range."""
    lo, hi = min(x1.min(), x2.min()), max(x1.max(), x2.max())
    grid = np.linspace(lo, hi, _n_grid(lo, hi, x1, x2))
    a = np.interp(grid, x1, g1, left=0.0, right=0.0)
    b = np.interp(grid, x2, g2, left=0.0, right=0.0)
    m = np.minimum(a, b)
    return float(np.trapezoid(m, grid) if hasattr(np, "trapezoid") else np.trapz(m, grid))


def _read_dispersion(spec: DispersionTable, ctx):
    """[(start letter, end letter, fractions (n,), frequencies (n, bands))] per segment."""
    t = read_table(ctx.path(spec.path))
    x = np.asarray(t[spec.distance_column], float)
    labels = np.asarray(t[spec.label_column]).astype(str) if spec.label_column in t else None
    if labels is None:
        raise KeyError(f"{t.source}: no column {spec.label_column!r}; columns are {list(t.columns)}")
    bands = [c for c in t.columns if c.startswith(spec.frequency_prefix) and c.endswith("_THz")]
    if not bands:
        raise KeyError(f"{t.source}: no band columns {spec.frequency_prefix}*_THz; columns are {list(t.columns)}")
    nu = np.column_stack([np.asarray(t[c], float) for c in bands])
    labelled = [i for i, s in enumerate(labels) if s.strip() not in ("", "nan")]
    segs = []
    for i, j in zip(labelled[:-1], labelled[1:]):
        if j == i + 1 and x[j] == x[i]:
            continue  # the repeated end/start point of two segments
        if not x[j] > x[i]:
            raise ValueError(f"{t.source}: path coordinate not increasing between rows {i} and {j}")
        f = (x[i:j + 1] - x[i]) / (x[j] - x[i])
        segs.append((labels[i].strip(), labels[j].strip(), f, np.sort(nu[i:j + 1], axis=1)))
    if not segs:
        raise ValueError(f"{t.source}: no segments (label the special points in column {spec.label_column!r})")
    return segs, t.source


def _greek(s: str) -> str:
    return "Γ" if s in ("G", "Γ", "Gamma") else s


def _match_segments(disp, ref_segs):
    """For each reference segment the index of the model path segment with the same end points."""
    model = [(_greek(a), _greek(b)) for a, b in disp.segment_labels]
    out, used = [], set()
    for a, b, f, nu in ref_segs:
        key = (_greek(a), _greek(b))
        j = next((k for k, s in enumerate(model) if s == key and k not in used), None)
        if j is None:
            out.append(None)
        else:
            used.add(j)
            out.append(j)
    return out


class Phonons(EvaluationTask):
    """Phonon dispersion and DOS per model (phonopy), vs a measured DOS and a reference dispersion."""

    title = "Phonons"

    def __init__(self, params: PhononsParams):
        self.p = params

    def run(self, models, ctx):
        from fusepot.plugins.structure.compare import curve_rms_deviation

        from .phonons import _unit_area, phonons

        p = self.p
        exp_dos = None
        if p.experimental_dos is not None:
            t = read_table(ctx.path(p.experimental_dos.path))
            x = np.asarray(t[p.experimental_dos.frequency_column], float)
            order = np.argsort(x)
            x, g = x[order], np.asarray(t[p.experimental_dos.density_column], float)[order]
            exp_dos = (x, _unit_area(x, g), t.source)  # phonons.py's normalisation, as in plot_phonons
        ref_segs, ref_source = _read_dispersion(p.reference_dispersion, ctx) if p.reference_dispersion else (None, "")
        base = p.structure.atoms()
        fails = _Failures(ctx.out_dir, "phonons")
        res, info = {}, {}
        n = len(models)
        for i, m in enumerate(models):
            try:
                _check_element(m, p.structure.element)
                atoms, rinfo = base, {}
                if p.relax:
                    ctx.progress(i / n, f"phonons: {m.label}: relaxing the cell")
                    atoms, rinfo = _relax_cell(base, presized_calculator(m, base), p.relax_fmax_eV_per_A,
                                               p.relax_max_steps)
                    if not rinfo["converged"]:
                        log.warning("phonons: %s: cell relaxation not converged in %d steps", m.label, rinfo["steps"])
                ctx.progress((i + 0.3) / n, f"phonons: {m.label}: force constants")
                from ase.build import make_supercell

                sc = np.asarray(p.supercell)
                calc = presized_calculator(m, make_supercell(atoms, np.diag(sc) if sc.ndim == 1 else sc))
                r = phonons(atoms, calc, supercell_matrix=p.supercell, displacement=p.displacement_A, path=p.path,
                            npoints=p.npoints, special_points=p.special_points, mesh=p.mesh, sigma=p.sigma_THz)
                for what, arr in (("dispersion", r.dispersion.frequencies), ("DOS", r.dos.density)):
                    if not np.all(np.isfinite(arr)):
                        raise FloatingPointError(f"non-finite phonon {what}")
                res[m.label] = r
                cell = atoms.cell
                info[m.label] = {"relax": rinfo or None, "cell_lengths_A": [float(x) for x in cell.lengths()],
                                 "volume_A3_per_atom": float(atoms.get_volume() / len(atoms))}
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001
                fails.add(m.label, exc)
        fails.raise_if_all_failed(models)

        metrics, mrows = {}, []
        for label, r in res.items():
            mesh = r.phonopy.mesh
            fq = np.asarray(mesh.frequencies)
            w = np.asarray(mesh.weights, float)
            tol = p.imaginary_tol_THz
            imag_mesh = (fq < -tol)
            d = r.dispersion
            mt = {"min_frequency_THz": float(min(fq.min(), d.frequencies.min())),
                  "max_frequency_THz": float(max(fq.max(), d.frequencies.max())),
                  "dos_edge_THz": _edge(r.dos.frequencies, r.dos.density, p.dos_edge_fraction),
                  "imaginary_modes_path": int(np.sum(d.frequencies < -tol)),
                  "imaginary_mode_fraction_mesh": float(np.sum(w[:, None] * imag_mesh) / (w.sum() * fq.shape[1])),
                  "imaginary_qpoints_mesh": int(np.sum(w * imag_mesh.any(axis=1))),
                  "n_qpoints_mesh": int(w.sum()), "n_qpoints_path": int(len(d.distances))}
            mt.update(info[label])
            if exp_dos is not None:
                x, g, _ = exp_dos
                xm, gm = _zero_extended(r.dos.frequencies, r.dos.density, x.min(), x.max())
                mt["dos_rms_vs_experiment_per_THz"] = curve_rms_deviation(
                    xm, gm, x, g, n_points=_n_grid(x.min(), x.max(), r.dos.frequencies, x))
                mt["dos_overlap_vs_experiment"] = _dos_overlap(r.dos.frequencies, r.dos.density, x, g)
            if ref_segs is not None:
                mt.update(self._dispersion_vs_reference(d, ref_segs))
            metrics[label] = mt
            mrows.append({"model": label, **{k: v for k, v in mt.items() if not isinstance(v, (dict, list))
                                             and v is not None}})
        ref_metrics = {}
        if exp_dos is not None:
            x, g, src = exp_dos
            ref_metrics[p.experimental_dos.label] = {"dos_edge_THz": _edge(x, g, p.dos_edge_fraction),
                                                     "max_frequency_THz": float(x[g > 0].max()), "file": src}
        if ref_segs is not None:
            ref_metrics[p.reference_dispersion.label] = {
                "max_frequency_THz": float(max(s[3].max() for s in ref_segs)),
                "min_frequency_THz": float(min(s[3].min() for s in ref_segs)), "file": ref_source}
        for lab, v in ref_metrics.items():
            mrows.append({"model": lab, **{k: x for k, x in v.items() if k != "file"}})

        # files
        files = []
        drows, dos_rows = [], []
        for label, r in res.items():
            d = r.dispersion
            for k, ((a, b), (la, lb)) in enumerate(zip(d.segments, d.segment_labels)):
                for row in range(a, b):
                    drows.append({"model": label, "segment": f"{la}-{lb}", "distance_invA": float(d.distances[row]),
                                  "q1": float(d.qpoints[row, 0]), "q2": float(d.qpoints[row, 1]),
                                  "q3": float(d.qpoints[row, 2]),
                                  **{f"nu{j + 1}_THz": float(v) for j, v in enumerate(d.frequencies[row])}})
            for nu, g in zip(r.dos.frequencies, r.dos.density):
                dos_rows.append({"model": label, "nu_THz": float(nu), "dos_per_THz": float(g)})
        write_csv(ctx.out_dir / "dispersion.csv", drows)
        write_csv(ctx.out_dir / "dos.csv", dos_rows)
        write_csv(ctx.out_dir / "phonon_metrics.csv", mrows)
        _write_json(ctx.out_dir / "phonons.json", {
            "structure": p.structure.model_dump(), "supercell": p.supercell, "displacement_A": p.displacement_A,
            "path": p.path, "mesh": p.mesh, "sigma_THz": p.sigma_THz, "relax": p.relax,
            "imaginary_tol_THz": p.imaginary_tol_THz, "models": metrics, "references": ref_metrics,
            "not_evaluated": fails.notes})
        files += ["dispersion.csv", "dos.csv", "phonon_metrics.csv", "phonons.json"]
        _phonon_plot(ctx.out_dir / "phonons.png", res, exp_dos, p.experimental_dos.label if exp_dos else None,
                     ref_segs, p.reference_dispersion.label if ref_segs else None, p.structure.describe())
        files.append("phonons.png")
        files += fails.files()

        # markdown
        cols = [("max ν (THz)", "max_frequency_THz"), ("DOS edge (THz)", "dos_edge_THz"),
                ("min ν (THz)", "min_frequency_THz"), ("imag. modes on path", "imaginary_modes_path"),
                ("imag. mode fraction (mesh)", "imaginary_mode_fraction_mesh")]
        if exp_dos is not None:
            cols += [("DOS RMS diff. (1/THz)", "dos_rms_vs_experiment_per_THz"),
                     ("DOS overlap", "dos_overlap_vs_experiment")]
        if ref_segs is not None:
            cols += [("RMS Δν vs ref. dispersion (THz)", "dispersion_rms_vs_reference_THz")]
        rows = [[label] + [_cell(metrics[label].get(c)) for _, c in cols] for label in res]
        rows += [[lab] + [_cell(v.get(c)) for _, c in cols] for lab, v in ref_metrics.items()]
        sc = "×".join(str(x) for x in p.supercell) if np.ndim(p.supercell) == 1 else str(p.supercell)
        md = [markdown_table(["model"] + [c for c, _ in cols], rows), ""]
        how = " (relaxed by each model)" if p.relax else " (given lattice, not relaxed)"
        md.append(f"{p.structure.describe()}{how}; "
                  f"{sc} supercell, {p.displacement_A:g} Å displacements, path {p.path}, DOS mesh {p.mesh}"
                  f"{f', Gaussian σ = {p.sigma_THz:g} THz' if p.sigma_THz else ' (tetrahedron method)'}.  "
                  f"Imaginary modes are frequencies below −{p.imaginary_tol_THz:g} THz (shown as negative): counted "
                  "on the path and as the weighted fraction of all mesh modes.  DOS edge: highest frequency where the "
                  f"DOS exceeds {100 * p.dos_edge_fraction:g} % of its peak.")
        if exp_dos is not None:
            md.append(f"DOS comparison with {p.experimental_dos.label} ({exp_dos[2]}): both normalised to unit area "
                      "(the measured one over its own frequency range); RMS difference over the measured frequency range "
                      "(the model DOS is zero outside its own range), overlap "
                      "∫min(g_model, g_exp) dν (1 = identical).")
        if ref_segs is not None:
            md.append(f"Reference dispersion: {p.reference_dispersion.label} ({ref_source}); RMS over its points of "
                      "the difference to the model's bands (both sorted ascending), points placed by their fraction "
                      "along each segment.")
        if p.relax:
            md.append("Relaxed cells: " + "; ".join(
                f"{lab}: lengths {', '.join(f'{x:.4f}' for x in info[lab]['cell_lengths_A'])} Å"
                f"{'' if info[lab]['relax']['converged'] else ' (NOT converged)'}" for lab in res) + ".")
        md.append(fails.markdown())
        if fails.notes:
            metrics["not_evaluated"] = fails.notes
        metrics["references"] = ref_metrics
        return TaskReport("\n".join(md), metrics, files)

    @staticmethod
    def _dispersion_vs_reference(d, ref_segs) -> dict:
        match = _match_segments(d, ref_segs)
        diffs, missing = [], []
        for (a, b, f, nu), j in zip(ref_segs, match):
            if j is None:
                missing.append(f"{a}-{b}")
                continue
            s0, s1 = d.segments[j]
            x = d.distances[s0:s1]
            xr = d.segment_distance(j, np.clip(f, 0, 1))
            mb = np.sort(d.frequencies[s0:s1], axis=1)
            if mb.shape[1] != nu.shape[1]:
                raise ValueError(f"reference dispersion has {nu.shape[1]} bands, the model {mb.shape[1]}")
            model_at = np.column_stack([np.interp(xr, x, mb[:, k]) for k in range(mb.shape[1])])
            diffs.append((model_at - nu).ravel())
        out = {"dispersion_rms_vs_reference_THz": float(np.sqrt(np.mean(np.concatenate(diffs) ** 2)))
               if diffs else float("nan")}
        if missing:
            out["reference_segments_not_on_path"] = missing
        return out


def _phonon_plot(path: Path, res: dict, exp_dos, exp_label, ref_segs, ref_label, title: str) -> None:
    labels = list(res)
    d0 = res[labels[0]].dispersion
    fig = _figure((9.0, 4.6))
    ax, axd = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 1]})

    def to_first(d, j, x):
        """Path coordinate of model dispersion d mapped onto the first model's segment j."""
        a, b = d.segments[j]
        f = (x - d.distances[a]) / max(d.distances[b - 1] - d.distances[a], 1e-30)
        return d0.segment_distance(j, np.clip(f, 0, 1))

    for i, label in enumerate(labels):
        d = res[label].dispersion
        for j, (a, b) in enumerate(d.segments):
            ax.plot(to_first(d, j, d.distances[a:b]), d.frequencies[a:b], color=f"C{i}", lw=1.1,
                    label=label if j == 0 else None)
        axd.plot(res[label].dos.density, res[label].dos.frequencies, color=f"C{i}", lw=1.1, label=label)
    if ref_segs is not None:
        first = True
        for (a, b, f, nu), j in zip(ref_segs, _match_segments(d0, ref_segs)):
            if j is None:
                continue
            x = d0.segment_distance(j, np.clip(f, 0, 1))
            ax.plot(np.repeat(x[:, None], nu.shape[1], 1), nu, "o", color="k", ms=2.2, mfc="none", mew=0.6,
                    label=ref_label if first else None)
            first = False
    if exp_dos is not None:
        axd.plot(exp_dos[1], exp_dos[0], color="k", lw=1.2, label=exp_label)
    pos, lab = d0.ticks
    ax.set_xticks(pos, lab)
    for x in pos:
        ax.axvline(x, color="0.7", lw=0.6)
    ax.axhline(0.0, color="0.7", lw=0.6)
    ax.set_xlim(pos[0], pos[-1])
    ax.set_ylabel("frequency (THz)")
    handles, names = ax.get_legend_handles_labels()
    uniq = dict(zip(names, handles))
    ax.legend(uniq.values(), uniq.keys(), loc="lower right", fontsize=7)
    axd.set_xlabel("DOS (1/THz, unit area)")
    axd.set_xlim(left=0)
    axd.legend(loc="upper right", fontsize=7)
    fig.suptitle(f"Phonons: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------
COMPONENTS: list[Component] = [
    Component("dft_errors", DFTErrors, DFTErrorsParams, lambda p, ctx: DFTErrors(p),
              "DFT test-set errors (energy meV/atom, forces eV/Å, virial), raw and energy-shift corrected; parity plot"),
    Component("ev_curves", EVCurves, EVCurvesParams, lambda p, ctx: EVCurves(p),
              "Static energy–volume curves of several structures vs a reference; Birch–Murnaghan V0, B0, B0', ΔE"),
    Component("phonons", Phonons, PhononsParams, lambda p, ctx: Phonons(p),
              "Phonon dispersion and DOS (phonopy) vs a measured DOS and a reference dispersion; imaginary modes"),
]
