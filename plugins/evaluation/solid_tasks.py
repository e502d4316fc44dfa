"""Solid-state MD report sections for `fusepot evaluate` (hook `fusepot_evaluations`):

- `elastic_vs_temperature`: NVT MD in a box fixed at given lattice constants (a table
  interpolated linearly in T, or fixed values), isothermal C_ij by the stress-fluctuation
  formula (observable `elastic_constants`) with block-average error bars, Voigt K, G, ν; an
  optional experimental table gives the same K, G, ν and the mean relative error per constant.
- `npt_lattice`: anisotropic NPT (ensemble `npt_nose_hoover`) lattice constants a, c, c/a
  (observable `lattice_constants`) vs temperature at zero pressure, and vs pressure at one
  temperature; an optional experimental table of a(T), c(T) (rows flagged `suspect` dropped).

Nothing here knows an element: structure, lattice constants, temperatures and tables come from
the task parameters.  Ensembles and observables are built through the plugin manager, so their
own validation, overflow handling and NaN checks apply (core/md.py).  Every model runs with one
ensemble object and equal-sized cells, so the jitted MD (temperature, pressure and box are traced
values) and the per-frame Born terms compile once per model and are reused at every state point
(`_Sampler`: equilibration folded into the production run, neighbor capacity never shrinks;
neighbor templates of the per-frame pass carried over); buffer growth of a potential (e.g.
DimeNet++ triplets) is carried from one state point to the next.

Random keys: state point k of model m uses `ctx.key(m, k)` (pressure points: `ctx.key(m, 10000 + k)`).
A point whose MD fails (`MDFailure`: NaN, explosion, persistent overflow) is reported as failed
with the message; the other points and models still run.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Literal, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fusepot.core.evaluation import Table, TaskReport, markdown_table, read_table, write_csv
from fusepot.core.interfaces import EvaluationTask, StatePoint
from fusepot.core.md import MDFailure
from fusepot.core.plugins import BuildContext, Component, get_plugin_manager
from fusepot.core.stats import block_estimate
from fusepot.core.units import gpa_to_internal

log = logging.getLogger("fusepot.evaluate.solid")

QUANTITY_UNITS = {"K": "GPa", "G": "GPa", "nu": ""}


# --- parameters -------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnsembleRef(_Strict):
    name: str = Field(..., description="ensemble plugin (see `fusepot plugins`)")
    params: dict = Field(default_factory=dict, description="the ensemble's parameters (validated by the plugin)")

    @model_validator(mode="after")
    def _valid(self):
        pm = get_plugin_manager()
        try:
            comp = pm.get("ensemble", self.name)
        except KeyError as exc:
            raise ValueError(f"name: {exc.args[0]}") from None
        try:
            comp.params.model_validate(self.params)
        except ValidationError as exc:
            msgs = "; ".join(f"params.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" if e["loc"] else
                             f"params: {e['msg']}" for e in exc.errors())
            raise ValueError(msgs) from None
        return self


class _LatticeColumns(_Strict):
    T_column: str = Field("T_K", description="temperature column (K)")
    a_column: str = Field("a_A", description="lattice constant a column (Å)")
    c_column: Optional[str] = Field("c_A", description="lattice constant c column (Å); hexagonal only")
    suspect_column: Optional[str] = Field(
        "suspect", description="rows with a nonzero value in this column are dropped (ignored if the table lacks it)")


class LatticeTableParams(_LatticeColumns):
    """A CSV (core.evaluation.read_table) of lattice constants vs temperature."""
    table: str = Field(..., description="CSV path (relative paths: the evaluation config's folder)")


class LatticeParams(_LatticeColumns):
    """Lattice constants: fixed values, or a table interpolated linearly in T."""
    a_A: Optional[float] = Field(None, gt=0, description="fixed lattice constant a in Å (every temperature)")
    c_A: Optional[float] = Field(None, gt=0, description="fixed lattice constant c in Å (hexagonal)")
    table: Optional[str] = Field(None, description="CSV of lattice constants vs T, interpolated linearly "
                                                   "(relative paths: the evaluation config's folder)")

    @model_validator(mode="after")
    def _one(self):
        if (self.a_A is None) == (self.table is None):
            raise ValueError("give exactly one of a_A (fixed values, with c_A for hexagonal) or table")
        if self.table is not None and self.c_A is not None:
            raise ValueError("c_A is for fixed values; with a table use c_column")
        return self


class CrystalParams(_Strict):
    element: str = Field(..., description="chemical symbol (one of the models' species)")
    structure: str = Field(..., description="ase.build.bulk crystal structure: hcp, fcc, bcc, ...")
    symmetry: Literal["hexagonal", "cubic"] = Field(
        ..., description="hexagonal: c along z, (C11, C12, C13, C33, C44), a and c; cubic: (C11, C12, C44), a")
    hexagonal_cell: Literal["orthohexagonal", "primitive"] = Field(
        "orthohexagonal", description="hexagonal only: 4-atom cell (a, √3a, c) along x, y, z, or the 2-atom primitive cell")
    supercell: tuple[int, int, int] = Field(
        (1, 1, 1), description="repeats of the cell (orthohexagonal/primitive for hexagonal, conventional cubic "
                               "otherwise) along its three vectors")
    title: Optional[str] = Field(None, description="section heading (default: generated)")

    @field_validator("supercell")
    @classmethod
    def _positive(cls, v):
        if any(n < 1 for n in v):
            raise ValueError(f"repeats must be >= 1, got {list(v)}")
        return v

    def _check_lattice(self, lat: _LatticeColumns, field: str, need_table_c: bool = True):
        if self.symmetry == "hexagonal":
            if isinstance(lat, LatticeParams) and lat.table is None and lat.c_A is None:
                raise ValueError(f"{field}.c_A: hexagonal symmetry needs c")
            if need_table_c and getattr(lat, "table", None) is not None and not lat.c_column:
                raise ValueError(f"{field}.c_column: hexagonal symmetry needs a c column")


Temperatures = Union[list[float], Literal["experiment"]]


def _check_temperatures(v):
    if isinstance(v, list):
        if not v:
            raise ValueError("give at least one temperature")
        if any(t <= 0 for t in v):
            raise ValueError(f"temperatures must be positive (K), got {v}")
    return v


class ElasticExperiment(_Strict):
    table: str = Field(..., description="CSV with a temperature column and one column per constant, GPa "
                                        "(relative paths: the evaluation config's folder)")
    T_column: str = Field("T_K", description="temperature column (K)")
    columns: dict[str, str] = Field(default_factory=dict,
                                    description="constant → column, e.g. {C11: C11_GPa}; default '<constant>_GPa'")
    label: str = Field("experiment", description="legend label")


DEFAULT_NVT = {"name": "nvt_langevin", "params": {"timestep_fs": 0.5, "friction_per_ps": 4.0, "equilibration_ps": 10.0,
                                                  "production_ps": 80.0, "sample_every_ps": 0.1}}
DEFAULT_NPT = {"name": "npt_nose_hoover", "params": {"timestep_fs": 0.5, "tau_t_ps": 0.05, "tau_p_ps": 0.5,
                                                     "equilibration_ps": 10.0, "production_ps": 80.0,
                                                     "sample_every_ps": 0.1}}


class ElasticVsTemperatureParams(CrystalParams):
    temperatures_K: Temperatures = Field(
        ..., description="list of temperatures (K), or 'experiment': every row of the experiment table")
    lattice: LatticeParams = Field(..., description="box lattice constants: {a_A, c_A} or {table, T_column, "
                                                    "a_column, c_column} (linear in T; no extrapolation)")
    experiment: Optional[ElasticExperiment] = Field(None, description="experimental C_ij vs T (optional)")
    ensemble: EnsembleRef = Field(default_factory=lambda: EnsembleRef(**DEFAULT_NVT),
                                  description="fixed-box (NVT) ensemble: {name, params}; default nvt_langevin, "
                                              "0.5 fs, friction 4/ps, 10 ps equilibration, 80 ps, frames every 0.1 ps")
    born_method: Literal["affine", "pair_vectors"] = Field(
        "affine", description="elastic_constants observable's Born-term method (pair_vectors: pair potentials only)")

    @field_validator("temperatures_K")
    @classmethod
    def _t(cls, v):
        return _check_temperatures(v)

    @model_validator(mode="after")
    def _consistent(self):
        if self.temperatures_K == "experiment" and self.experiment is None:
            raise ValueError("temperatures_K: 'experiment' needs an experiment table")
        self._check_lattice(self.lattice, "lattice")
        if self.ensemble.name in ("npt_nose_hoover",):
            raise ValueError("ensemble: the stress-fluctuation formula needs a fixed box (an NVT ensemble)")
        return self


class NptLatticeParams(CrystalParams):
    temperatures_K: Temperatures = Field(
        ..., description="temperatures (K) at zero pressure, or 'experiment': the experiment table's (kept) rows")
    start: LatticeParams = Field(..., description="lattice constants each NPT run starts from: {a_A, c_A} or a "
                                                  "table interpolated in T")
    experiment: Optional[LatticeTableParams] = Field(None, description="experimental a(T), c(T) (optional)")
    experiment_label: str = Field("experiment", description="legend label of the experiment")
    pressures_GPa: list[float] = Field(default_factory=list,
                                       description="pressures (GPa) of the sweep at pressure_temperature_K ([]: none)")
    pressure_temperature_K: float = Field(300.0, gt=0, description="temperature of the pressure sweep (K)")
    max_volume_change: float = Field(0.25, gt=0, description="flag a state point as unstable when its mean volume "
                                                              "differs from the starting cell's by more than this fraction")
    ensemble: EnsembleRef = Field(default_factory=lambda: EnsembleRef(**DEFAULT_NPT),
                                  description="NPT ensemble {name, params}; default npt_nose_hoover, 0.5 fs, τ_T 0.05 ps, "
                                              "τ_P 0.5 ps, 10 ps equilibration, 80 ps, frames every 0.1 ps; couple "
                                              "defaults to xy (hexagonal: a and c free) or none (cubic)")

    @field_validator("temperatures_K")
    @classmethod
    def _t(cls, v):
        return _check_temperatures(v)

    @model_validator(mode="after")
    def _consistent(self):
        if self.temperatures_K == "experiment" and self.experiment is None:
            raise ValueError("temperatures_K: 'experiment' needs an experiment table")
        self._check_lattice(self.start, "start")
        if self.experiment is not None:
            self._check_lattice(self.experiment, "experiment")
        if "pressure_gpa" in self.ensemble.params:
            raise ValueError("ensemble.params.pressure_gpa: pressures come from the task (0 GPa for the temperature "
                             "scan, pressures_GPa for the sweep); remove it")
        if self.ensemble.name != "npt_nose_hoover":
            raise ValueError(f"ensemble.name: npt_lattice needs npt_nose_hoover (anisotropic NPT), got {self.ensemble.name!r}")
        return self


# --- shared helpers ---------------------------------------------------------------------------
def _crystal(p: CrystalParams, species: list[str], dtype, a: float, c: Optional[float] = None):
    """(Configuration, masses) of the crystal at lattice constants a (, c), in the model's species order."""
    from ase.build import bulk

    from fusepot.core.system import from_ase

    if p.element not in species:
        raise ValueError(f"element: {p.element!r} is not a species of the model (species {species})")
    kw: dict = {"a": float(a)}
    if p.symmetry == "hexagonal":
        kw["c"] = float(c)
        kw["orthorhombic"] = p.hexagonal_cell == "orthohexagonal"
    else:
        kw["cubic"] = True
    try:
        atoms = bulk(p.element, p.structure, **kw)
    except Exception as exc:  # noqa: BLE001 - ASE raises several types
        raise ValueError(f"structure: ase.build.bulk({p.element!r}, {p.structure!r}, {kw}) failed: {exc}") from None
    return from_ase(atoms.repeat(p.supercell), {s: i for i, s in enumerate(species)}, dtype=dtype)


