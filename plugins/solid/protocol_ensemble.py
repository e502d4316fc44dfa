"""`protocol`: a multi-stage MD protocol as one ensemble, so that a spec's state point can say
"NPT equilibration at one temperature, then another, then NVT production".

The trajectory handed to DiffTRe/evaluation is the last stage's.  On the first call all stages
run; on a restart (later EXP updates continue from the previous final state) only the stages
marked `repeat: true` run — by default just the last one.
"""
from __future__ import annotations

from typing import Optional

import equinox as eqx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fusepot.core.interfaces import Ensemble, StatePoint
from fusepot.core.plugins import BuildContext, get_plugin_manager
from fusepot.core.units import pressure_to_gpa

from .protocol import Stage, carry_for, run_protocol


class StageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    ensemble: dict = Field(..., description="{name: <ensemble plugin>, params: {...}}")
    temperature: Optional[float] = Field(None, gt=0, description="K (default: the state point's)")
    pressure: Optional[float] = Field(None, description="GPa (default: the state point's)")
    keep: bool = Field(False, description="keep this stage's frames (the last stage is always the sampled one)")
    cell_from: Optional[str] = Field(None, description="start in the mean cell of this earlier kept stage")
    repeat: Optional[bool] = Field(None, description="run again on restarts (default: only the last stage)")


class ProtocolParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stages: list[StageParams] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _check(self):
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        for s in self.stages:
            if set(s.ensemble) - {"name", "params"} or "name" not in s.ensemble:
                raise ValueError(f"stage {s.name!r}: ensemble must be {{name: ..., params: {{...}}}}")
            if s.ensemble["name"] == "protocol":
                raise ValueError(f"stage {s.name!r}: protocols cannot be nested")
        return self


class ProtocolEnsemble(Ensemble):
    ensembles: tuple
    names: tuple = eqx.field(static=True)
    temperatures: tuple = eqx.field(static=True)
    pressures: tuple = eqx.field(static=True)
    keep: tuple = eqx.field(static=True)
    cell_from: tuple = eqx.field(static=True)
    repeat: tuple = eqx.field(static=True)

    def _stages(self, state: StatePoint, only_repeat: bool) -> list[Stage]:
        out = []
        for i, ens in enumerate(self.ensembles):
            if only_repeat and not self.repeat[i]:
                continue
            t = self.temperatures[i] if self.temperatures[i] is not None else float(state.temperature)
            p_gpa = self.pressures[i] if self.pressures[i] is not None else float(pressure_to_gpa(state.pressure))
            last = i == len(self.ensembles) - 1
            out.append(Stage(self.names[i], ens, t, p_gpa, keep=self.keep[i] or last,
                             cell_from=None if only_repeat else self.cell_from[i]))
        return out

    def initial_carry(self, potential, conf, masses, state, key):
        return self.ensembles[-1].initial_carry(potential, conf, masses, state, key)

    def sample(self, potential, conf, masses, state, key, restart=None, progress=None):
        stages = self._stages(state, only_repeat=restart is not None)
        if restart is not None:
            restart = carry_for(stages[0].ensemble, restart, restart.potential or potential)
        result = run_protocol(potential, conf, masses, stages, key, restart=restart, progress=progress)
        return result.trajectories[stages[-1].name], result.carry


def build_protocol(p: ProtocolParams, ctx: BuildContext) -> ProtocolEnsemble:
    pm = get_plugin_manager()
    ens = []
    for s in p.stages:
        try:
            ens.append(pm.build("ensemble", s.ensemble["name"], s.ensemble.get("params") or {}, ctx))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"stages.{s.name}.ensemble: {exc}") from None
    n = len(p.stages)
    repeat = tuple(s.repeat if s.repeat is not None else i == n - 1 for i, s in enumerate(p.stages))
    return ProtocolEnsemble(tuple(ens), tuple(s.name for s in p.stages), tuple(s.temperature for s in p.stages),
                            tuple(s.pressure for s in p.stages), tuple(s.keep for s in p.stages),
                            tuple(s.cell_from for s in p.stages), repeat)
