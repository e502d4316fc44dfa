"""Liquid report sections for `fusepot evaluate` (hook `fusepot_evaluations`):

- `liquid_structure`: the liquid protocol of plugins/structure/protocol.py (`LiquidProtocol`:
  NPT melt at a high temperature → NPT at the liquid temperature → NVT production in the mean
  NPT cell, on a crystal replicated e.g. 256 → 2048 atoms), then g(r) (observable `rdf`) and the
  bond-angle distribution (observable `adf`) over the production frames with block-average error
  bars (plugins.structure.evaluate.trajectory_average); the RMS deviation of g(r) from an
  experimental curve (plugins.structure.compare.curve_rms_deviation); the mean density of the
  NPT stage.
- `self_diffusion`: melt once, then at each temperature an NPT equilibration and a weakly
  thermostatted NVT run sampled often (the protocol's dynamics stage: many time origins);
  Green–Kubo and Einstein D (observable `self_diffusion`) with block error bars over the
  origins, against an experimental value.

Nothing here knows an element: crystal, lattice constants, temperatures, pressures and tables
come from the task parameters.  Ensembles and observables are built through the plugin manager,
so their validation, overflow handling and NaN checks apply (core/md.py); stages are run with
plugins.solid.protocol.run_protocol (state handed on, Nosé–Hoover ↔ Langevin conversion).

Compilation: every stage runs as whole segments of `md.segment_ps` with one ensemble object per
role (NPT, NVT structure, NVT dynamics), so the jitted MD compiles once per role and model, not
once per stage length (temperature and pressure are traced values).  Stage lengths are rounded
up to whole segments; the report states the lengths that ran.

Checks (never silent): a volume that runs away in NPT (more than `max_volume_ratio` from the
start) fails that model with a message (the model does not hold the liquid together); a drifting
NPT volume, a production whose atoms barely move (not molten) or a kinetic temperature far from
the target are reported as warnings.  A model whose MD fails (`MDFailure`: NaN, explosion,
persistent overflow) is reported as failed; the other models still run.  Random keys: model m
uses `ctx.key(m)` (`ctx.key(m, 1 + k)` for temperature k of `self_diffusion`).
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fusepot.core.evaluation import TaskReport, markdown_table, read_table, write_csv
from fusepot.core.interfaces import EvaluationTask, Trajectory
from fusepot.core.md import Carry, MDFailure
from fusepot.core.plugins import BuildContext, Component, get_plugin_manager
from fusepot.core.stats import block_average
from fusepot.core.units import AMU_KG, ANGSTROM_M
from fusepot.plugins.solid.protocol import Stage as MDStage
from fusepot.plugins.solid.protocol import rescale_to_cell, run_protocol
from fusepot.plugins.structure.compare import curve_rms_deviation
from fusepot.plugins.structure.evaluate import trajectory_average
from fusepot.plugins.structure.protocol import LiquidProtocol, supercell

log = logging.getLogger("fusepot.evaluate.liquid")

#: D is reported in units of 1e-9 m²/s (the experimental literature's unit)
D_UNIT = "1e-9 m²/s"
_D_SCALE = 1e9  # m²/s → 1e-9 m²/s


# --- parameters -------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_plugin_params(kind: str, name: str, params: dict) -> dict:
    """Validate `params` with the plugin's own model; errors name the offending sub-field."""
    comp = get_plugin_manager().get(kind, name)
    try:
        comp.params.model_validate(params)
    except ValidationError as exc:
        raise ValueError("; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"]
                                   for e in exc.errors())) from None
    return params


class LiquidMD(_Strict):
    """How the protocol's stages are integrated (the protocol itself says what runs)."""

    timestep_fs: float = Field(1.0, gt=0, description="MD time step, fs (our default)")
    tau_t_ps: float = Field(0.1, gt=0, description="Nosé–Hoover thermostat time constant, ps")
    tau_p_ps: float = Field(1.0, gt=0, description="barostat time constant of the NPT stages (isotropic cell), ps")
    thermostat: Literal["nose_hoover", "langevin"] = Field(
        "nose_hoover", description="thermostat of the NVT structure stage (and of every stage with fixed_volume_per_atom_A3)")
    friction_per_ps: float = Field(1.0, gt=0, description="Langevin friction when thermostat is langevin, 1/ps")
    segment_ps: float = Field(0.5, gt=0, description="MD runs in segments of this length (one compiled chunk); stage "
                                                     "lengths are rounded up to whole segments; a whole number of "
                                                     "every sampling interval")
    neighbor_skin_A: float = Field(0.5, ge=0, description="neighbor-list skin, Å")


class LiquidSystem(_Strict):
    """The starting crystal, the protocol (plugins/structure/protocol.py) and its integration."""

    element: str = Field(..., description="chemical symbol (one of the models' species)")
    structure: str = Field(..., description="ase.build.bulk crystal structure the liquid is melted from: hcp, fcc, bcc, ...")
    a_A: float = Field(..., gt=0, description="lattice constant a of the starting crystal, Å")
    c_A: Optional[float] = Field(None, gt=0, description="lattice constant c (hcp), Å")
    cell: Literal["primitive", "orthorhombic", "cubic"] = Field(
        "orthorhombic", description="ase.build.bulk cell: primitive, orthorhombic (hcp: 4-atom orthohexagonal) or cubic")
    supercell: tuple[int, int, int] = Field(
        (4, 4, 4), description="repeats of that cell (hcp orthorhombic (4, 4, 4): the paper's 256 atoms); the protocol's "
                               "replicate multiplies again (paper: (2, 2, 2) → 2048 atoms)")
    protocol: LiquidProtocol = Field(default_factory=LiquidProtocol,
                                     description="plugins.structure.protocol.LiquidProtocol: temperatures (K), "
                                                 "pressure_gpa, stage lengths (ps), sampling intervals, replicate")
    md: LiquidMD = Field(default_factory=LiquidMD, description="time step, thermostat/barostat, segment length")
    fixed_volume_per_atom_A3: Optional[float] = Field(
        None, gt=0, description="run every stage NVT at this volume per atom (Å³) instead of finding the density by NPT "
                                "(the paper uses NPT); for models that do not hold a liquid together at zero pressure")
    max_volume_ratio: float = Field(2.0, gt=1, description="an NPT volume beyond this factor of the start (either way) "
                                                          "fails the model: the liquid flew apart or collapsed")
    volume_drift_tolerance: float = Field(0.02, gt=0, description="warn when the NPT volume of the last quarter of "
                                                                  "the stage differs from the third by more than this")
    temperature_tolerance: float = Field(0.05, gt=0, description="warn when the mean kinetic temperature of a sampled "
                                                                 "stage differs from the target by more than this fraction")
    liquid_check_msd_A2: float = Field(1.0, ge=0, description="warn when the mean-square displacement over a sampled "
                                                              "stage is below this (Å²): the system may not be liquid")
    save_trajectories: bool = Field(False, description="also write each model's sampled frames (npz: positions Å, "
                                                       "boxes Å, velocities Å/ps, times ps)")
    title: Optional[str] = Field(None, description="section heading (default: generated)")

    #: protocol fields the task does not use (refused when given), and why
    unused_protocol_fields: ClassVar[tuple[str, ...]] = ()
    unused_why: ClassVar[str] = ""

    @field_validator("supercell")
    @classmethod
    def _positive(cls, v):
        if any(n < 1 for n in v):
            raise ValueError(f"repeats must be >= 1, got {list(v)}")
        return v

    def _common_checks(self, intervals: dict[str, float]):
        for name in self.unused_protocol_fields:
            if name in self.protocol.model_fields_set:
                raise ValueError(f"protocol.{name}: not used by this task ({self.unused_why}); remove it")
        seg = self.md.segment_ps
        step_ps = self.md.timestep_fs / 1000.0
        for name, dt in intervals.items():
            if not _whole(dt, step_ps):
                raise ValueError(f"{name} ({dt} ps) must be a whole number of md.timestep_fs ({self.md.timestep_fs} fs)")
            if not _whole(seg, dt):
                raise ValueError(f"md.segment_ps ({seg} ps) must be a whole number of {name} ({dt} ps)")
        if self.structure in ("hcp",) and self.c_A is None:
            raise ValueError("c_A: the hcp structure needs c")
        return self


