"""The experiment spec: one YAML file describes a run; validated by pydantic 2.

Plugin parameter blocks are validated by the plugin's own pydantic model, so errors name the
full field path (e.g. ``state_points.1.targets.0.observable.params.bins``).  Unknown keys are
errors everywhere.  Numbers are in user units, stated in field names or `unit` fields:
K, GPa, Å, ps, eV, amu.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import units
from .plugins import PluginManager, get_plugin_manager


class SpecError(ValueError):
    """Invalid spec; the message names the field path and what was expected."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PluginRef(_Strict):
    name: str = Field(..., description="plugin component name (see `fusepot plugins`)")
    params: dict[str, Any] = Field(default_factory=dict, description="parameters validated by the plugin's own model")


class CrystalSpec(_Strict):
    """Arguments of ase.build.bulk (lattice constants in Å)."""
    element: str
    structure: str = Field(..., description="fcc, bcc, hcp, diamond, ...")
    a: float = Field(..., gt=0, description="lattice constant a in Å")
    c: Optional[float] = Field(None, gt=0, description="lattice constant c in Å (hcp)")
    cubic: bool = False
    orthorhombic: bool = False


class SystemSpec(_Strict):
    crystal: Optional[CrystalSpec] = None
    file: Optional[str] = Field(None, description="structure file readable by ASE (relative to the spec)")
    supercell: tuple[int, int, int] = (1, 1, 1)
    species: Optional[list[str]] = Field(None, description="chemical symbols in type-index order (default: sorted)")
    rattle: float = Field(0.0, ge=0, description="random displacement amplitude in Å applied at start")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.crystal is None) == (self.file is None):
            raise ValueError("give exactly one of 'crystal' or 'file'")
        return self


class BoxSpec(_Strict):
    """Box of a state point: lattice constants (rebuilds the crystal) or an explicit matrix (rows, Å)."""
    lattice: Optional[dict[Literal["a", "c"], float]] = None
    matrix: Optional[list[list[float]]] = None

    @model_validator(mode="after")
    def _one(self):
        if (self.lattice is None) == (self.matrix is None):
            raise ValueError("give exactly one of 'lattice' or 'matrix'")
        if self.matrix is not None and (len(self.matrix) != 3 or any(len(r) != 3 for r in self.matrix)):
            raise ValueError("matrix must be 3×3 (rows are lattice vectors in Å)")
        return self


class TargetSpec(_Strict):
    name: Optional[str] = Field(None, description="label (default: observable name)")
    observable: PluginRef
    value: Union[float, list[float]] = Field(..., description="experimental value(s) in `unit`")
    unit: str = Field(..., description="unit of value and uncertainty, e.g. GPa, eV/atom")
    weight: Optional[float] = Field(None, ge=0, description="loss weight λ in 1/unit²")
    uncertainty: Optional[float] = Field(None, gt=0, description="σ in unit; λ = 1/σ²")

    @field_validator("unit")
    @classmethod
    def _unit(cls, v):
        units.canonical(v)
        return v

    @model_validator(mode="after")
    def _weight(self):
        if (self.weight is None) == (self.uncertainty is None):
            raise ValueError("give exactly one of 'weight' or 'uncertainty'")
        return self


class StatePointSpec(_Strict):
    name: str
    temperature: float = Field(..., gt=0, description="K")
    pressure: float = Field(0.0, description="GPa (NPT ensembles)")
    box: Optional[BoxSpec] = None
    ensemble: PluginRef
    targets: list[TargetSpec] = Field(default_factory=list)


class ScheduleSpec(_Strict):
    name: Literal["constant", "exponential_decay", "cosine_decay"] = "constant"
    decay_rate: float = Field(0.1, gt=0, description="exponential_decay: factor reached after transition_steps")
    transition_steps: int = Field(100, ge=1)
    alpha: float = Field(0.0, ge=0, description="cosine_decay: final fraction")


class OptimizerSpec(_Strict):
    name: str = Field("adam", description="an optax optimiser name, e.g. adam, adamw, sgd")
    learning_rate: float = Field(1e-3, gt=0)
    params: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments, e.g. b1, b2")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    clip_norm: Optional[float] = Field(None, gt=0, description="global gradient-norm clipping")