def _cell_words(p: CrystalParams, n_atoms: int) -> str:
    cell = p.hexagonal_cell if p.symmetry == "hexagonal" else "conventional cubic"
    return f"the {n_atoms}-atom {p.structure} {p.element} cell ({cell} cell × {'×'.join(map(str, p.supercell))})"


def _lattice_table(lat: _LatticeColumns, ctx, field: str, hexagonal: bool):
    """Read a lattice table → (T, a, c or None, table, dropped temperatures), sorted by T."""
    t = read_table(ctx.path(lat.table))
    dropped = np.array([])
    if lat.suspect_column and lat.suspect_column in t:
        bad = np.asarray(t[lat.suspect_column], dtype=float) != 0
        dropped = np.asarray(t[lat.T_column])[bad]
        t = t.rows(~bad)
    for col in (lat.T_column, lat.a_column) + ((lat.c_column,) if hexagonal else ()):
        if col not in t:
            raise ValueError(f"{field}.table: {t.source} has no column {col!r} (columns {list(t.columns)})")
        if t[col].dtype.kind not in "fi":
            raise ValueError(f"{field}.table: column {col!r} of {t.source} is not numeric")
    if len(t) == 0:
        raise ValueError(f"{field}.table: {t.source} has no usable rows")
    order = np.argsort(t[lat.T_column])
    c = t[lat.c_column][order] if hexagonal else None
    return t[lat.T_column][order], t[lat.a_column][order], c, t, dropped