def _whole(x: float, unit: float) -> bool:
    k = x / unit
    return round(k) >= 1 and abs(k - round(k)) < 1e-6


class RDFExperiment(_Strict):
    table: str = Field(..., description="CSV (core.evaluation.read_table) of g(r); relative paths: the config's folder")
    r_column: str = Field("r_A", description="distance column, Å")
    g_column: str = Field("g_r", description="g(r) column")
    flag_column: Optional[str] = Field("flag", description="rows with a non-empty (text) or nonzero (number) value here "
                                                           "are flagged (ignored if the table lacks the column)")
    skip_flagged: bool = Field(True, description="leave flagged rows out of the RMS deviation (they are still plotted)")
    r_range_A: Optional[tuple[float, float]] = Field(None, description="RMS window (Å); default: where both curves exist")
    label: str = Field("experiment", description="legend label")


class LiquidStructureParams(LiquidSystem):
    rdf: dict = Field(default_factory=lambda: {"r_max": 8.0, "n_bins": 200},
                      description="params of the `rdf` observable (r_min, r_max in Å, n_bins, mode, smoothing)")
    adf: dict = Field(default_factory=lambda: {"cutoff": 4.0, "n_bins": 90},
                      description="params of the `adf` observable (cutoff in Å: both neighbours within it; n_bins, mode)")
    experiment: Optional[RDFExperiment] = Field(None, description="experimental g(r) (optional)")

    unused_protocol_fields: ClassVar[tuple[str, ...]] = (
        "dynamics_sample_every_ps", "n_origins", "origin_spacing_ps", "correlation_ps", "dynamics_friction_per_ps")
    unused_why: ClassVar[str] = "liquid_structure runs the melt, NPT and structure stages; the dynamics fields are self_diffusion's"

    @field_validator("rdf")
    @classmethod
    def _rdf(cls, v):
        return _check_plugin_params("observable", "rdf", v)

    @field_validator("adf")
    @classmethod
    def _adf(cls, v):
        return _check_plugin_params("observable", "adf", v)

    @model_validator(mode="after")
    def _consistent(self):
        return self._common_checks({"protocol.sample_every_ps": self.protocol.sample_every_ps})


class DiffusionExperiment(_Strict):
    file: str = Field(..., description="YAML with `values: [{T_K, D_m2_per_s, D_err_m2_per_s}]` (and citation), or a "
                                       "CSV with those columns; relative paths: the config's folder")
    T_key: str = Field("T_K", description="temperature key/column, K")
    D_key: str = Field("D_m2_per_s", description="self-diffusion coefficient key/column, m²/s")
    D_err_key: Optional[str] = Field("D_err_m2_per_s", description="its uncertainty, m²/s (optional)")
    label: str = Field("experiment", description="legend label")