class ExpSettings(_Strict):
    """Settings of the DiffTRe (EXP) part, shared by the exp, sequential and fused trainers."""
    reuse_threshold: float = Field(0.9, ge=0, le=1,
                                   description="regenerate a trajectory when N_eff/N falls below this (1.0: every update)")
    reweight_batch: int = Field(8, ge=1, description="frames per vectorised chunk when reweighting")
    max_failures: int = Field(3, ge=0, description="MD failures tolerated before the run stops")
    lr_reduction_on_failure: float = Field(0.5, gt=0, le=1)


class ExpTrainerSpec(ExpSettings):
    """EXP only: DiffTRe from the spec's potential."""
    kind: Literal["exp"] = "exp"
    updates: int = Field(..., ge=1, description="number of DiffTRe updates")


class DFTTrainerSpec(_Strict):
    """DFT only: the `dft` section's data and training settings."""
    kind: Literal["dft"] = "dft"


class SequentialTrainerSpec(ExpSettings):
    """DFT pre-training (or `pretrained`), then EXP only."""
    kind: Literal["sequential"] = "sequential"
    updates: int = Field(..., ge=1, description="number of DiffTRe updates after pre-training")
    pretrained: Optional[str] = Field(None, description="run folder or .npz of DFT-trained parameters (relative to "
                                                        "the spec); default: pre-train with the `dft` section")
    energy_shift: bool = Field(True, description="report test errors with the mean per-atom energy shift removed")


class SelectionSpec(_Strict):
    """Model selection / early stopping on c = dft_weight · DFT validation loss + exp_weight · EXP loss."""
    dft_weight: float = Field(1.0, ge=0)
    exp_weight: float = Field(1.0, ge=0)
    patience: Optional[int] = Field(None, ge=1, description="stop after this many epochs without improvement")


class FusedTrainerSpec(ExpSettings):
    """Alternate DFT and EXP training, starting from a DFT pre-trained model.

    switching "epoch": one DFT epoch then one EXP update per fused epoch (the paper);
    "batch": one EXP update after every `switch_every` DFT batches."""
    kind: Literal["fused"] = "fused"
    epochs: int = Field(..., ge=1, description="fused epochs")
    pretrained: Optional[str] = Field(None, description="run folder or .npz of DFT-trained parameters; default: "
                                                        "pre-train with the `dft` section")
    switching: Literal["epoch", "batch"] = "epoch"
    switch_every: int = Field(10, ge=1, description="DFT batches between EXP updates (switching: batch)")
    optimizer_states: Literal["separate", "shared"] = Field(
        "separate", description="separate optax states for the DFT and EXP steps (paper), or one shared state "
                                "(then `optimizer` drives both)")
    dft_optimizer: Optional["OptimizerSpec"] = Field(None, description="optimiser of the DFT steps during fusion "
                                                                       "(default: dft.train settings)")
    selection: SelectionSpec = Field(default_factory=SelectionSpec)


TrainerSpec = Annotated[Union[ExpTrainerSpec, DFTTrainerSpec, SequentialTrainerSpec, FusedTrainerSpec],
                        Field(discriminator="kind")]


class DFTDataSpec(_Strict):
    paths: list[str] = Field(..., min_length=1, description="DeePMD system folders or ASE-readable files (relative "
                                                            "to the spec)")
    exclude: list[str] = Field(default_factory=list, description="glob patterns of systems/files to drop")
    max_force: Optional[float] = Field(None, gt=0, description="drop configurations with an atom force above this (eV/Å)")
    energy_per_atom: Optional[tuple[Optional[float], Optional[float]]] = Field(
        None, description="keep configurations with energy per atom in [lo, hi] eV/atom")
    energy_unit: str = "eV"
    length_unit: str = "A"
    split: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="train/validation/test fractions")
    split_seed: int = 0
    max_samples: Optional[int] = Field(None, ge=1, description="use at most this many configurations (quick runs)")