def _lattice_at(lat: LatticeParams, temps, ctx, field: str, hexagonal: bool):
    """a(T), c(T) arrays (c None for cubic) and a Markdown phrase saying where they came from."""
    temps = np.asarray(temps, dtype=float)
    if lat.table is None:
        a = np.full(temps.shape, lat.a_A)
        c = np.full(temps.shape, lat.c_A) if hexagonal else None
        words = f"a = {lat.a_A} Å" + (f", c = {lat.c_A} Å" if hexagonal else "")
        return a, c, words
    tt, ta, tc, table, dropped = _lattice_table(lat, ctx, field, hexagonal)
    outside = temps[(temps < tt[0] - 1e-9) | (temps > tt[-1] + 1e-9)]
    if outside.size:
        raise ValueError(f"{field}.table: temperature(s) {outside.tolist()} K lie outside {table.source}'s range "
                         f"{tt[0]:g}–{tt[-1]:g} K (no extrapolation); give fixed values or a wider table")
    a = np.interp(temps, tt, ta)
    c = np.interp(temps, tt, tc) if hexagonal else None
    words = f"lattice constants from `{lat.table}` (linear in T)"
    if dropped.size:
        words += f", rows flagged `{lat.suspect_column}` dropped (T = {', '.join(f'{x:g}' for x in dropped)} K)"
    return a, c, words


def _interp_inside(x, y, at):
    """y(at) by linear interpolation, NaN outside [min x, max x]."""
    at = np.asarray(at, dtype=float)
    v = np.interp(at, x, y)
    return np.where((at >= x[0] - 1e-9) & (at <= x[-1] + 1e-9), v, np.nan)


class _Sampler:
    """One ensemble run at successive state points of one model, compiled once.

    core.md compiles one program per chunk length and per neighbor-list shape.  So (for ensembles
    with the standard run settings, `ensemble.run`) the equilibration is run as the first frames
    of one longer production run and dropped afterwards (same dynamics; `chunk_frames` is lowered
    to a divisor of the whole run's frame count, so no remainder chunk), and each state point starts from
    `initial_carry` with a neighbor list at least as large as any earlier point's, so a slightly
    smaller box does not shrink the capacity and recompile.  Overflows still grow it (core.md).
    Other ensembles are sampled as they are.
    """

    def __init__(self, ref: EnsembleRef, dtype, extra: Optional[dict] = None):
        pm = get_plugin_manager()
        params = {**ref.params, **(extra or {})}
        ctx = BuildContext(dtype=dtype)
        ens = pm.build("ensemble", ref.name, params, ctx)
        run = getattr(ens, "run", None)
        self.n_equilibration = 0
        self.capacity = 0
        self.standard = run is not None and all(hasattr(run, k) for k in ("n_equilibration_steps", "steps_per_frame",
                                                                          "n_frames", "chunk_frames"))
        if self.standard:
            self.n_equilibration = math.ceil(run.n_equilibration_steps / run.steps_per_frame)
            total = self.n_equilibration + run.n_frames
            merged = {**params, "equilibration_ps": 0.0, "production_ps": total * run.sample_every_ps}
            chunk = max(d for d in range(1, min(total, run.chunk_frames) + 1) if total % d == 0)
            if chunk >= min(5, run.chunk_frames):  # else accept the remainder chunk's extra compilation
                merged["chunk_frames"] = chunk
            ens = pm.build("ensemble", ref.name, merged, ctx)
        self.ensemble = ens

    def sample(self, potential, conf, masses, sp: StatePoint, key, progress=None):
        """(production Trajectory, final Carry) at state point `sp`."""
        from fusepot.core import neighbors as nb
        from fusepot.core.interfaces import Trajectory
        from fusepot.core.md import Carry

        carry = self.ensemble.initial_carry(potential, conf, masses, sp, key) if self.standard else None
        if not isinstance(carry, Carry):  # e.g. a multi-stage protocol: sampled as it is
            return self.ensemble.sample(potential, conf, masses, sp, key, progress=progress)
        nbrs = nb.allocate(conf.positions, conf.box, carry.nbrs.cutoff, carry.nbrs.skin,
                           min_capacity=max(self.capacity, 16))
        traj, out = self.ensemble.sample(potential, conf, masses, sp, key, restart=Carry(carry.state, nbrs, potential),
                                         progress=progress)
        self.capacity = max(self.capacity, out.nbrs.capacity)
        n = self.n_equilibration
        if n:
            t0 = traj.times[n - 1]
            traj = Trajectory(traj.positions[n:], traj.boxes[n:], traj.velocities[n:], traj.ref_energy[n:],
                              traj.times[n:] - t0, traj.species, traj.masses, traj.state)
        return traj, out


def _batch_size(n_frames: int, largest: int = 8) -> int:
    """A per-frame evaluation batch that divides n_frames (jax.lax.map compiles a remainder batch
    as a second program otherwise)."""
    return max(d for d in range(1, min(n_frames, largest) + 1) if n_frames % d == 0)


def _ensemble_words(ref: EnsembleRef, extra: Optional[dict] = None) -> str:
    params = {**ref.params, **(extra or {})}
    return f"`{ref.name}` ({', '.join(f'{k} = {v}' for k, v in params.items())})"


