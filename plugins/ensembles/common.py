"""Settings shared by the MD ensembles (user units: ps, fs, Å)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MDRunParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    timestep_fs: float = Field(0.5, gt=0, description="integration time step in fs")
    production_ps: float = Field(..., gt=0, description="length of the sampled run in ps")
    equilibration_ps: float = Field(0.0, ge=0, description="discarded run before sampling, in ps (first update)")
    sample_every_ps: float = Field(0.1, gt=0, description="interval between stored frames in ps")
    neighbor_skin: float = Field(0.5, ge=0, description="neighbor-list skin in Å")
    chunk_frames: int = Field(50, ge=1, description="frames per jitted chunk (overflow/NaN checked between chunks)")

    @model_validator(mode="after")
    def _consistent(self):
        steps = self.sample_every_ps * 1000 / self.timestep_fs
        if abs(steps - round(steps)) > 1e-6 or round(steps) < 1:
            raise ValueError(f"sample_every_ps ({self.sample_every_ps}) must be a whole number of time steps "
                             f"({self.timestep_fs} fs)")
        if self.production_ps < self.sample_every_ps:
            raise ValueError("production_ps must be at least one sampling interval")
        return self

    @property
    def steps_per_frame(self) -> int:
        return int(round(self.sample_every_ps * 1000 / self.timestep_fs))

    @property
    def n_frames(self) -> int:
        return int(round(self.production_ps / self.sample_every_ps))

    @property
    def n_equilibration_steps(self) -> int:
        return int(round(self.equilibration_ps * 1000 / self.timestep_fs))