class DFTSpec(_Strict):
    data: DFTDataSpec
    train: dict[str, Any] = Field(default_factory=dict, description="DFT trainer settings (see docs/dft_training.md)")


class EvaluationTaskSpec(_Strict):
    name: str = Field(..., description="evaluation plugin name (see `fusepot plugins`)")
    id: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_.-]+$",
                              description="section id and report sub-folder (default: the plugin name); "
                                          "needed when one plugin appears twice")
    params: dict[str, Any] = Field(default_factory=dict, description="parameters validated by the plugin's own model")

    @property
    def key(self) -> str:
        return self.id or self.name


class EvaluationSpec(_Strict):
    """What `fusepot evaluate` computes: a list of report sections (evaluation plugins)."""
    title: str = "fusepot evaluation report"
    seed: int = 0
    n_blocks: int = Field(10, ge=2, description="blocks for block-average error bars")
    tasks: list[EvaluationTaskSpec] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _unique(self):
        keys = [t.key for t in self.tasks]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"task ids must be unique; repeated: {dup} (give the repeats an `id`)")
        return self


class ExperimentSpec(_Strict):
    name: str = "run"
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float32"
    output: str = Field("runs/run", description="output folder (relative to the working directory)")
    system: SystemSpec
    potential: PluginRef
    prior: Optional[PluginRef] = Field(None, description="fixed prior potential added to the trained one")
    state_points: list[StatePointSpec] = Field(default_factory=list)
    dft: Optional[DFTSpec] = Field(None, description="DFT data and training (trainer kinds dft, sequential, fused)")
    trainer: TrainerSpec
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    progress_every_s: float = Field(5.0, gt=0, description="seconds between progress lines")
    evaluation: Optional[EvaluationSpec] = Field(None, description="report written to <output>/report after "
                                                                   "training (see `fusepot evaluate`)")

    @model_validator(mode="after")
    def _consistent(self):
        names = [s.name for s in self.state_points]
        if len(set(names)) != len(names):
            raise ValueError(f"state point names must be unique, got {names}")
        kind = self.trainer.kind
        if kind != "dft" and not self.state_points:
            raise ValueError(f"trainer.kind {kind!r} needs at least one entry in state_points")
        needs_dft = kind == "dft" or (kind in ("sequential", "fused") and (kind == "fused" or not self.trainer.pretrained))
        if needs_dft and self.dft is None:
            raise ValueError(f"trainer.kind {kind!r} needs the `dft` section (data and training settings)")
        return self


def _fmt_loc(loc) -> str:
    return ".".join(str(x) for x in loc)


def _format_validation(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in exc.errors():
        loc = _fmt_loc(((prefix,) if prefix else ()) + tuple(e["loc"]))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here)"
        lines.append(f"  {loc or '<root>'}: {msg}" + (f" (got {e['input']!r})" if e["type"] not in ("extra_forbidden", "missing") and not isinstance(e.get("input"), dict) else ""))
    return "\n".join(lines)


def _component_errors(pm: PluginManager, kind: str, name: str, params: dict, path: str) -> list[str]:
    """Errors of one plugin reference: unknown name, or params its own model refuses."""
    try:
        comp = pm.get(kind, name)
    except KeyError as exc:
        return [f"  {path}.name: {exc.args[0]}"]
    try:
        comp.params.model_validate(params)
    except ValidationError as exc:
        return [_format_validation(exc, f"{path}.params")]
    return []