def _n_blocks(ctx, n_frames: int) -> int:
    if n_frames < 4:
        raise ValueError(f"ensemble: {n_frames} frames per state point is too few for block error bars (need >= 4)")
    return min(ctx.n_blocks, n_frames // 2)


def _block_estimate_user(observable, values, frames, n_blocks: int, derived=None):
    """Estimate ± block error (core.stats.block_estimate) of the observable in its user unit,
    followed by `derived(estimate)` (e.g. moduli from C_ij) so derived values get their own
    block errors.  The estimator is plugins.solid.evaluate.estimate (uniform weights)."""
    from fusepot.plugins.solid.evaluate import estimate

    leaves, treedef = jax.tree_util.tree_flatten((values, frames))

    def fn(parts):
        v, f = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in parts])
        user = np.atleast_1d(np.asarray(observable.to_user(estimate(observable, v, f)), dtype=np.float64))
        return user if derived is None else np.concatenate([user, np.asarray(derived(user), dtype=np.float64)])

    return block_estimate(fn, [np.asarray(x) for x in leaves], n_blocks)


def born_stable(symmetry: str, c) -> bool:
    """Born mechanical stability of a hexagonal (C11, C12, C13, C33, C44) or cubic (C11, C12, C44)
    crystal: the necessary and sufficient conditions of Mouhat & Coudert, PRB 90, 224104 (2014)."""
    if symmetry == "hexagonal":
        c11, c12, c13, c33, c44 = (float(x) for x in c)
        return c11 > abs(c12) and 2 * c13 * c13 < c33 * (c11 + c12) and c44 > 0
    c11, c12, c44 = (float(x) for x in c)
    return c11 > abs(c12) and c11 + 2 * c12 > 0 and c44 > 0


def _fmt(v, e=None, digits: int = 1) -> str:
    """`v ± e` with at least `digits` decimals, more when the error needs them (up to 6)."""
    if v is None or not np.isfinite(v):
        return "—"
    if e is None or not np.isfinite(e):
        return f"{v:.{digits}f}"
    if e > 0:
        digits = min(6, max(digits, -math.floor(math.log10(e))))
    return f"{v:.{digits}f} ± {e:.{digits}f}"


def _clean(x):
    """JSON-friendly: NaN → None, numpy → python."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return [_clean(v) for v in x.tolist()]
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _plot_panels(path, panels, xlabel: str, series: dict, experiment=None, title: str = "") -> None:
    """One PNG, one panel per quantity.  panels: [(key, y label)]; series: {model: (x, {key: (y, err)})};
    experiment: (label, x, {key: y}) drawn as markers, or None."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(panels)
    ncol = n if n <= 4 else math.ceil(n / 2)
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(3.4 * ncol, 2.9 * nrow), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    markers = "osD^v<>ph"
    for ax, (key, ylabel) in zip(axes, panels):
        for i, (label, (x, ys)) in enumerate(series.items()):
            y, err = ys[key]
            ax.errorbar(x, y, yerr=err, fmt="-" + markers[i % len(markers)], ms=4, capsize=2.5, lw=1.2, label=label)
        if experiment is not None and key in experiment[2]:
            ax.plot(experiment[1], experiment[2][key], "ks", mfc="none", ms=5, label=experiment[0])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)


