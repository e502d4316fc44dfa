"""The liquid-structure protocol of the paper, as data for a multi-stage runner.

Stages (paper): NPT equilibration at 2400 K (melt), NPT at 1965 K (liquid density), NVT
production at 1965 K sampled every 0.1 ps for g(r)/ADF, on 2048 atoms made by doubling a
256-atom cell along each lattice vector.  Dynamics (VACF, diffusion) need a second NVT run with
frequent sampling and weak (or no) thermostat friction: 160 time origins 0.5 ps apart.

This module only *describes* the stages; running them is the job of the generic multi-stage
`Protocol` (plugins/solid) with an NPT ensemble.  Durations not stated in the paper are our
defaults and are marked as such.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class Stage:
    name: str
    ensemble: str  # "npt" or "nvt": the runner maps these to its ensemble plugins
    temperature_K: float
    pressure_gpa: Optional[float]  # None for NVT
    duration_ps: float
    sample_every_ps: Optional[float]  # None: frames discarded (equilibration)
    friction_per_ps: Optional[float] = None  # thermostat coupling for NVT stages, if Langevin


class LiquidProtocol(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    melt_temperature_K: float = Field(2400.0, gt=0, description="NPT melting stage (paper: 2400 K)")
    temperature_K: float = Field(1965.0, gt=0, description="liquid state point (paper: 1965 K)")
    pressure_gpa: float = Field(0.0, description="NPT pressure in GPa (ambient)")
    melt_ps: float = Field(20.0, gt=0, description="NPT melt duration, ps (our default)")
    npt_ps: float = Field(20.0, gt=0, description="NPT equilibration at temperature_K, ps (our default)")
    production_ps: float = Field(50.0, gt=0, description="NVT production for g(r)/ADF, ps (our default)")
    sample_every_ps: float = Field(0.1, gt=0, description="structure sampling interval (paper: 0.1 ps)")
    dynamics_sample_every_ps: float = Field(0.01, gt=0, description="VACF sampling interval, ps (our default)")
    n_origins: int = Field(160, ge=2, description="time origins for VACF/diffusion (paper: 160)")
    origin_spacing_ps: float = Field(0.5, gt=0, description="spacing of time origins (paper: 0.5 ps)")
    correlation_ps: float = Field(5.0, gt=0, description="VACF window, ps (our default)")
    dynamics_friction_per_ps: float = Field(0.01, gt=0, description="weak Langevin friction for dynamics, 1/ps")
    replicate: tuple[int, int, int] = Field((2, 2, 2), description="supercell of the 256-atom cell (paper: 2048 atoms)")

    def stages(self) -> list[Stage]:
        # frames are recorded one interval after a stage starts, so the last origin's window needs
        # one interval more than (n_origins − 1)·spacing + window
        dyn_ps = (self.n_origins - 1) * self.origin_spacing_ps + self.correlation_ps + self.dynamics_sample_every_ps
        return [
            Stage("melt", "npt", self.melt_temperature_K, self.pressure_gpa, self.melt_ps, None),
            Stage("equilibrate", "npt", self.temperature_K, self.pressure_gpa, self.npt_ps, None),
            Stage("structure", "nvt", self.temperature_K, None, self.production_ps, self.sample_every_ps),
            Stage("dynamics", "nvt", self.temperature_K, None, dyn_ps, self.dynamics_sample_every_ps,
                  self.dynamics_friction_per_ps),
        ]


def supercell(atoms, replicate=(2, 2, 2)):
    """ASE Atoms repeated `replicate` times along its lattice vectors (256 → 2048 atoms for (2, 2, 2))."""
    reps = tuple(int(k) for k in replicate)
    if len(reps) != 3 or min(reps) < 1:
        raise ValueError(f"replicate must be three positive integers, got {replicate}")
    big = atoms.repeat(reps)
    assert len(big) == len(atoms) * int(np.prod(reps))
    return big