def _validate_plugin_params(spec: ExperimentSpec, pm: PluginManager) -> None:
    errors = []

    def check(kind, ref: PluginRef, path: str):
        errors.extend(_component_errors(pm, kind, ref.name, ref.params, path))

    check("potential", spec.potential, "potential")
    if spec.dft is not None:
        from .trainers.dft import DFTTrainConfig

        try:
            DFTTrainConfig.model_validate(spec.dft.train)
        except ValidationError as exc:
            errors.append(_format_validation(exc, "dft.train"))
        for k, u in (("energy_unit", spec.dft.data.energy_unit), ("length_unit", spec.dft.data.length_unit)):
            try:
                units.canonical(u)
            except ValueError as exc:
                errors.append(f"  dft.data.{k}: {exc}")
    if spec.prior is not None:
        check("potential", spec.prior, "prior")
    if spec.evaluation is not None:
        errors.extend(evaluation_param_errors(spec.evaluation, pm, "evaluation"))
    for i, sp in enumerate(spec.state_points):
        check("ensemble", sp.ensemble, f"state_points.{i}.ensemble")
        for j, t in enumerate(sp.targets):
            path = f"state_points.{i}.targets.{j}.observable"
            check("observable", t.observable, path)
            try:
                comp = pm.get("observable", t.observable.name)
            except KeyError:
                continue
            if not comp.cls.reweightable:
                errors.append(f"  {path}.name: {t.observable.name!r} is evaluation-only (a time-correlation "
                              f"observable) and cannot be a DiffTRe target")
                continue
            try:
                units.convert(1.0, t.unit, comp.cls.unit)
            except ValueError as exc:
                errors.append(f"  state_points.{i}.targets.{j}.unit: {exc}")
    if errors:
        raise SpecError("invalid spec:\n" + "\n".join(errors))


def evaluation_param_errors(ev: EvaluationSpec, pm: PluginManager, prefix: str = "") -> list[str]:
    errors = []
    for i, t in enumerate(ev.tasks):
        errors += _component_errors(pm, "evaluation", t.name, t.params, f"{prefix + '.' if prefix else ''}tasks.{i}")
    return errors


def parse_evaluation(data, pm: PluginManager | None = None, source: str = "<evaluation>") -> EvaluationSpec:
    """Validate an evaluation config (a mapping with `tasks`, or a training spec's `evaluation`)."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the evaluation config must be a YAML mapping at the top level")
    pm = pm or get_plugin_manager()
    try:
        ev = EvaluationSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"invalid evaluation config {source}:\n" + _format_validation(exc)) from None
    errors = evaluation_param_errors(ev, pm)
    if errors:
        raise SpecError(f"invalid evaluation config {source}:\n" + "\n".join(errors))
    return ev


def _raw_plugin_errors(data: dict, pm: PluginManager) -> list[str]:
    """Best-effort plugin-parameter checks on a raw spec that failed the core validation, so that
    one run of `fusepot validate` reports every problem it can find."""
    errors = []

    def check(kind, ref, path):
        if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
            return
        try:
            comp = pm.get(kind, ref["name"])
        except KeyError as exc:
            errors.append(f"  {path}.name: {exc.args[0]}")
            return
        try:
            comp.params.model_validate(ref.get("params") or {})
        except ValidationError as exc:
            errors.append(_format_validation(exc, f"{path}.params"))

    check("potential", data.get("potential"), "potential")
    check("potential", data.get("prior"), "prior")
    sps = data.get("state_points")
    for i, sp in enumerate(sps if isinstance(sps, list) else []):
        if not isinstance(sp, dict):
            continue
        check("ensemble", sp.get("ensemble"), f"state_points.{i}.ensemble")
        ts = sp.get("targets")
        for j, t in enumerate(ts if isinstance(ts, list) else []):
            if isinstance(t, dict):
                check("observable", t.get("observable"), f"state_points.{i}.targets.{j}.observable")
    return errors


def parse_spec(data: dict, pm: PluginManager | None = None, source: str = "<spec>") -> ExperimentSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a YAML mapping at the top level")
    pm = pm or get_plugin_manager()
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        lines = [_format_validation(exc)] + _raw_plugin_errors(data, pm)
        raise SpecError(f"invalid spec {source}:\n" + "\n".join(lines)) from None
    try:
        _validate_plugin_params(spec, pm)
    except SpecError as exc:
        raise SpecError(str(exc).replace("invalid spec:", f"invalid spec {source}:", 1)) from None
    return spec


def load_spec(path, pm: PluginManager | None = None) -> ExperimentSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    return parse_spec(data, pm, str(path))


def json_schema() -> dict:
    """JSON schema of the spec (plugin parameter blocks are free-form here; `fusepot plugins`
    lists each plugin's own schema)."""
    return ExperimentSpec.model_json_schema()