def _plot_bars(path, groups, series: dict, experiment=None, title: str = "") -> None:
    """One state point: grouped bars (one per model, with error bars) per quantity, experiment as
    black markers.  groups: [(y label, [(key, tick label)])] → one panel each; series:
    {model: {key: (value, error)}}; experiment: (label, {key: value}) or None."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    widths = [max(len(g[1]), 1) for g in groups]
    fig = Figure(figsize=(1.1 * sum(widths) + 1.5 * len(groups), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(groups), squeeze=False, width_ratios=widths)[0]
    n = max(len(series), 1)
    w = 0.8 / n
    for ax, (ylabel, keys) in zip(axes, groups):
        x = np.arange(len(keys))
        for i, (label, vals) in enumerate(series.items()):
            y = [vals[k][0] for k, _ in keys]
            e = [vals[k][1] for k, _ in keys]
            ax.bar(x - 0.4 + (i + 0.5) * w, y, w, yerr=e, capsize=3, label=label)
        if experiment is not None and all(k in experiment[1] for k, _ in keys):
            ax.plot(x, [experiment[1][k] for k, _ in keys], "ks", mfc="none", ms=7, label=experiment[0])
        ax.set_xticks(x, [t for _, t in keys])
        ax.set_ylabel(ylabel)
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.grid(alpha=0.3, axis="y")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)


class _PointProgress:
    """Maps each MD run's own progress (0–1) onto the task's overall fraction; one line per point."""

    def __init__(self, ctx, n_points: int):
        self.ctx, self.n, self.done = ctx, max(n_points, 1), 0

    def md(self, what: str):
        k = self.done
        return lambda f, msg: self.ctx.progress((k + f) / self.n, f"{what}: {msg}")

    def finished(self, message: str):
        self.done += 1
        self.ctx.progress.line(f"[{self.done}/{self.n}] {message}")


def _column(q: str, unit: str, err: bool = False) -> str:
    """CSV/metrics column name of a quantity: C11_GPa, C11_err_GPa, nu, nu_err, a_A, c_over_a."""
    base = "c_over_a" if q == "c/a" else q
    base = base + "_err" if err else base
    return f"{base}_{unit}" if unit else base


# --- elastic constants vs temperature ---------------------------------------------------------
class ElasticVsTemperature(EvaluationTask):
    """Isothermal elastic constants vs temperature (NVT at given lattice constants), all models
    side by side, vs an optional experimental table."""

    title = "Elastic constants vs temperature"

    def __init__(self, params: ElasticVsTemperatureParams):
        self.p = params
        self.title = params.title or f"Elastic constants vs temperature ({params.structure} {params.element})"

    # names of the reported quantities, in order
    @property
    def constants(self) -> tuple[str, ...]:
        from fusepot.plugins.solid.elastic import LABELS

        return LABELS[self.p.symmetry]

    @property
    def quantities(self) -> tuple[str, ...]:
        return self.constants + ("K", "G", "nu")

    def moduli(self, cij):
        """Voigt (K, G, ν) from the symmetry's constants (plugins.solid.voigt)."""
        from fusepot.plugins.solid.voigt import voigt_moduli_cubic, voigt_moduli_hexagonal

        f = voigt_moduli_hexagonal if self.p.symmetry == "hexagonal" else voigt_moduli_cubic
        return np.stack([np.asarray(x, dtype=np.float64) for x in f(*[np.asarray(c, dtype=np.float64) for c in cij])])

    def experiment(self, ctx) -> Optional[tuple[np.ndarray, dict, Table]]:
        """(T, {quantity: values}, table) with K, G, ν computed from the experimental C_ij."""
        e = self.p.experiment
        if e is None:
            return None
        t = read_table(ctx.path(e.table))
        unknown = sorted(set(e.columns) - set(self.constants))
        if unknown:
            raise ValueError(f"experiment.columns: {unknown} are not {self.p.symmetry} constants {list(self.constants)}")
        cols = {c: e.columns.get(c, f"{c}_GPa") for c in self.constants}
        for name in [e.T_column, *cols.values()]:
            if name not in t:
                raise ValueError(f"experiment.table: {t.source} has no column {name!r} (columns {list(t.columns)})")
        order = np.argsort(t[e.T_column])
        vals = {c: np.asarray(t[col], dtype=float)[order] for c, col in cols.items()}
        mod = self.moduli([vals[c] for c in self.constants])
        vals.update(K=mod[0], G=mod[1], nu=mod[2])
        return np.asarray(t[e.T_column], dtype=float)[order], vals, t

    def temperatures(self, exp) -> np.ndarray:
        if self.p.temperatures_K == "experiment":
            return exp[0]
        return np.asarray(self.p.temperatures_K, dtype=float)

    def run_point(self, sampler, obs, pot, templates, conf, masses, T, key, ctx, progress):
        """One NVT run and its estimates → (values, errors, n_frames, n_blocks, potential, templates).
        The (possibly grown) potential and the neighbor templates of the per-frame pass are handed
        to the next temperature, so the jitted programs are reused."""
        from fusepot.core.difftre import evaluate_frames

        traj, carry = sampler.sample(pot, conf, masses, StatePoint(float(T), dtype=conf.positions.dtype), key,
                                     progress=progress)
        pot = carry.potential if getattr(carry, "potential", None) is not None else pot
        boxes = np.asarray(traj.boxes)
        if not np.allclose(boxes, np.asarray(conf.box)[None], rtol=1e-10, atol=1e-10):
            raise ValueError(f"ensemble: {self.p.ensemble.name!r} changed the box; the stress-fluctuation formula "
                             f"needs a fixed-box (NVT) ensemble")
        # key "o" as in plugins.solid.evaluate.per_frame_values: the same compiled pass
        _, values, templates = evaluate_frames(pot, traj, {"o": obs}, templates, batch_size=_batch_size(traj.n_frames))
        est = _block_estimate_user(obs, values["o"], traj.frames(), _n_blocks(ctx, traj.n_frames), self.moduli)
        return np.asarray(est.mean), np.asarray(est.error), traj.n_frames, est.n_blocks, pot, templates

    def run(self, models, ctx):
        p = self.p
        hexagonal = p.symmetry == "hexagonal"
        exp = self.experiment(ctx)
        temps = self.temperatures(exp)
        a_T, c_T, lattice_words = _lattice_at(p.lattice, temps, ctx, "lattice", hexagonal)
        obs = get_plugin_manager().build("observable", "elastic_constants",
                                         {"symmetry": p.symmetry, "born_method": p.born_method})
        quantities = self.quantities
        nq = len(quantities)
        prog = _PointProgress(ctx, len(models) * len(temps))
        results: dict[str, dict] = {}
        rows, failures, warnings, n_atoms, n_frames, n_blocks = [], [], [], 0, 0, ctx.n_blocks
        for mi, m in enumerate(models):
            sampler = _Sampler(p.ensemble, m.dtype)
            pot, templates = m.potential, None
            val = np.full((len(temps), nq), np.nan)
            err = np.full((len(temps), nq), np.nan)
            for ti, T in enumerate(temps):
                conf, masses = _crystal(p, m.species, m.dtype, a_T[ti], None if c_T is None else c_T[ti])
                n_atoms = conf.positions.shape[0]
                t0 = time.perf_counter()
                status = "ok"
                try:
                    v, e, n_frames, n_blocks, pot, templates = self.run_point(
                        sampler, obs, pot, templates, conf, masses, T, ctx.key(mi, ti), ctx, prog.md(f"{m.label} {T:g} K"))
                    if not np.all(np.isfinite(v)):
                        status = "non-finite estimate"
                        failures.append(f"{m.label} at {T:g} K: non-finite elastic constants {v.tolist()}")
                    elif not born_stable(p.symmetry, v[:len(self.constants)]):
                        status = "mechanically unstable"
                        warnings.append(f"{m.label} at {T:g} K")
                    val[ti], err[ti] = v, e
                except (MDFailure, OverflowError) as exc:
                    status = f"failed: {exc}"
                    failures.append(f"{m.label} at {T:g} K: {type(exc).__name__}: {exc}")
                    log.error("elastic_vs_temperature: %s at %g K failed: %s", m.label, T, exc)
                wall = time.perf_counter() - t0
                row = {"model": m.label, "T_K": float(T), "a_A": float(a_T[ti])}
                if hexagonal:
                    row["c_A"] = float(c_T[ti])
                for qi, q in enumerate(quantities):
                    row[_column(q, QUANTITY_UNITS.get(q, "GPa"))] = val[ti, qi]
                    row[_column(q, QUANTITY_UNITS.get(q, "GPa"), err=True)] = err[ti, qi]
                row.update(n_frames=n_frames, wall_s=round(wall, 2), status=status)
                rows.append(row)
                prog.finished(f"elastic {m.label} {T:g} K: " + ", ".join(
                    f"{q} {_fmt(val[ti, qi], err[ti, qi], 3 if q == 'nu' else 1)}" for qi, q in enumerate(quantities))
                    + f" ({wall:.0f} s)")
            results[m.label] = {"value": val, "error": err}

        files = ["elastic_constants.csv"]
        write_csv(ctx.out_dir / "elastic_constants.csv", rows)
        exp_at = None
        mre: dict[str, dict] = {}
        if exp is not None:
            et, ev, table = exp
            write_csv(ctx.out_dir / "experiment.csv",
                      [{"T_K": float(t), **{(f"{q}_GPa" if q != "nu" else "nu"): float(ev[q][i]) for q in quantities}}
                       for i, t in enumerate(et)])
            files.append("experiment.csv")
            exp_at = np.stack([_interp_inside(et, ev[q], temps) for q in quantities], axis=1)  # (n_T, n_q)
            rel_rows = []
            for label, r in results.items():
                rel = np.abs(r["value"] - exp_at) / np.abs(exp_at)
                mre[label] = {}
                for qi, q in enumerate(quantities):
                    ok = np.isfinite(rel[:, qi])
                    mre[label][q] = float(np.mean(rel[ok, qi])) if ok.any() else float("nan")
                    rel_rows.append({"model": label, "quantity": q, "mean_relative_error": mre[label][q],
                                     "n_temperatures": int(ok.sum())})
            write_csv(ctx.out_dir / "relative_errors.csv", rel_rows)
            files.append("relative_errors.csv")

        panels = [(q, f"{q} (GPa)") for q in self.constants] + [("K", "K (GPa)"), ("G", "G (GPa)"), ("nu", "ν")]
        series = {label: (temps, {q: (r["value"][:, qi], r["error"][:, qi]) for qi, q in enumerate(quantities)})
                  for label, r in results.items()}
        exp_plot = None
        if exp is not None:
            exp_plot = (p.experiment.label, exp[0], exp[1])
        title = f"{p.structure} {p.element}: isothermal elastic constants (NVT, stress fluctuation)"
        if len(temps) == 1:  # one state point: grouped bars instead of lines
            one = {label: {q: (r["value"][0, qi], r["error"][0, qi]) for qi, q in enumerate(quantities)}
                   for label, r in results.items()}
            exp_one = None if exp_at is None or not np.all(np.isfinite(exp_at[0])) else (
                p.experiment.label, {q: exp_at[0, qi] for qi, q in enumerate(quantities)})
            groups = [("GPa", [(q, q) for q in self.constants + ("K", "G")]), ("Poisson ratio", [("nu", "ν")])]
            _plot_bars(ctx.out_dir / "elastic_vs_temperature.png", groups, one, exp_one, f"{title}, {temps[0]:g} K")
        else:
            _plot_panels(ctx.out_dir / "elastic_vs_temperature.png", panels, "T (K)", series, exp_plot, title=title)
        files.append("elastic_vs_temperature.png")

        md = self.markdown(models, temps, results, exp, exp_at, mre, lattice_words, n_atoms, n_frames, n_blocks,
                           failures, warnings)
        metrics = {"temperatures_K": temps.tolist(), "n_atoms": n_atoms, "n_frames": n_frames, "n_blocks": n_blocks,
                   "failures": failures, "mechanically_unstable": warnings}
        for label, r in results.items():
            mm = {}
            for qi, q in enumerate(quantities):
                unit = QUANTITY_UNITS.get(q, "GPa")
                mm[_column(q, unit)] = r["value"][:, qi].tolist()
                mm[_column(q, unit, err=True)] = r["error"][:, qi].tolist()
            if label in mre:
                mm["mean_relative_error"] = mre[label]
            metrics[label] = mm
        return TaskReport(md, _clean(metrics), files)

    def markdown(self, models, temps, results, exp, exp_at, mre, lattice_words, n_atoms, n_frames, n_blocks, failures,
                 warnings):
        p = self.p
        quantities = self.quantities
        head = [f"NVT MD with {_ensemble_words(p.ensemble)} of {_cell_words(p, n_atoms)} with the box fixed at "
                f"{lattice_words}; isothermal elastic constants by the stress-fluctuation formula "
                f"(`elastic_constants`, {p.symmetry}) from {n_frames} frames per temperature, ± block-average standard "
                f"errors ({n_blocks} blocks); K, G, ν are Voigt averages of the C_ij.  GPa."]
        if exp is not None:
            cite = exp[2].meta.get("citation", "")
            named = f" ({p.experiment.label})" if p.experiment.label != "experiment" else ""
            head.append(f"Experiment{named}: `{p.experiment.table}`" + (f", {cite}" if cite else "")
                        + "; its K, G, ν are computed from its C_ij with the same formulas"
                        + (" (interpolated linearly to the model temperatures)." if
                           not all(np.any(np.isclose(exp[0], t)) for t in temps) else "."))
        out = [" ".join(head), ""]
        if failures:
            out += ["**Failed state points:** " + "; ".join(failures), ""]
        if warnings:
            out += ["**Mechanically unstable** (Born criteria, Mouhat & Coudert 2014, violated by the C_ij): "
                    + "; ".join(warnings), ""]
        names = [q if q != "nu" else "ν" for q in quantities]
        if mre:
            n_cmp = int(np.sum(np.all(np.isfinite(exp_at[:, :1]), axis=1)))
            out += [f"Mean relative error vs experiment over {n_cmp} temperature(s):", "",
                    markdown_table(["model"] + names,
                                   [[label] + [f"{100 * mre[label][q]:.1f} %" if np.isfinite(mre[label][q]) else "—"
                                               for q in quantities] for label in mre]), ""]
        rows = []
        for ti, T in enumerate(temps):
            if exp_at is not None and np.all(np.isfinite(exp_at[ti])):
                rows.append([f"{T:g}", p.experiment.label] + [_fmt(exp_at[ti, qi], None, 3 if q == "nu" else 1)
                                                               for qi, q in enumerate(quantities)])
            for label, r in results.items():
                rows.append([f"{T:g}", label] + [_fmt(r["value"][ti, qi], r["error"][ti, qi], 3 if q == "nu" else 1)
                                                  for qi, q in enumerate(quantities)])
        out += [markdown_table(["T (K)", "model"] + names, rows)]
        return "\n".join(out)