class SelfDiffusionTaskParams(LiquidSystem):
    temperatures_K: list[float] = Field(..., min_length=1, description="liquid temperatures, K (paper: 1953–2110 K)")
    nvt_equilibration_ps: float = Field(
        5.0, ge=0, description="NVT (md.thermostat) at each temperature in the mean NPT cell before the weakly "
                               "thermostatted dynamics run, ps (our default; 0: none)")
    fit_start_ps: Optional[float] = Field(None, ge=0, description="start of the Einstein MSD fit window, ps "
                                                                  "(default: half the correlation window)")
    experiment: Optional[DiffusionExperiment] = Field(None, description="experimental D(T) (optional)")

    unused_protocol_fields: ClassVar[tuple[str, ...]] = ("temperature_K", "production_ps")
    unused_why: ClassVar[str] = "self_diffusion runs at temperatures_K and has no structure stage"

    @field_validator("temperatures_K")
    @classmethod
    def _t(cls, v):
        if any(t <= 0 for t in v):
            raise ValueError(f"temperatures must be positive (K), got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        pr = self.protocol
        self._common_checks({"protocol.sample_every_ps": pr.sample_every_ps,
                             "protocol.dynamics_sample_every_ps": pr.dynamics_sample_every_ps})
        for name in ("origin_spacing_ps", "correlation_ps"):
            if not _whole(getattr(pr, name), pr.dynamics_sample_every_ps):
                raise ValueError(f"protocol.{name} ({getattr(pr, name)} ps) must be a whole number of "
                                 f"protocol.dynamics_sample_every_ps ({pr.dynamics_sample_every_ps} ps)")
        if self.fit_start_ps is not None and self.fit_start_ps >= pr.correlation_ps:
            raise ValueError("fit_start_ps must be inside the correlation window (protocol.correlation_ps)")
        return self


# --- MD -------------------------------------------------------------------------------------------
def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "model"


def _csv_name(label: str) -> str:
    """A model label usable in a CSV header (write_csv does not quote)."""
    return re.sub(r"[,\n\r\"]", "_", label)


def _initial(p: LiquidSystem, species: list[str], dtype):
    """(Configuration, masses, description) of the starting crystal in the model's species order."""
    from ase.build import bulk

    from fusepot.core.system import from_ase

    if p.element not in species:
        raise ValueError(f"element: {p.element!r} is not a species of the model (species {species})")
    kw: dict = {"a": float(p.a_A)}
    if p.c_A is not None:
        kw["c"] = float(p.c_A)
    if p.cell != "primitive":
        kw[p.cell] = True
    try:
        atoms = bulk(p.element, p.structure, **kw)
    except Exception as exc:  # noqa: BLE001 - ASE raises several types
        raise ValueError(f"structure: ase.build.bulk({p.element!r}, {p.structure!r}, {kw}) failed: {exc}") from None
    n_cell = len(atoms)
    atoms = supercell(atoms.repeat(p.supercell), p.protocol.replicate)
    if p.fixed_volume_per_atom_A3 is not None:
        scale = (p.fixed_volume_per_atom_A3 * len(atoms) / atoms.get_volume()) ** (1.0 / 3.0)
        atoms.set_cell(atoms.cell.array * scale, scale_atoms=True)
    words = (f"{len(atoms)} atoms: {n_cell}-atom {p.cell} {p.structure} {p.element} cell (a = {p.a_A} Å"
             + (f", c = {p.c_A} Å" if p.c_A is not None else "") + f") × {'×'.join(map(str, p.supercell))}"
             + f" × {'×'.join(map(str, p.protocol.replicate))}")
    if p.fixed_volume_per_atom_A3 is not None:
        words += f", scaled to {p.fixed_volume_per_atom_A3} Å³/atom"
    conf, masses = from_ase(atoms, {s: i for i, s in enumerate(species)}, dtype=dtype)
    return conf, masses, words


def _volumes(traj: Trajectory) -> np.ndarray:
    return np.abs(np.linalg.det(np.asarray(traj.boxes, dtype=np.float64)))


def _kinetic_T(traj: Trajectory) -> np.ndarray:
    """Per-frame kinetic temperature (K), 3N − 3 degrees of freedom."""
    from fusepot.plugins.solid import kinetic_temperature

    return np.asarray(kinetic_temperature(jnp.asarray(traj.velocities), jnp.asarray(traj.masses)), dtype=np.float64)


def _msd(traj: Trajectory) -> float:
    """Mean-square displacement (Å²) from the first to the last frame, centre-of-mass drift removed."""
    x = np.asarray(traj.positions, dtype=np.float64)
    w = np.asarray(traj.masses, dtype=np.float64)
    w = w / w.sum()
    d = (x[-1] - x[0]) - np.einsum("n,nk->k", w, x[-1] - x[0])
    return float(np.mean(np.sum(d * d, axis=-1)))


def _density_g_cm3(total_mass_amu: float, volume_A3):
    return total_mass_amu * AMU_KG * 1e3 / (np.asarray(volume_A3) * (ANGSTROM_M * 100.0) ** 3)


def _concat(trajs: list[Trajectory]) -> Trajectory:
    """Segments of one stage as one trajectory; times (ps, float64 NumPy) restart at the stage start."""
    first = trajs[0]
    dt = float(np.asarray(first.times, dtype=np.float64)[0])  # segments are sampled from their start
    cat = (lambda f: getattr(first, f)) if len(trajs) == 1 else (lambda f: jnp.concatenate([getattr(t, f) for t in trajs]))
    n = sum(t.n_frames for t in trajs)
    # float64 times on the host: float32 times of a long run are not equally spaced to the
    # precision the time-correlation code checks
    times = dt * np.arange(1, n + 1, dtype=np.float64)
    return Trajectory(cat("positions"), cat("boxes"), cat("velocities"), cat("ref_energy"), times, first.species,
                      first.masses, first.state)


class _Runner:
    """One model's MD: ensembles per role (built once, compiled once), stages as whole segments."""

    def __init__(self, p: LiquidSystem, model, progress: Callable[[float, str], None], total_ps: float):
        self.p, self.model, self.progress = p, model, progress
        self.total_ps, self.done_ps = max(total_ps, 1e-9), 0.0
        self.conf, self.masses, self.words = _initial(p, model.species, model.dtype)
        self.v0 = float(_volumes_of_box(self.conf.box)) / self.conf.positions.shape[0]
        self._ens: dict = {}
        self.potential = model.potential

    @property
    def fixed_volume(self) -> bool:
        return self.p.fixed_volume_per_atom_A3 is not None

    def ensemble(self, role: str, sample_every_ps: float):
        """role: 'npt' (isotropic MTK), 'nvt' (structure thermostat), 'dynamics' (weak Langevin)."""
        if role == "npt" and self.fixed_volume:
            role = "nvt"
        key = (role, sample_every_ps)
        if key not in self._ens:
            md, pr = self.p.md, self.p.protocol
            frames = int(round(md.segment_ps / sample_every_ps))
            run = {"timestep_fs": md.timestep_fs, "production_ps": md.segment_ps, "sample_every_ps": sample_every_ps,
                   "neighbor_skin": md.neighbor_skin_A, "chunk_frames": frames}
            if role == "npt":
                name, extra = "npt_nose_hoover", {"tau_t_ps": md.tau_t_ps, "tau_p_ps": md.tau_p_ps, "couple": "xyz"}
            elif role == "dynamics":
                name, extra = "nvt_langevin", {"friction_per_ps": pr.dynamics_friction_per_ps}
            elif md.thermostat == "langevin":
                name, extra = "nvt_langevin", {"friction_per_ps": md.friction_per_ps}
            else:
                name, extra = "nvt_nose_hoover", {"tau_t_ps": md.tau_t_ps}
            self._ens[key] = get_plugin_manager().build("ensemble", name, {**run, **extra},
                                                        BuildContext(dtype=self.model.dtype))
        return self._ens[key]

    def stage(self, name: str, role: str, temperature_K: float, pressure_GPa: float, duration_ps: float,
              sample_every_ps: float, key, carry: Optional[Carry]) -> tuple[Trajectory, Carry, float]:
        """Run one protocol stage as whole segments; returns (frames, final carry, length run in ps)."""
        ens = self.ensemble(role, sample_every_ps)
        seg = self.p.md.segment_ps
        n_seg = max(1, math.ceil(duration_ps / seg - 1e-6))
        npt = role == "npt" and not self.fixed_volume
        pressure = pressure_GPa if npt else 0.0
        trajs = []
        for i in range(n_seg):
            key, sub = jax.random.split(key)
            base = self.done_ps

            def prog(f, msg, base=base, i=i):
                self.progress((base + seg * f) / self.total_ps,
                              f"{self.model.label}: {name} {temperature_K:g} K, segment {i + 1}/{n_seg}: {msg}")

            if carry is not None and carry.potential is None:
                carry = Carry(carry.state, carry.nbrs, self.potential)
            res = run_protocol(self.potential, self.conf, self.masses,
                               [MDStage(name, ens, float(temperature_K), float(pressure))], sub, restart=carry,
                               progress=prog)
            carry = res.carry
            self.potential = carry.potential or self.potential
            traj = res.trajectories[name]
            trajs.append(traj)
            self.done_ps += seg
            if npt:
                v = _volumes(traj) / traj.n_atoms
                ratio = float(np.max(v) / self.v0), float(np.min(v) / self.v0)
                if ratio[0] > self.p.max_volume_ratio or ratio[1] < 1.0 / self.p.max_volume_ratio:
                    bad = float(np.max(v)) if ratio[0] > self.p.max_volume_ratio else float(np.min(v))
                    raise MDFailure(
                        f"{name} stage at {temperature_K:g} K, {pressure_GPa:g} GPa: the volume per atom went from "
                        f"{self.v0:.3g} to {bad:.3g} Å³ after {(i + 1) * seg:g} ps (beyond max_volume_ratio = "
                        f"{self.p.max_volume_ratio:g}): the model does not hold the liquid together at this state "
                        f"point (fixed_volume_per_atom_A3 runs NVT at a given density instead)")
        return _concat(trajs), carry, n_seg * seg

    def into_mean_cell(self, npt_traj: Trajectory, carry: Carry) -> Carry:
        """NVT after NPT starts in the mean cell of the NPT stage's second half (as `cell_from`)."""
        if self.fixed_volume:
            return carry
        half = npt_traj.n_frames // 2
        box = jnp.mean(jnp.asarray(npt_traj.boxes)[half:], axis=0)
        return rescale_to_cell(carry, box, carry.potential or self.potential)


def sampled_checks(p: LiquidSystem, what: str, traj: Trajectory, temperature_K: float, warnings: list) -> dict:
    """Kinetic temperature and mean-square displacement of a sampled stage; warnings appended."""
    t_kin = float(np.mean(_kinetic_T(traj)))
    msd = _msd(traj)
    if abs(t_kin - temperature_K) > p.temperature_tolerance * temperature_K:
        warnings.append(f"{what}: mean kinetic temperature {t_kin:.0f} K, target {temperature_K:g} K")
    if msd < p.liquid_check_msd_A2:
        warnings.append(f"{what}: atoms moved only {msd:.2g} Å² (mean square) over the stage "
                        f"(< liquid_check_msd_A2 = {p.liquid_check_msd_A2:g}): probably not liquid")
    return {"T_kin_K": t_kin, "msd_A2": msd}


def npt_density(p: LiquidSystem, what: str, npt_traj: Trajectory, n_blocks: int, warnings: list) -> dict:
    """Mean density of the NPT stage's second half (block error) and a drift check (the fixed
    density with fixed_volume_per_atom_A3)."""
    total_mass = float(np.sum(np.asarray(npt_traj.masses, dtype=np.float64)))
    n_atoms = npt_traj.n_atoms
    if p.fixed_volume_per_atom_A3 is not None:
        v = p.fixed_volume_per_atom_A3
        return {"density_g_cm3": float(_density_g_cm3(total_mass, v * n_atoms)), "density_err_g_cm3": 0.0,
                "volume_per_atom_A3": v, "volume_per_atom_err_A3": 0.0, "density_fixed": True}
    vol = _volumes(npt_traj)
    half = vol[vol.shape[0] // 2:]
    if half.shape[0] < 4:
        raise ValueError(f"{what}: the NPT stage kept {vol.shape[0]} frames; need >= 8 for a density with an "
                         f"error bar (lengthen protocol.npt_ps or sample more often)")
    nb = max(2, min(n_blocks, half.shape[0] // 2))
    rho = block_average(_density_g_cm3(total_mass, half), nb)
    vpa = block_average(half / n_atoms, nb)
    q = half.shape[0] // 2
    drift = abs(half[q:].mean() - half[:q].mean()) / half.mean()
    if drift > p.volume_drift_tolerance:
        warnings.append(f"{what}: the volume still drifts ({100 * drift:.1f}% between the third and last quarter "
                        f"of the stage): lengthen protocol.npt_ps")
    return {"density_g_cm3": float(rho.mean), "density_err_g_cm3": float(rho.error),
            "volume_per_atom_A3": float(vpa.mean), "volume_per_atom_err_A3": float(vpa.error),
            "density_fixed": False, "npt_volume_drift": float(drift)}


def save_trajectory(path, traj: Trajectory) -> None:
    """Frames as npz: positions_A, boxes_A, velocities_A_per_ps, times_ps, species, masses_amu."""
    from fusepot.core.units import TIME_UNIT_PS

    with open(path, "wb") as f:
        np.savez(f, positions_A=np.asarray(traj.positions), boxes_A=np.asarray(traj.boxes),
                 velocities_A_per_ps=np.asarray(traj.velocities) / TIME_UNIT_PS, times_ps=np.asarray(traj.times),
                 species=np.asarray(traj.species), masses_amu=np.asarray(traj.masses))


def _volumes_of_box(box) -> float:
    return float(abs(np.linalg.det(np.asarray(box, dtype=np.float64))))


def _n_blocks(ctx, n: int, what: str) -> int:
    if n < 4:
        raise ValueError(f"{what}: {n} frames is too few for block error bars (need >= 4)")
    return max(2, min(ctx.n_blocks, n // 2))


def _protocol_words(p: LiquidSystem, stages: list[tuple[str, float]]) -> str:
    """One sentence: how the MD ran (stages with the lengths that ran)."""
    md = p.md
    ens = (f"Nosé–Hoover chains (τ_T = {md.tau_t_ps} ps), isotropic MTK barostat (τ_P = {md.tau_p_ps} ps)"
           if p.fixed_volume_per_atom_A3 is None else
           f"fixed volume {p.fixed_volume_per_atom_A3} Å³/atom (every stage NVT; no NPT density)")
    nvt = ("Nosé–Hoover NVT" if md.thermostat == "nose_hoover" else f"Langevin NVT (γ = {md.friction_per_ps}/ps)")
    return (f"Time step {md.timestep_fs} fs; {ens}; structure stage {nvt}; stages: "
            + "; ".join(f"{s} ({ps:g} ps)" for s, ps in stages) + ".")


def _fmt(v, e=None, digits: int = 2) -> str:
    if v is None or not np.isfinite(v):
        return "—"
    if e is None or not np.isfinite(e) or e == 0:
        return f"{v:.{digits}f}"
    digits = min(6, max(digits, -math.floor(math.log10(e)) + 1)) if e > 0 else digits
    return f"{v:.{digits}f} ± {e:.{digits}f}"


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _write_json(path, data) -> None:
    from fusepot.core.checkpoint import atomic_write

    text = json.dumps(_clean(data), indent=1)
    atomic_write(path, lambda f: f.write(text.encode()))


def _figure(nrows=1, ncols=1, size=(6.0, 4.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    return fig, axes


def _all_failed(section: str, failures: dict[str, str]):
    raise RuntimeError(f"{section}: every model failed: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))


# --- liquid_structure -----------------------------------------------------------------------------
@dataclass
class LiquidStructureResult:
    """One model's liquid structure (curves with block errors, density, checks)."""

    r_A: np.ndarray
    g: np.ndarray
    g_err: np.ndarray
    theta_deg: np.ndarray
    adf: np.ndarray  # 1/degree
    adf_err: np.ndarray
    values: dict = field(default_factory=dict)  # density, T_kin, msd, rms, peak, ...
    warnings: list = field(default_factory=list)


def structure_of(traj: Trajectory, rdf, adf, n_blocks: int) -> LiquidStructureResult:
    """g(r) and ADF of `traj` (unweighted trajectory averages, block errors); NaN is an error."""
    g = trajectory_average(rdf, traj, n_blocks)
    a = trajectory_average(adf, traj, n_blocks)
    for what, est in (("g(r)", g), ("ADF", a)):
        if not np.all(np.isfinite(est.mean)):
            raise FloatingPointError(f"{what} has NaN/inf (a neighbor or triplet overflow that was not resolved)")
    k = int(np.argmax(g.mean))
    return LiquidStructureResult(np.asarray(rdf.r), np.asarray(g.mean), np.asarray(g.error), np.asarray(adf.theta),
                                 np.asarray(a.mean), np.asarray(a.error),
                                 {"peak_r_A": float(rdf.r[k]), "peak_g": float(g.mean[k])})


def _rdf_experiment(e: RDFExperiment, ctx):
    """(r, g, flagged mask, table) sorted by r."""
    t = read_table(ctx.path(e.table))
    for col in (e.r_column, e.g_column):
        if col not in t:
            raise ValueError(f"experiment.table: {t.source} has no column {col!r} (columns {list(t.columns)})")
        if t[col].dtype.kind not in "fi":
            raise ValueError(f"experiment.table: column {col!r} of {t.source} is not numeric")
    flagged = np.zeros(len(t), bool)
    if e.flag_column and e.flag_column in t:
        f = t[e.flag_column]
        flagged = (f != 0) if f.dtype.kind in "fi" else np.char.str_len(np.char.strip(f.astype(str))) > 0
    order = np.argsort(t[e.r_column])
    return t[e.r_column][order], t[e.g_column][order], flagged[order], t


class LiquidStructure(EvaluationTask):
    """Liquid g(r) and ADF after the liquid protocol; g(r) vs experiment; NPT density."""

    def __init__(self, params: LiquidStructureParams):
        self.p = params
        pr = params.protocol
        self.title = params.title or f"Liquid {params.element} structure at {pr.temperature_K:g} K"

    def _lengths(self):
        pr, seg = self.p.protocol, self.p.md.segment_ps
        up = lambda x: max(1, math.ceil(x / seg - 1e-6)) * seg  # noqa: E731
        return up(pr.melt_ps), up(pr.npt_ps), up(pr.production_ps)

    def simulate(self, model, key, progress) -> tuple[Trajectory, Trajectory, str]:
        """(NPT stage frames, NVT production frames, description of the system) of one model."""
        pr = self.p.protocol
        melt, npt, prod = (s for s in pr.stages() if s.name in ("melt", "equilibrate", "structure"))
        run = _Runner(self.p, model, progress, sum(self._lengths()))
        k1, k2, k3 = jax.random.split(key, 3)
        _, carry, _ = run.stage("melt", "npt", melt.temperature_K, melt.pressure_gpa, melt.duration_ps,
                                pr.sample_every_ps, k1, None)
        npt_traj, carry, _ = run.stage("npt", "npt", npt.temperature_K, npt.pressure_gpa, npt.duration_ps,
                                       pr.sample_every_ps, k2, carry)
        carry = run.into_mean_cell(npt_traj, carry)
        traj, _, _ = run.stage("production", "nvt", prod.temperature_K, 0.0, prod.duration_ps, prod.sample_every_ps,
                               k3, carry)
        return npt_traj, traj, run.words

    def run(self, models, ctx) -> TaskReport:
        p, pr = self.p, self.p.protocol
        pm = get_plugin_manager()
        exp = _rdf_experiment(p.experiment, ctx) if p.experiment is not None else None  # fail before any MD
        results: dict[str, LiquidStructureResult] = {}
        failures: dict[str, str] = {}
        words = ""
        files: list[str] = []
        for i, m in enumerate(models):
            t0 = time.perf_counter()
            prog = (lambda f, msg, i=i: ctx.progress((i + min(f, 1.0)) / len(models), msg))
            try:
                bctx = BuildContext(species=m.species, dtype=m.dtype)
                rdf = pm.build("observable", "rdf", p.rdf, bctx)
                adf = pm.build("observable", "adf", p.adf, bctx)
                npt_traj, traj, words = self.simulate(m, ctx.key(i), prog)
                warnings: list[str] = []
                ctx.progress(min((i + 1.0) / len(models), 1.0) - 1e-3, f"{m.label}: g(r) and ADF of {traj.n_frames} frames")
                n_blocks = _n_blocks(ctx, traj.n_frames, "production stage")
                res = structure_of(traj, rdf, adf, n_blocks)
                res.values["n_blocks"] = n_blocks
                res.values.update(npt_density(p, "NPT", npt_traj, ctx.n_blocks, warnings))
                res.values.update(sampled_checks(p, "production", traj, pr.temperature_K, warnings))
                res.values["n_frames"] = int(traj.n_frames)
                if exp is not None:
                    keep = ~exp[2] if p.experiment.skip_flagged else np.ones_like(exp[2])
                    res.values["rms_vs_experiment"] = curve_rms_deviation(res.r_A, res.g, exp[0][keep], exp[1][keep],
                                                                          p.experiment.r_range_A)
                res.warnings = warnings
                if p.save_trajectories:
                    name = f"trajectory_{_slug(m.label)}.npz"
                    save_trajectory(ctx.out_dir / name, traj)
                    files.append(name)
                results[m.label] = res
                ctx.progress.line(f"liquid_structure {m.label}: done in {time.perf_counter() - t0:.0f} s")
            except (MDFailure, ValueError, OverflowError, FloatingPointError) as exc:
                failures[m.label] = f"{type(exc).__name__}: {exc}"
                log.error("liquid_structure %s failed: %s", m.label, exc)
                ctx.progress.line(f"liquid_structure {m.label}: FAILED: {exc}")
        if not results:
            _all_failed("liquid_structure", failures)
        files += self._write(results, failures, exp, ctx)
        return TaskReport(self._markdown(results, failures, exp, words), self._metrics(results, failures), files)

    # -- output ------------------------------------------------------------------------------------
    def _write(self, results, failures, exp, ctx) -> list[str]:
        first = next(iter(results.values()))
        rows = []
        for k, r in enumerate(first.r_A):
            row = {"r_A": r}
            for label, res in results.items():
                row[f"g {_csv_name(label)}"] = res.g[k]
                row[f"g_err {_csv_name(label)}"] = res.g_err[k]
            rows.append(row)
        write_csv(ctx.out_dir / "rdf.csv", rows)
        rows = []
        for k, th in enumerate(first.theta_deg):
            row = {"theta_deg": th}
            for label, res in results.items():
                row[f"P_per_deg {_csv_name(label)}"] = res.adf[k]
                row[f"P_err_per_deg {_csv_name(label)}"] = res.adf_err[k]
            rows.append(row)
        write_csv(ctx.out_dir / "adf.csv", rows)
        summary = [{"model": _csv_name(label), **res.values} for label, res in results.items()]
        summary += [{"model": _csv_name(label), "failed": msg.replace(",", ";")} for label, msg in failures.items()]
        write_csv(ctx.out_dir / "summary.csv", summary)
        _write_json(ctx.out_dir / "liquid_structure.json",
                    {"params": self.p.model_dump(mode="json"),
                     "models": {label: {**res.values, "warnings": res.warnings} for label, res in results.items()},
                     "failed": failures})
        self._plot_rdf(results, exp, ctx.out_dir / "rdf.png")
        self._plot_adf(results, ctx.out_dir / "adf.png")
        return ["rdf.csv", "adf.csv", "summary.csv", "liquid_structure.json", "rdf.png", "adf.png"]

    def _plot_rdf(self, results, exp, path):
        fig, (ax,) = _figure(size=(6.4, 4.2))
        for label, res in results.items():
            (line,) = ax.plot(res.r_A, res.g, lw=1.4, label=label)
            ax.fill_between(res.r_A, res.g - res.g_err, res.g + res.g_err, color=line.get_color(), alpha=0.25, lw=0)
        if exp is not None:
            r, g, flagged = exp[0], exp[1], exp[2]
            ax.plot(r[~flagged], g[~flagged], "ko", ms=3, mfc="none", label=self.p.experiment.label)
            if flagged.any():
                ax.plot(r[flagged], g[flagged], "x", color="0.5", ms=5,
                        label="flagged" + (" (not in RMS)" if self.p.experiment.skip_flagged else ""))
        r_max = max(res.r_A[-1] for res in results.values())
        ax.set_xlim(0, r_max)
        ax.set_xlabel("r (Å)")
        ax.set_ylabel("g(r)")
        ax.axhline(1.0, color="0.7", lw=0.8, zorder=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
        ax.set_title(f"{self.p.element} liquid, {self.p.protocol.temperature_K:g} K", fontsize=10)
        fig.savefig(path, dpi=110)

    def _plot_adf(self, results, path):
        fig, (ax,) = _figure(size=(6.4, 4.2))
        for label, res in results.items():
            (line,) = ax.plot(res.theta_deg, res.adf, lw=1.4, label=label)
            ax.fill_between(res.theta_deg, res.adf - res.adf_err, res.adf + res.adf_err, color=line.get_color(),
                            alpha=0.25, lw=0)
        ax.set_xlim(0, 180)
        ax.set_xlabel("bond angle θ (degrees)")
        ax.set_ylabel("P(θ) (1/degree)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
        cutoff = get_plugin_manager().get("observable", "adf").params.model_validate(self.p.adf).cutoff
        ax.set_title(f"{self.p.element} liquid, {self.p.protocol.temperature_K:g} K, neighbours within {cutoff:g} Å "
                     f"(no experimental ADF)", fontsize=9)
        fig.savefig(path, dpi=110)

    def _metrics(self, results, failures) -> dict:
        out = {label: dict(res.values, warnings=list(res.warnings)) for label, res in results.items()}
        out.update({label: {"failed": msg} for label, msg in failures.items()})
        return _clean(out)

    def _markdown(self, results, failures, exp, words) -> str:
        p, pr = self.p, self.p.protocol
        melt_ps, npt_ps, prod_ps = self._lengths()
        stages = [(f"melt at {pr.melt_temperature_K:g} K", melt_ps),
                  (f"{'NPT' if p.fixed_volume_per_atom_A3 is None else 'NVT'} at {pr.temperature_K:g} K"
                   + (f", {pr.pressure_gpa:g} GPa" if p.fixed_volume_per_atom_A3 is None else ""), npt_ps),
                  (f"NVT production at {pr.temperature_K:g} K, frames every {pr.sample_every_ps:g} ps"
                   + (" in the mean cell of the NPT stage's second half" if p.fixed_volume_per_atom_A3 is None else ""),
                   prod_ps)]
        md = [f"{words}. " + _protocol_words(p, stages), ""]
        header = ["model", "density (g/cm³)", "V/atom (Å³)", "g(r) RMS vs exp.", "1st peak r (Å)", "1st peak g",
                  "MSD over production (Å²)", "T_kin (K)"]
        rows = []
        for label, res in results.items():
            v = res.values
            fixed = " (fixed)" if v.get("density_fixed") else ""
            rows.append([label, _fmt(v["density_g_cm3"], v["density_err_g_cm3"], 3) + fixed,
                         _fmt(v["volume_per_atom_A3"], v["volume_per_atom_err_A3"], 2) + fixed,
                         _fmt(v.get("rms_vs_experiment"), None, 3), _fmt(v["peak_r_A"], None, 2),
                         _fmt(v["peak_g"], None, 2), _fmt(v["msd_A2"], None, 2), _fmt(v["T_kin_K"], None, 0)])
        for label, msg in failures.items():
            rows.append([label, f"**failed**: {msg}"] + [""] * (len(header) - 2))
        if exp is not None:
            r, g = exp[0], exp[1]
            k = int(np.argmax(g))
            rows.append([p.experiment.label, "—", "—", "—", _fmt(r[k], None, 2), _fmt(g[k], None, 2), "—", "—"])
        md += [markdown_table(header, rows), ""]
        rdf_p = get_plugin_manager().get("observable", "rdf").params.model_validate(p.rdf)
        md.append(f"g(r): observable `rdf` ({rdf_p.mode}, {rdf_p.n_bins} bins on [{rdf_p.r_min:g}, {rdf_p.r_max:g}] Å) "
                  f"averaged over the production frames; error bands: block averages ({_blocks_words(results)}).")
        if exp is not None:
            t = exp[3]
            cite = t.meta.get("citation", "")
            n_flag = int(exp[2].sum())
            rng = (f"r ∈ [{p.experiment.r_range_A[0]:g}, {p.experiment.r_range_A[1]:g}] Å" if p.experiment.r_range_A
                   else "the r range both curves cover")
            md.append(f"RMS deviation from `{p.experiment.table}`" + (f" ({cite})" if cite else "")
                      + f" after linear interpolation onto a common grid over {rng}"
                      + (f"; {n_flag} flagged point(s) left out" if n_flag and p.experiment.skip_flagged else "")
                      + ".")
        else:
            md.append("No experimental g(r) was given (param `experiment`).")
        adf_p = get_plugin_manager().get("observable", "adf").params.model_validate(p.adf)
        md.append(f"ADF: observable `adf` (both neighbours within {adf_p.cutoff:g} Å, {adf_p.n_bins} bins). "
                  f"No experimental ADF ships with the project (the paper compared with an ab-initio MD ADF, "
                  f"which is not included), so the plot shows the models only.")
        if p.fixed_volume_per_atom_A3 is None:
            md.append("Density: mean over the second half of the NPT stage (block error).")
        warn = [f"- {label}: {w}" for label, res in results.items() for w in res.warnings]
        if warn:
            md += ["", "**Warnings**", ""] + warn
        return "\n".join(md)


def _blocks_words(results) -> str:
    n = sorted({(int(r.values["n_frames"]), int(r.values["n_blocks"])) for r in results.values()})
    return ", ".join(f"{f} frames in {b} blocks" for f, b in n)


# --- self_diffusion ---------------------------------------------------------------------------------
@dataclass
class DiffusionPoint:
    T_K: float
    result: object  # plugins.structure.dynamics.DiffusionResult, m²/s
    values: dict


def _diffusion_experiment(e: DiffusionExperiment, ctx):
    """(T, D, D_err or None, citation) in K and m²/s."""
    import yaml

    path = ctx.path(e.file)
    if not path.is_file():
        raise FileNotFoundError(f"experiment.file: {path} not found")
    if path.suffix.lower() in (".yaml", ".yml"):
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("values"), list) or not data["values"]:
            raise ValueError(f"experiment.file: {path} needs a non-empty `values:` list of {{{e.T_key}, {e.D_key}}}")
        rows = data["values"]
        try:
            T = np.array([float(r[e.T_key]) for r in rows])
            D = np.array([float(r[e.D_key]) for r in rows])
            err = np.array([float(r[e.D_err_key]) for r in rows]) if e.D_err_key else None
        except KeyError as exc:
            raise ValueError(f"experiment: {path} has a value without key {exc.args[0]!r}") from None
        cite = str(data.get("citation", ""))
    else:
        t = read_table(path)
        for col in (e.T_key, e.D_key) + ((e.D_err_key,) if e.D_err_key else ()):
            if col not in t:
                raise ValueError(f"experiment.file: {t.source} has no column {col!r} (columns {list(t.columns)})")
        T, D = t[e.T_key], t[e.D_key]
        err = t[e.D_err_key] if e.D_err_key else None
        cite = t.meta.get("citation", "")
    return T, D, err, cite


def _dynamics_ps(stage) -> float:
    """Length of the dynamics run: the protocol's (n_origins − 1)·spacing + window + one frame
    interval (LiquidProtocol.stages already adds the frame that starts one interval late)."""
    return stage.duration_ps


class SelfDiffusionTask(EvaluationTask):
    """Self-diffusion coefficient vs temperature (Green–Kubo and Einstein) against experiment."""

    def __init__(self, params: SelfDiffusionTaskParams):
        self.p = params
        self.title = params.title or f"Liquid {params.element} self-diffusion"

    def _protocols(self) -> list[LiquidProtocol]:
        return [self.p.protocol.model_copy(update={"temperature_K": float(t)}) for t in self.p.temperatures_K]

    def _lengths(self):
        seg = self.p.md.segment_ps
        up = lambda x: max(1, math.ceil(x / seg - 1e-6)) * seg  # noqa: E731
        pr = self.p.protocol
        dyn = _dynamics_ps(next(s for s in pr.stages() if s.name == "dynamics"))
        nvt = up(self.p.nvt_equilibration_ps) if self.p.nvt_equilibration_ps > 0 else 0.0
        return up(pr.melt_ps), up(pr.npt_ps), nvt, up(dyn)

    def simulate(self, model, ctx, index: int, progress):
        """Yield (T, NPT frames or the MDFailure of that temperature, dynamics frames, description of
        the system) for each temperature of one model."""
        melt_ps, npt_ps, nvt_ps, dyn_ps = self._lengths()
        total = melt_ps + len(self.p.temperatures_K) * (npt_ps + nvt_ps + dyn_ps)
        run = _Runner(self.p, model, progress, total)
        pr0 = self.p.protocol
        melt = next(s for s in pr0.stages() if s.name == "melt")
        _, melt_carry, _ = run.stage("melt", "npt", melt.temperature_K, melt.pressure_gpa, melt.duration_ps,
                                     pr0.sample_every_ps, ctx.key(index), None)
        for k, pr in enumerate(self._protocols()):
            st = {s.name: s for s in pr.stages()}
            key = ctx.key(index, 1 + k)
            k1, k2, k3 = jax.random.split(key, 3)
            # every temperature starts from the melt (order-independent), with the grown potential
            carry = Carry(melt_carry.state, melt_carry.nbrs, run.potential)
            try:
                npt_traj, carry, _ = run.stage("npt", "npt", pr.temperature_K, pr.pressure_gpa, st["equilibrate"].duration_ps,
                                               pr.sample_every_ps, k1, carry)
                carry = run.into_mean_cell(npt_traj, carry)
                if self.p.nvt_equilibration_ps > 0:  # thermalise in the new cell: the dynamics thermostat is weak
                    _, carry, _ = run.stage("nvt", "nvt", pr.temperature_K, 0.0, self.p.nvt_equilibration_ps,
                                            pr.sample_every_ps, k3, carry)
                dyn = st["dynamics"]
                traj, _, _ = run.stage("dynamics", "dynamics", pr.temperature_K, 0.0, _dynamics_ps(dyn),
                                       dyn.sample_every_ps, k2, carry)
            except MDFailure as exc:
                yield pr.temperature_K, exc, None, run.words
                continue
            yield pr.temperature_K, npt_traj, traj, run.words

    def run(self, models, ctx) -> TaskReport:
        p, pr = self.p, self.p.protocol
        pm = get_plugin_manager()
        exp = _diffusion_experiment(p.experiment, ctx) if p.experiment is not None else None
        n_blocks = min(ctx.n_blocks, max(2, pr.n_origins // 2))  # at least two origins per block
        results: dict[str, list[DiffusionPoint]] = {}
        failures: dict[str, str] = {}
        warnings: dict[str, list[str]] = {}
        words, files = "", []
        for i, m in enumerate(models):
            t0 = time.perf_counter()
            prog = (lambda f, msg, i=i: ctx.progress((i + min(f, 1.0)) / len(models), msg))
            points: list[DiffusionPoint] = []
            try:
                obs = pm.build("observable", "self_diffusion",
                               {"correlation_ps": pr.correlation_ps, "origin_spacing_ps": pr.origin_spacing_ps,
                                "n_origins": pr.n_origins, "n_blocks": n_blocks, "fit_start_ps": p.fit_start_ps,
                                "unit": "m^2/s"}, BuildContext(species=m.species, dtype=m.dtype))
                warnings[m.label] = []
                for T, npt_traj, traj, words in self.simulate(m, ctx, i, prog):
                    if isinstance(npt_traj, Exception):
                        points.append(DiffusionPoint(T, None, {"failed": f"{type(npt_traj).__name__}: {npt_traj}"}))
                        ctx.progress.line(f"self_diffusion {m.label} {T:g} K: FAILED: {npt_traj}")
                        continue
                    d = obs.from_trajectory(traj)
                    vals = {"D_GK": d.green_kubo * _D_SCALE, "D_GK_err": d.green_kubo_error * _D_SCALE,
                            "D_E": d.einstein * _D_SCALE, "D_E_err": d.einstein_error * _D_SCALE,
                            "GK_minus_E_over_E": d.relative_difference, "n_origins": d.n_origins}
                    vals.update(npt_density(p, f"NPT {T:g} K", npt_traj, ctx.n_blocks, warnings[m.label]))
                    vals.update(sampled_checks(p, f"dynamics {T:g} K", traj, T, warnings[m.label]))
                    points.append(DiffusionPoint(T, d, vals))
                    if p.save_trajectories:
                        name = f"trajectory_{_slug(m.label)}_{T:g}K.npz"
                        save_trajectory(ctx.out_dir / name, traj)
                        files.append(name)
                    ctx.progress.line(f"self_diffusion {m.label} {T:g} K: D_GK = {_fmt(vals['D_GK'], vals['D_GK_err'])}"
                                      f", D_E = {_fmt(vals['D_E'], vals['D_E_err'])} {D_UNIT}")
            except (MDFailure, ValueError, OverflowError, FloatingPointError) as exc:
                failures[m.label] = f"{type(exc).__name__}: {exc}"
                log.error("self_diffusion %s failed: %s", m.label, exc)
                ctx.progress.line(f"self_diffusion {m.label}: FAILED: {exc}")
                continue
            if not any(pt.result is not None for pt in points):
                failures[m.label] = "; ".join(f"{pt.T_K:g} K: {pt.values['failed']}" for pt in points)
                continue
            results[m.label] = points
            ctx.progress.line(f"self_diffusion {m.label}: done in {time.perf_counter() - t0:.0f} s")
        if not results:
            _all_failed("self_diffusion", failures)
        comparison = self._compare(results, exp)
        files += self._write(results, failures, comparison, exp, ctx)
        metrics = {label: {"points": [{"T_K": pt.T_K, **pt.values} for pt in pts], "warnings": warnings.get(label, []),
                           **comparison.get(label, {})} for label, pts in results.items()}
        metrics.update({label: {"failed": msg} for label, msg in failures.items()})
        return TaskReport(self._markdown(results, failures, comparison, exp, warnings, words), _clean(metrics), files)

    def _compare(self, results, exp) -> dict:
        """Per model: D_GK at each experimental temperature (the simulated point, or linear in T
        between simulated points; no extrapolation) and its relative deviation."""
        if exp is None:
            return {}
        T_exp, D_exp, _, _ = exp
        out = {}
        for label, pts in results.items():
            ok = sorted((pt.T_K, pt.values["D_GK"]) for pt in pts if pt.result is not None)
            ts, ds = np.array([x[0] for x in ok]), np.array([x[1] for x in ok])
            rows = []
            for t, d in zip(T_exp, D_exp):
                if ts.min() - 1e-6 <= t <= ts.max() + 1e-6:
                    model = float(np.interp(t, ts, ds))
                    rows.append({"T_K": float(t), "D_GK_model": model, "D_exp": float(d) * _D_SCALE,
                                 "relative_deviation": model / (float(d) * _D_SCALE) - 1.0})
                else:
                    rows.append({"T_K": float(t), "D_GK_model": None, "D_exp": float(d) * _D_SCALE,
                                 "relative_deviation": None})
            out[label] = {"vs_experiment": rows}
        return out

    def _write(self, results, failures, comparison, exp, ctx) -> list[str]:
        rows = []
        for label, pts in results.items():
            for pt in pts:
                rows.append({"model": _csv_name(label), "T_K": pt.T_K,
                             **{(f"{k}_1e-9m2_per_s" if k.startswith("D_") else k):
                                (v.replace(",", ";") if isinstance(v, str) else v) for k, v in pt.values.items()}})
        for label, msg in failures.items():
            rows.append({"model": _csv_name(label), "failed": msg.replace(",", ";")})
        write_csv(ctx.out_dir / "diffusion.csv", rows)
        # correlation functions: one column per (model, temperature), on the common lag grid
        lag = next(pt.result.lag_ps for pts in results.values() for pt in pts if pt.result is not None)
        crow = [{"lag_ps": t} for t in lag]
        for label, pts in results.items():
            for pt in pts:
                if pt.result is None:
                    continue
                for k, row in enumerate(crow):
                    row[f"vacf_A2_per_ps2 {_csv_name(label)} {pt.T_K:g}K"] = pt.result.vacf[k]
                    row[f"msd_A2 {_csv_name(label)} {pt.T_K:g}K"] = pt.result.msd[k]
        write_csv(ctx.out_dir / "correlations.csv", crow)
        data = {"params": self.p.model_dump(mode="json"), "unit": D_UNIT,
                "models": {label: {"points": [{"T_K": pt.T_K, **pt.values} for pt in pts], **comparison.get(label, {})}
                           for label, pts in results.items()},
                "failed": failures}
        if exp is not None:
            data["experiment"] = {"T_K": exp[0], "D": exp[1] * _D_SCALE,
                                  "D_err": None if exp[2] is None else exp[2] * _D_SCALE, "citation": exp[3]}
        _write_json(ctx.out_dir / "diffusion.json", data)
        self._plot_d(results, exp, ctx.out_dir / "diffusion_vs_T.png")
        self._plot_corr(results, ctx.out_dir / "vacf_msd.png")
        return ["diffusion.csv", "correlations.csv", "diffusion.json", "diffusion_vs_T.png", "vacf_msd.png"]

    def _plot_d(self, results, exp, path):
        fig, (ax,) = _figure(size=(6.0, 4.2))
        markers = "osD^v<>ph"
        for j, (label, pts) in enumerate(results.items()):
            ok = sorted((pt for pt in pts if pt.result is not None), key=lambda pt: pt.T_K)
            T = np.array([pt.T_K for pt in ok])
            gk = ax.errorbar(T, [pt.values["D_GK"] for pt in ok], yerr=[pt.values["D_GK_err"] for pt in ok],
                             fmt="-" + markers[j % len(markers)], ms=5, capsize=3, lw=1.3, label=f"{label} (Green–Kubo)")
            ax.errorbar(T, [pt.values["D_E"] for pt in ok], yerr=[pt.values["D_E_err"] for pt in ok],
                        fmt="--" + markers[j % len(markers)], mfc="none", ms=5, capsize=3, lw=1.0,
                        color=gk.lines[0].get_color(), label=f"{label} (Einstein)")
        if exp is not None:
            T_exp, D_exp, err, _ = exp
            ax.errorbar(T_exp, D_exp * _D_SCALE, yerr=None if err is None else err * _D_SCALE, fmt="ks", ms=6,
                        capsize=4, label=self.p.experiment.label)
        ax.set_xlabel("T (K)")
        ax.set_ylabel(f"D ({D_UNIT})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
        ax.set_title(f"{self.p.element} liquid self-diffusion", fontsize=10)
        fig.savefig(path, dpi=110)

    def _plot_corr(self, results, path):
        fig, (a1, a2) = _figure(1, 2, size=(10.0, 4.0))
        styles = ["-", "--", ":", "-."]
        for j, (label, pts) in enumerate(results.items()):
            color = f"C{j % 10}"
            for k, pt in enumerate(pt for pt in pts if pt.result is not None):
                r = pt.result
                name = f"{label}, {pt.T_K:g} K"
                a1.plot(r.lag_ps, r.vacf / r.vacf[0], styles[k % 4], color=color, lw=1.2, label=name)
                a2.plot(r.lag_ps, r.msd, styles[k % 4], color=color, lw=1.2, label=name)
        a1.axhline(0.0, color="0.6", lw=0.8)
        a1.set_xlabel("t (ps)")
        a1.set_ylabel("VACF C(t)/C(0)")
        a2.set_xlabel("t (ps)")
        a2.set_ylabel("MSD (Å²)")
        for ax in (a1, a2):
            ax.grid(alpha=0.3)
        a1.legend(fontsize=7, frameon=False)
        fig.savefig(path, dpi=110)

    def _markdown(self, results, failures, comparison, exp, warnings, words) -> str:
        p, pr = self.p, self.p.protocol
        melt_ps, npt_ps, nvt_ps, dyn_ps = self._lengths()
        fixed = p.fixed_volume_per_atom_A3 is not None
        stages = [(f"melt at {pr.melt_temperature_K:g} K (once per model)", melt_ps),
                  (f"{'NVT' if fixed else 'NPT'} at each temperature" + ("" if fixed else f", {pr.pressure_gpa:g} GPa"),
                   npt_ps)]
        if nvt_ps:
            stages.append(("NVT thermalisation" + ("" if fixed else " in the mean NPT cell"), nvt_ps))
        stages += [
                  (f"NVT dynamics (Langevin γ = {pr.dynamics_friction_per_ps}/ps"
                   + ("" if fixed else ", in the mean NPT cell") + f"), frames every {pr.dynamics_sample_every_ps:g} ps",
                   dyn_ps)]
        n_or = next((pt.values["n_origins"] for pts in results.values() for pt in pts if pt.result is not None), None)
        md = [f"{words}. " + _protocol_words(p, stages),
              f"D from {n_or} time origins {pr.origin_spacing_ps:g} ps apart, correlation window {pr.correlation_ps:g} ps: "
              f"Green–Kubo ∫VACF/3 and Einstein MSD slope/6 (fit from "
              f"{p.fit_start_ps if p.fit_start_ps is not None else pr.correlation_ps / 2:g} ps); error bars: block "
              f"averages over consecutive origins (observable `self_diffusion`). D in {D_UNIT}.", ""]
        header = ["model", "T (K)", "D Green–Kubo", "D Einstein", "(GK − E)/E", "T_kin (K)", "density (g/cm³)"]
        rows = []
        for label, pts in results.items():
            for pt in pts:
                v = pt.values
                if pt.result is None:
                    rows.append([label, f"{pt.T_K:g}", f"**failed**: {v['failed']}", "", "", "", ""])
                    continue
                rows.append([label, f"{pt.T_K:g}", _fmt(v["D_GK"], v["D_GK_err"]), _fmt(v["D_E"], v["D_E_err"]),
                             f"{round(100 * v['GK_minus_E_over_E']) + 0:+d}%", _fmt(v["T_kin_K"], None, 0),
                             _fmt(v["density_g_cm3"], v["density_err_g_cm3"], 3) + (" (fixed)" if fixed else "")])
        for label, msg in failures.items():
            rows.append([label, "", f"**failed**: {msg}", "", "", "", ""])
        if exp is not None:
            T_exp, D_exp, err, cite = exp
            for k in range(len(T_exp)):
                e = None if err is None else err[k] * _D_SCALE
                rows.append([p.experiment.label, f"{T_exp[k]:g}", _fmt(D_exp[k] * _D_SCALE, e), "", "", "", ""])
        md += [markdown_table(header, rows), ""]
        if exp is not None:
            md.append(f"Experiment: `{p.experiment.file}`" + (f" ({exp[3]})" if exp[3] else "") + ".")
            cmp_rows = []
            for label, c in comparison.items():
                for r in c["vs_experiment"]:
                    rel = r["relative_deviation"]
                    cmp_rows.append([label, f"{r['T_K']:g}", _fmt(r["D_GK_model"], None), _fmt(r["D_exp"], None),
                                     "outside the simulated temperatures" if rel is None else f"{round(100 * rel) + 0:+d}%"])
            md += ["", markdown_table(["model", "T (K)", "D_GK model (interpolated in T)", "D experiment",
                                       "model / exp − 1"], cmp_rows)]
        else:
            md.append("No experimental value was given (param `experiment`).")
        warn = [f"- {label}: {w}" for label, ws in warnings.items() for w in ws]
        if warn:
            md += ["", "**Warnings**", ""] + warn
        return "\n".join(md)


# --- registration ---------------------------------------------------------------------------------
COMPONENTS: list[Component] = [
    Component("liquid_structure", LiquidStructure, LiquidStructureParams, lambda p, ctx: LiquidStructure(p),
              "Liquid protocol (NPT melt → NPT → NVT): g(r) vs experiment (RMS), bond-angle distribution, NPT density"),
    Component("self_diffusion", SelfDiffusionTask, SelfDiffusionTaskParams, lambda p, ctx: SelfDiffusionTask(p),
              "Liquid self-diffusion vs temperature: Green–Kubo and Einstein with block errors, vs experiment"),
]
