"""Velocity autocorrelation and self-diffusion from a production trajectory (evaluation only).

Multiple time origins t_o (spaced `origin_spacing_ps`), window of `correlation_ps`:

    C(t)   = ⟨ (1/N) Σ_i v_i(t_o) · v_i(t_o + t) ⟩_o                       Å²/ps²
    MSD(t) = ⟨ (1/N) Σ_i |x_i(t_o + t) − x_i(t_o)|² ⟩_o                    Å²
    D_GK   = (1/3) ∫_0^{t_max} C(t) dt                       (Green–Kubo, trapezoid rule)
    D_E    = slope of MSD(t) on [fit_start_ps, t_max] / 6    (Einstein, least squares)

Positions must be unwrapped (fusepot integrators never wrap); a jump larger than half a cell
width between consecutive frames is rejected as a sign of wrapped input.  Error bars: the
origins are split into `n_blocks` contiguous blocks and the spread of the per-block estimates
gives the standard error (`core.stats.block_estimate`), so blocks should span more than the
correlation time.  Langevin friction γ slows diffusion (D ≈ kT/(m(ζ+γ)) for friction ζ of the
fluid); sample dynamics with NVE or γ ≪ ζ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import equinox as eqx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fusepot.core.interfaces import Observable, Trajectory
from fusepot.core.neighbors import _perpendicular_widths
from fusepot.core.stats import block_estimate
from fusepot.core.units import TIME_UNIT_PS, convert

from .rdf import species_index


@dataclass(frozen=True)
class CorrelationData:
    """Per-origin correlation functions on the lag grid `lag_ps` (ps)."""

    lag_ps: np.ndarray  # (L,)
    vacf: np.ndarray  # (n_origins, L) Å²/ps²
    msd: np.ndarray  # (n_origins, L) Å²
    origin_ps: np.ndarray  # (n_origins,) time of each origin


def correlation_data(traj: Trajectory, correlation_ps: float, origin_spacing_ps: float,
                     n_origins: Optional[int] = None, species: Optional[int] = None,
                     remove_drift: bool = True) -> CorrelationData:
    """VACF and MSD for every time origin (host-side NumPy; O(n_origins · L · N) work)."""
    times = np.asarray(traj.times, dtype=np.float64)
    if times.shape[0] < 2:
        raise ValueError("time correlations need at least two frames")
    dt = times[1] - times[0]
    # float32 trajectories store times with ~1e-7 relative resolution: allow a few ulps of the
    # largest time, not a fixed 1e-9 ps
    ulps = 16 * np.finfo(np.asarray(traj.times).dtype).eps * max(1.0, float(np.abs(times).max()))
    if not np.allclose(np.diff(times), dt, rtol=1e-6, atol=max(1e-9, ulps)):
        raise ValueError("time correlations need equally spaced frames")
    lag = int(round(correlation_ps / dt))
    spacing = int(round(origin_spacing_ps / dt))
    if abs(lag * dt - correlation_ps) > 1e-6 * max(1.0, correlation_ps) or lag < 1:
        raise ValueError(f"correlation_ps={correlation_ps} is not a whole number of sampling intervals ({dt:g} ps)")
    if abs(spacing * dt - origin_spacing_ps) > 1e-6 * max(1.0, origin_spacing_ps) or spacing < 1:
        raise ValueError(f"origin_spacing_ps={origin_spacing_ps} is not a whole number of sampling intervals ({dt:g} ps)")
    n_frames = times.shape[0]
    available = (n_frames - 1 - lag) // spacing + 1 if n_frames > lag else 0
    if available < 1:
        raise ValueError(f"trajectory of {n_frames} frames ({n_frames * dt:g} ps) is shorter than one "
                         f"correlation window of {correlation_ps} ps")
    if n_origins is None:
        n_origins = available
    elif n_origins > available:
        raise ValueError(f"asked for {n_origins} time origins {origin_spacing_ps} ps apart with a {correlation_ps} ps "
                         f"window, but the {n_frames * dt:g} ps trajectory holds only {available}")

    x = np.asarray(traj.positions, dtype=np.float64)
    v = np.asarray(traj.velocities, dtype=np.float64) / TIME_UNIT_PS  # Å/time-unit → Å/ps
    m = np.asarray(traj.masses, dtype=np.float64)
    jump = np.max(np.linalg.norm(np.diff(x, axis=0), axis=-1))
    half_width = 0.5 * min(_perpendicular_widths(np.asarray(b, dtype=np.float64)).min() for b in np.asarray(traj.boxes)[[0, -1]])
    if jump > half_width:
        raise ValueError(f"an atom moved {jump:.3g} Å between consecutive frames (> half the cell width "
                         f"{half_width:.3g} Å): positions look wrapped; diffusion needs unwrapped positions")
    if not np.any(v):
        raise ValueError("trajectory has no velocities (all zero); the VACF needs an MD trajectory")
    if remove_drift:
        # centre-of-mass motion (thermostat noise, round-off) is not self-diffusion
        w = m / m.sum()
        v = v - np.einsum("n,fnk->fk", w, v)[:, None, :]
        x = x - np.einsum("n,fnk->fk", w, x)[:, None, :]
    if species is not None:
        sel = np.asarray(traj.species) == species
        if not sel.any():
            raise ValueError(f"no atoms of species index {species} in the trajectory")
        x, v = x[:, sel], v[:, sel]

    origins = np.arange(n_origins) * spacing
    vacf = np.empty((n_origins, lag + 1))
    msd = np.empty((n_origins, lag + 1))
    n_atoms = x.shape[1]
    for a, o in enumerate(origins):
        vacf[a] = np.einsum("lnk,nk->l", v[o:o + lag + 1], v[o]) / n_atoms
        msd[a] = np.sum((x[o:o + lag + 1] - x[o]) ** 2, axis=(1, 2)) / n_atoms
    return CorrelationData(np.arange(lag + 1) * dt, vacf, msd, times[origins])


def green_kubo(lag_ps, vacf):
    """D = (1/3) ∫ C dt in Å²/ps (trapezoid rule over the whole window)."""
    return np.trapezoid(vacf, lag_ps, axis=-1) / 3.0


def einstein(lag_ps, msd, fit_start_ps: float):
    """D = slope(MSD) / 6 in Å²/ps from a least-squares line on [fit_start_ps, end]."""
    sel = lag_ps >= fit_start_ps - 1e-12
    if sel.sum() < 2:
        raise ValueError(f"MSD fit window [{fit_start_ps}, {lag_ps[-1]}] ps holds fewer than two points")
    slope = np.polyfit(lag_ps[sel], np.asarray(msd)[..., sel].T, 1)[0]
    return slope / 6.0


class _CorrelationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    correlation_ps: float = Field(5.0, gt=0, description="length of the correlation window (max lag) in ps")
    origin_spacing_ps: float = Field(0.5, gt=0, description="spacing of time origins in ps (paper: 0.5)")
    n_origins: Optional[int] = Field(None, ge=2, description="number of time origins (paper: 160); "
                                                              "default: all that fit")
    n_blocks: int = Field(10, ge=2, description="blocks of consecutive origins for the error bar")
    species: Optional[str] = Field(None, description="chemical symbol to restrict to; default: all atoms")
    remove_drift: bool = Field(True, description="subtract centre-of-mass motion")


class _CorrelationObservable(Observable):
    correlation_ps: float = eqx.field(static=True, default=5.0)
    origin_spacing_ps: float = eqx.field(static=True, default=0.5)
    n_origins: Optional[int] = eqx.field(static=True, default=None)
    n_blocks: int = eqx.field(static=True, default=10)
    species: Optional[int] = eqx.field(static=True, default=None)
    remove_drift: bool = eqx.field(static=True, default=True)

    reweightable = False

    def correlations(self, traj: Trajectory) -> CorrelationData:
        data = correlation_data(traj, self.correlation_ps, self.origin_spacing_ps, self.n_origins, self.species,
                                self.remove_drift)
        if data.vacf.shape[0] < self.n_blocks:
            raise ValueError(f"{data.vacf.shape[0]} time origins are fewer than n_blocks={self.n_blocks}; "
                             f"run longer or space origins closer")
        return data


@dataclass(frozen=True)
class VACFResult:
    lag_ps: np.ndarray
    vacf: np.ndarray  # Å²/ps²
    error: np.ndarray  # block standard error, Å²/ps²
    n_origins: int

    @property
    def normalized(self) -> np.ndarray:
        return self.vacf / self.vacf[0]


class VACF(_CorrelationObservable):
    """Velocity autocorrelation C(t) = ⟨v_i(0)·v_i(t)⟩ in Å²/ps², averaged over atoms and origins."""

    unit = "A^2/ps^2"

    def from_trajectory(self, traj: Trajectory) -> VACFResult:
        data = self.correlations(traj)
        est = block_estimate(lambda c: np.mean(c, axis=0), data.vacf, self.n_blocks)
        return VACFResult(data.lag_ps, est.mean, est.error, data.vacf.shape[0])


class VACFParams(_CorrelationParams):
    pass


@dataclass(frozen=True)
class DiffusionResult:
    """Self-diffusion coefficients in `unit` with block standard errors."""

    green_kubo: float
    green_kubo_error: float
    einstein: float
    einstein_error: float
    unit: str
    n_origins: int
    lag_ps: np.ndarray
    vacf: np.ndarray  # Å²/ps², origin-averaged
    msd: np.ndarray  # Å², origin-averaged

    @property
    def value(self) -> float:
        """The Green–Kubo estimate (the paper's definition)."""
        return self.green_kubo

    @property
    def relative_difference(self) -> float:
        """(D_GK − D_E) / D_E: the cross-check between the two routes."""
        return (self.green_kubo - self.einstein) / self.einstein


class SelfDiffusion(_CorrelationObservable):
    """Self-diffusion coefficient by Green–Kubo (∫VACF/3) with an Einstein (MSD slope) cross-check."""

    fit_start_ps: Optional[float] = eqx.field(static=True, default=None)
    output_unit: str = eqx.field(static=True, default="A^2/ps")

    unit = "A^2/ps"

    def from_trajectory(self, traj: Trajectory) -> DiffusionResult:
        data = self.correlations(traj)
        start = self.fit_start_ps if self.fit_start_ps is not None else 0.5 * self.correlation_ps
        lag = data.lag_ps

        def both(series):
            c, m = (np.mean(s, axis=0) for s in series)
            return np.array([green_kubo(lag, c), einstein(lag, m, start)])

        est = block_estimate(both, [data.vacf, data.msd], self.n_blocks)
        k = float(convert(1.0, "A^2/ps", self.output_unit))
        return DiffusionResult(float(est.mean[0]) * k, float(est.error[0]) * k, float(est.mean[1]) * k,
                               float(est.error[1]) * k, self.output_unit, data.vacf.shape[0], lag,
                               data.vacf.mean(axis=0), data.msd.mean(axis=0))


class SelfDiffusionParams(_CorrelationParams):
    fit_start_ps: Optional[float] = Field(None, ge=0, description="start of the MSD fit window in ps "
                                                                   "(default: half the correlation window)")
    unit: str = Field("A^2/ps", pattern=r"^(A\^2/ps|m\^2/s)$", description="unit of the result: A^2/ps or m^2/s")

    @model_validator(mode="after")
    def _check(self):
        if self.fit_start_ps is not None and self.fit_start_ps >= self.correlation_ps:
            raise ValueError("fit_start_ps must be inside the correlation window")
        return self


def _common(p: _CorrelationParams, ctx) -> dict:
    sp = species_index(p.species, ctx.species, "time correlation") if p.species is not None else None
    return dict(correlation_ps=float(p.correlation_ps), origin_spacing_ps=float(p.origin_spacing_ps),
                n_origins=p.n_origins, n_blocks=int(p.n_blocks), species=sp, remove_drift=bool(p.remove_drift))


def build_vacf(p: VACFParams, ctx) -> VACF:
    return VACF(**_common(p, ctx))


def build_self_diffusion(p: SelfDiffusionParams, ctx) -> SelfDiffusion:
    return SelfDiffusion(**_common(p, ctx), fit_start_ps=p.fit_start_ps, output_unit=p.unit)