def build_elastic_vs_temperature(p: ElasticVsTemperatureParams, ctx) -> ElasticVsTemperature:
    return ElasticVsTemperature(p)


# --- NPT lattice constants ---------------------------------------------------------------------
class NptLattice(EvaluationTask):
    """Lattice constants from anisotropic NPT vs temperature (zero pressure) and vs pressure."""

    title = "Lattice constants (NPT)"

    def __init__(self, params: NptLatticeParams):
        self.p = params
        self.title = params.title or f"Lattice constants from NPT MD ({params.structure} {params.element})"

    @property
    def quantities(self) -> tuple[str, ...]:
        from fusepot.plugins.solid.lattice import LABELS

        return LABELS[self.p.symmetry]

    def ensemble_extra(self) -> dict:
        if "couple" in self.p.ensemble.params:
            return {}
        return {"couple": "xy" if self.p.symmetry == "hexagonal" else "none"}

    def run(self, models, ctx):
        p = self.p
        hexagonal = p.symmetry == "hexagonal"
        quantities = self.quantities
        exp = None
        if p.experiment is not None:
            exp = _lattice_table(p.experiment, ctx, "experiment", hexagonal)
        temps = exp[0] if p.temperatures_K == "experiment" else np.asarray(p.temperatures_K, dtype=float)
        pressures = np.asarray(p.pressures_GPa, dtype=float)
        # state points: (T, P, key salt); the temperature scan at 0 GPa first, then the pressure sweep
        points = [(float(T), 0.0, k) for k, T in enumerate(temps)]
        points += [(p.pressure_temperature_K, float(P), 10000 + k) for k, P in enumerate(pressures)]
        unique = list(dict.fromkeys((T, P) for T, P, _ in points))
        salt = {}
        for T, P, s in points:
            salt.setdefault((T, P), s)
        a_start, c_start, start_words = _lattice_at(p.start, [T for T, _ in unique], ctx, "start", hexagonal)
        obs = get_plugin_manager().build("observable", "lattice_constants",
                                         {"lattice": p.symmetry, "repeats": list(p.supercell),
                                          "hexagonal_cell": p.hexagonal_cell})
        extra = self.ensemble_extra()
        prog = _PointProgress(ctx, len(models) * len(unique))
        nq = len(quantities)
        results, rows, failures, warnings = {}, [], [], []
        n_atoms = n_frames = 0
        n_blocks = ctx.n_blocks
        for mi, m in enumerate(models):
            sampler = _Sampler(p.ensemble, m.dtype, extra)
            pot = m.potential
            val = {}
            for ui, (T, P) in enumerate(unique):
                conf, masses = _crystal(p, m.species, m.dtype, a_start[ui], None if c_start is None else c_start[ui])
                n_atoms = conf.positions.shape[0]
                t0 = time.perf_counter()
                status, v, e, vol = "ok", np.full(nq, np.nan), np.full(nq, np.nan), float("nan")
                try:
                    traj, carry = sampler.sample(pot, conf, masses, StatePoint(T, gpa_to_internal(P), dtype=conf.positions.dtype),
                                                 ctx.key(mi, salt[(T, P)]), progress=prog.md(f"{m.label} {T:g} K {P:g} GPa"))
                    pot = carry.potential if getattr(carry, "potential", None) is not None else pot
                    # lattice constants depend on the box alone: no potential or neighbor list needed
                    values = jax.vmap(lambda f: obs.per_frame(pot, f, None))(traj.frames())
                    n_frames = traj.n_frames
                    est = _block_estimate_user(obs, values, traj.frames(), _n_blocks(ctx, n_frames))
                    n_blocks = est.n_blocks
                    v, e = np.asarray(est.mean), np.asarray(est.error)
                    vol = float(np.mean(np.abs(np.linalg.det(np.asarray(traj.boxes)))))
                    ratio = vol / abs(float(np.linalg.det(np.asarray(conf.box))))
                    if not np.all(np.isfinite(v)):
                        status = "non-finite estimate"
                        failures.append(f"{m.label} at {T:g} K, {P:g} GPa: non-finite lattice constants")
                    elif abs(ratio - 1) > p.max_volume_change:
                        status = "unstable"
                        warnings.append(f"{m.label} at {T:g} K, {P:g} GPa: mean volume {ratio:.2f} × the starting cell's")
                except (MDFailure, OverflowError) as exc:
                    status = f"failed: {exc}"
                    failures.append(f"{m.label} at {T:g} K, {P:g} GPa: {type(exc).__name__}: {exc}")
                    log.error("npt_lattice: %s at %g K, %g GPa failed: %s", m.label, T, P, exc)
                wall = time.perf_counter() - t0
                val[(T, P)] = (v, e)
                row = {"model": m.label, "T_K": T, "P_GPa": P}
                for qi, q in enumerate(quantities):
                    row[_column(q, "" if q == "c/a" else "A")] = v[qi]
                    row[_column(q, "" if q == "c/a" else "A", err=True)] = e[qi]
                row.update(volume_A3_per_atom=vol / n_atoms, n_frames=n_frames, wall_s=round(wall, 2), status=status)
                rows.append(row)
                prog.finished(f"npt {m.label} {T:g} K {P:g} GPa: " + ", ".join(
                    f"{q} {_fmt(v[qi], e[qi], 4)}" for qi, q in enumerate(quantities)) + f" ({wall:.0f} s)")
            results[m.label] = val

        def table_of(keys):
            return {label: (np.stack([val[k][0] for k in keys]), np.stack([val[k][1] for k in keys]))
                    for label, val in results.items()}

        t_keys = [(float(T), 0.0) for T in temps]
        p_keys = [(p.pressure_temperature_K, float(P)) for P in pressures]
        by_T, by_P = table_of(t_keys), (table_of(p_keys) if p_keys else {})
        files = []
        write_csv(ctx.out_dir / "lattice_vs_temperature.csv", [r for r in rows if (r["T_K"], r["P_GPa"]) in t_keys])
        files.append("lattice_vs_temperature.csv")
        if p_keys:
            write_csv(ctx.out_dir / "lattice_vs_pressure.csv", [r for r in rows if (r["T_K"], r["P_GPa"]) in p_keys])
            files.append("lattice_vs_pressure.csv")

        exp_at, mre, exp_plot = None, {}, None
        if exp is not None:
            et, ea, ec, _, _ = exp
            ev = {"a": ea}
            if hexagonal:
                ev.update(c=ec, **{"c/a": ec / ea})
            exp_plot = (p.experiment_label, et, ev)
            exp_at = np.stack([_interp_inside(et, ev[q], temps) for q in quantities], axis=1)
            rel_rows = []
            for label, (v, _) in by_T.items():
                rel = np.abs(v - exp_at) / np.abs(exp_at)
                mre[label] = {}
                for qi, q in enumerate(quantities):
                    ok = np.isfinite(rel[:, qi])
                    mre[label][q] = float(np.mean(rel[ok, qi])) if ok.any() else float("nan")
                    rel_rows.append({"model": label, "quantity": q, "mean_relative_error": mre[label][q],
                                     "n_temperatures": int(ok.sum())})
            write_csv(ctx.out_dir / "relative_errors.csv", rel_rows)
            files.append("relative_errors.csv")

        panels = [(q, "c/a" if q == "c/a" else f"{q} (Å)") for q in quantities]
        _plot_panels(ctx.out_dir / "lattice_vs_temperature.png", panels, "T (K)",
                     {label: (temps, {q: (v[:, qi], e[:, qi]) for qi, q in enumerate(quantities)})
                      for label, (v, e) in by_T.items()}, exp_plot,
                     title=f"{p.structure} {p.element}: NPT lattice constants at 0 GPa")
        files.append("lattice_vs_temperature.png")
        if p_keys:
            _plot_panels(ctx.out_dir / "lattice_vs_pressure.png", panels, "P (GPa)",
                         {label: (pressures, {q: (v[:, qi], e[:, qi]) for qi, q in enumerate(quantities)})
                          for label, (v, e) in by_P.items()}, None,
                         title=f"{p.structure} {p.element}: NPT lattice constants at {p.pressure_temperature_K:g} K")
            files.append("lattice_vs_pressure.png")

        md = self.markdown(temps, pressures, by_T, by_P, exp, exp_at, mre, start_words, extra, n_atoms, n_frames,
                           n_blocks, failures, warnings)
        metrics = {"temperatures_K": temps.tolist(), "pressures_GPa": pressures.tolist(),
                   "pressure_temperature_K": p.pressure_temperature_K, "n_atoms": n_atoms, "n_frames": n_frames,
                   "n_blocks": n_blocks, "failures": failures, "unstable": warnings}
        for label in results:
            mm = {}
            for qi, q in enumerate(quantities):
                unit = "" if q == "c/a" else "A"
                mm[_column(q, unit) + "_vs_T"] = by_T[label][0][:, qi].tolist()
                mm[_column(q, unit, err=True) + "_vs_T"] = by_T[label][1][:, qi].tolist()
                if p_keys:
                    mm[_column(q, unit) + "_vs_P"] = by_P[label][0][:, qi].tolist()
                    mm[_column(q, unit, err=True) + "_vs_P"] = by_P[label][1][:, qi].tolist()
            if label in mre:
                mm["mean_relative_error"] = mre[label]
            metrics[label] = mm
        return TaskReport(md, _clean(metrics), files)

    def markdown(self, temps, pressures, by_T, by_P, exp, exp_at, mre, start_words, extra, n_atoms, n_frames, n_blocks,
                 failures, warnings):
        p = self.p
        quantities = self.quantities
        text = (f"NPT MD with {_ensemble_words(p.ensemble, extra)} of {_cell_words(p, n_atoms)}, each run starting "
                f"from {start_words}; lattice constants (`lattice_constants`, {p.symmetry}) from {n_frames} frames per "
                f"state point, ± block-average standard errors ({n_blocks} blocks).  Å.")
        out = [text, ""]
        if exp is not None:
            et, _, _, table, dropped = exp
            cite = table.meta.get("citation", "")
            named = f" ({p.experiment_label})" if p.experiment_label != "experiment" else ""
            line = f"Experiment{named}: `{p.experiment.table}`" + (f" ({cite})" if cite else "") + "."
            if dropped.size:
                line += (f" Rows flagged `{p.experiment.suspect_column}` are not used: T = "
                         f"{', '.join(f'{x:g}' for x in dropped)} K.")
            out += [line, ""]
        if failures:
            out += ["**Failed state points:** " + "; ".join(failures), ""]
        if warnings:
            out += [f"**Unstable** (volume changed by more than {100 * p.max_volume_change:g} %; values kept in the "
                    f"tables and errors): " + "; ".join(warnings), ""]
        if mre:
            n_cmp = int(np.sum(np.isfinite(exp_at[:, 0])))
            out += [f"Mean relative error vs experiment over {n_cmp} temperature(s) at 0 GPa:", "",
                    markdown_table(["model"] + list(quantities),
                                   [[label] + [f"{100 * mre[label][q]:.2f} %" if np.isfinite(mre[label][q]) else "—"
                                               for q in quantities] for label in mre]), ""]
        rows = []
        for ti, T in enumerate(temps):
            if exp_at is not None and np.all(np.isfinite(exp_at[ti])):
                rows.append([f"{T:g}", p.experiment_label] + [_fmt(x, None, 4) for x in exp_at[ti]])
            for label, (v, e) in by_T.items():
                rows.append([f"{T:g}", label] + [_fmt(v[ti, qi], e[ti, qi], 4) for qi in range(len(quantities))])
        out += ["At 0 GPa:", "", markdown_table(["T (K)", "model"] + list(quantities), rows)]
        if by_P:
            rows = [[f"{P:g}", label] + [_fmt(v[pi, qi], e[pi, qi], 4) for qi in range(len(quantities))]
                    for pi, P in enumerate(pressures) for label, (v, e) in by_P.items()]
            out += ["", f"At {p.pressure_temperature_K:g} K:", "", markdown_table(["P (GPa)", "model"] + list(quantities),
                                                                                rows)]
        return "\n".join(out)


def build_npt_lattice(p: NptLatticeParams, ctx) -> NptLattice:
    return NptLattice(p)


COMPONENTS: list[Component] = [
    Component("elastic_vs_temperature", ElasticVsTemperature, ElasticVsTemperatureParams, build_elastic_vs_temperature,
              "Isothermal elastic constants C_ij and Voigt K, G, ν vs temperature (NVT at given lattice constants, "
              "stress fluctuation, block errors) vs an optional experimental table"),
    Component("npt_lattice", NptLattice, NptLatticeParams, build_npt_lattice,
              "Lattice constants a, c, c/a from anisotropic NPT MD vs temperature (0 GPa) and vs pressure, vs an "
              "optional experimental table"),
]
