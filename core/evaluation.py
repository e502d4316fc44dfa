"""`fusepot evaluate`: run evaluation tasks on one or more trained models, write a report folder.

A report is a list of sections; each section is an evaluation plugin (`fusepot_evaluations`
hook, interface `core.interfaces.EvaluationTask`) named in an evaluation config:

    title: Titanium, quick
    seed: 0
    tasks:
      - name: dft_errors
      - name: elastic_vs_temperature
        params: {experiment: ../data/experimental/hcp_elastic_constants.csv, ...}
      - name: elastic_vs_temperature          # the same plugin twice needs an id
        id: bcc_1273K
        params: {...}

Every task receives all models at once (side-by-side comparison of e.g. DFT-only, sequential
and fused runs).  The report folder holds

    report.md          Markdown summary: the runs, then one section per task
    report.json        runs, per-task metrics, status and wall time
    <task id>/         the task's own CSV/JSON data and PNG plots
    <task id>/error.txt   traceback of a task that failed (the other tasks still run)

report.md and report.json are rewritten after every task, so a long evaluation shows what it
has so far.  Relative paths in task params resolve against the config's folder.
Core knows nothing of any element or observable: the tasks are plugins.
"""
from __future__ import annotations

import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
import numpy as np

from .build import TrainedRun, load_run
from .checkpoint import atomic_write
from .plugins import BuildContext, PluginManager, get_plugin_manager
from .progress import Progress
from .spec import EvaluationSpec

log = logging.getLogger("fusepot.evaluate")


@dataclass
class EvalModel:
    """One trained model under evaluation (a run folder, or a potential built in code)."""

    label: str
    potential: Any  # core.interfaces.Potential
    species: list[str]
    dtype: Any
    run: Optional[TrainedRun] = None

    @classmethod
    def from_run(cls, run_dir, label: Optional[str] = None, checkpoint: str = "final_potential.npz") -> "EvalModel":
        run = load_run(run_dir, checkpoint=checkpoint)
        return cls(label or run.spec.name or Path(run_dir).name, run.potential, run.species, run.dtype, run)

    def calculator(self, skin: float = 0.5):
        """An ASE calculator (energy, forces, stress) for this model."""
        from .calculator import FusepotCalculator

        return FusepotCalculator(self.potential, self.species, skin=skin, dtype=self.dtype)

    def masses(self) -> np.ndarray:
        """Atomic masses (amu) per species index (ASE's standard values)."""
        from ase.data import atomic_masses, atomic_numbers

        return np.array([atomic_masses[atomic_numbers[s]] for s in self.species])


@dataclass
class TaskContext:
    """What a task gets besides its parameters."""

    out_dir: Path  # the task's own folder inside the report (exists)
    config_dir: Path  # relative paths in params resolve here
    progress: Progress
    seed: int = 0
    n_blocks: int = 10

    def path(self, p) -> Path:
        p = Path(p)
        return p if p.is_absolute() else (self.config_dir / p)

    def key(self, *salt: int):
        k = jax.random.PRNGKey(self.seed)
        for s in salt:
            k = jax.random.fold_in(k, int(s))
        return k


@dataclass
class TaskReport:
    """A task's result: Markdown for the report section, JSON-able numbers, files it wrote."""

    markdown: str
    metrics: dict = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # relative to the task's folder


@dataclass(frozen=True)
class Table:
    """Columns by name (numeric columns as float arrays, others as str arrays) and header metadata."""

    columns: dict[str, np.ndarray]
    meta: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.columns[name]
        except KeyError:
            raise KeyError(f"{self.source or 'table'}: no column {name!r}; columns are {list(self.columns)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def rows(self, keep) -> "Table":
        return Table({k: v[keep] for k, v in self.columns.items()}, self.meta, self.source)


def read_table(path) -> Table:
    """Read a commented CSV: `# key: value` lines (title, citation, doi, units, notes), then a
    header row and data rows.  Units belong in the column names (T_K, C11_GPa, a_A).
    Raises ValueError naming the file and line for ragged rows."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table {path} not found")
    meta, lines = {}, []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            meta[key.strip()] = value.strip()
        elif line.strip():
            lines.append(line)
    if not lines:
        raise ValueError(f"{path}: no header row")
    rows = list(csv.reader(lines))
    names, body = rows[0], rows[1:]
    for i, r in enumerate(body):
        if len(r) != len(names):
            raise ValueError(f"{path}: data row {i + 1} has {len(r)} fields, the header has {len(names)}")
    cols = {}
    for j, name in enumerate(names):
        raw = [r[j] for r in body]
        try:
            cols[name] = np.array([float(x) for x in raw])
        except ValueError:
            cols[name] = np.array(raw, dtype=str)
    return Table(cols, meta, str(path))


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    """Rows of dicts → CSV (columns in first-seen order), written atomically."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]

    def fmt(v):
        if v is None:
            return ""
        if isinstance(v, (float, np.floating)):
            return repr(float(v))
        return str(v)

    text = ",".join(cols) + "\n" + "".join(",".join(fmt(r.get(c)) for c in cols) + "\n" for r in rows)
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.4g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray) or isinstance(o, jax.Array):
        return np.asarray(o).tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


class ReportWriter:
    def __init__(self, out: Path, config: EvaluationSpec, models: list[EvalModel]):
        self.out, self.config, self.models = out, config, models
        self.sections: list[dict] = []

    def add(self, key: str, title: str, status: str, wall_s: float, report: Optional[TaskReport], error: str = ""):
        self.sections.append(dict(id=key, title=title, status=status, wall_s=round(wall_s, 2),
                                  metrics=report.metrics if report else {}, files=report.files if report else [],
                                  markdown=report.markdown if report else "", error=error))
        self.flush()

    def flush(self):
        runs = [dict(label=m.label, run_dir=str(m.run.run_dir) if m.run else None,
                     trainer=m.run.spec.trainer.kind if m.run else None,
                     potential=m.run.spec.potential.name if m.run else type(m.potential).__name__)
                for m in self.models]
        data = dict(title=self.config.title, created=time.strftime("%Y-%m-%d %H:%M:%S"), runs=runs,
                    tasks=[{k: v for k, v in s.items() if k != "markdown"} for s in self.sections])
        text = json.dumps(data, indent=2, default=_jsonable)
        atomic_write(self.out / "report.json", lambda f: f.write(text.encode()))
        md = [f"# {self.config.title}", "", f"Generated by `fusepot evaluate` on {data['created']}.", "",
              "## Models", "",
              markdown_table(["label", "run folder", "trainer", "potential"],
                             [[r["label"], r["run_dir"] or "-", r["trainer"] or "-", r["potential"]] for r in runs]),
              ""]
        for s in self.sections:
            md += [f"## {s['title']}", ""]
            if s["status"] != "ok":
                md += [f"**Failed** after {s['wall_s']} s: `{s['error']}` (traceback in `{s['id']}/error.txt`).", ""]
                continue
            md += [s["markdown"].strip(), ""]
            pngs = [f for f in s["files"] if f.endswith(".png")]
            md += [f"![{s['id']}: {Path(f).stem}]({s['id']}/{f})" for f in pngs]
            md += ["", f"_{s['id']}: {s['wall_s']} s; data in `{s['id']}/`_", ""]
        text_md = "\n".join(md).rstrip() + "\n"
        atomic_write(self.out / "report.md", lambda f: f.write(text_md.encode()))


def evaluate(models: list[EvalModel], config: EvaluationSpec, config_dir, out_dir, progress: Optional[Progress] = None,
             only: Optional[Sequence[str]] = None, pm: Optional[PluginManager] = None) -> dict:
    """Run the config's tasks (or those with ids in `only`) on `models`; write the report folder.

    Refuses a non-empty `out_dir` (nothing is overwritten).  A failing task is recorded (status,
    message, traceback file) and the others still run.  Returns report.json's content.
    """
    from .cli import UsageError

    pm = pm or get_plugin_manager()
    progress = progress or Progress(enabled=False)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"report folder {out} is not empty; choose another --out (nothing was overwritten)")
    labels = [m.label for m in models]
    if len(set(labels)) != len(labels):
        raise UsageError(f"model labels must be unique, got {labels}; name them with --label")
    tasks = list(config.tasks)
    if only:
        unknown = sorted(set(only) - {t.key for t in tasks})
        if unknown:
            raise UsageError(f"--only: no task with id {unknown}; the config has {[t.key for t in tasks]}")
        tasks = [t for t in tasks if t.key in only]
    out.mkdir(parents=True, exist_ok=True)
    writer = ReportWriter(out, config, models)
    writer.flush()
    species = models[0].species if models else []
    for i, t in enumerate(tasks):
        comp = pm.get("evaluation", t.name)
        params = comp.params.model_validate(t.params)
        task = comp.build(params, BuildContext(species=species, spec_dir=str(config_dir)))
        title = getattr(task, "title", "") or t.key
        tdir = out / t.key
        tdir.mkdir(parents=True, exist_ok=True)
        ctx = TaskContext(tdir, Path(config_dir), progress, seed=config.seed, n_blocks=config.n_blocks)
        progress.line(f"evaluate [{i + 1}/{len(tasks)}] {t.key}: {title}")
        t0 = time.perf_counter()
        try:
            report = task.run(models, ctx)
            if not isinstance(report, TaskReport):
                raise TypeError(f"evaluation plugin {t.name!r} returned {type(report).__name__}, not a TaskReport")
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
            tb = traceback.format_exc()
            atomic_write(tdir / "error.txt", lambda f: f.write(tb.encode()))
            log.error("evaluation task %s failed: %s: %s", t.key, type(exc).__name__, exc)
            writer.add(t.key, title, "failed", time.perf_counter() - t0, None, f"{type(exc).__name__}: {exc}")
            continue
        missing = [f for f in report.files if not (tdir / f).is_file()]
        if missing:
            writer.add(t.key, title, "failed", time.perf_counter() - t0, report,
                       f"task reported files it did not write: {missing}")
            continue
        writer.add(t.key, title, "ok", time.perf_counter() - t0, report)
        progress.line(f"evaluate {t.key}: done in {time.perf_counter() - t0:.1f} s")
    return json.loads((out / "report.json").read_text())


def load_models(run_dirs: Sequence, labels: Optional[Sequence[str]] = None) -> list[EvalModel]:
    from .cli import UsageError

    if labels and len(labels) != len(run_dirs):
        raise UsageError(f"--label given {len(labels)} time(s) for {len(run_dirs)} run folder(s)")
    models = []
    for i, d in enumerate(run_dirs):
        if not Path(d).is_dir():
            raise UsageError(f"run folder {d} not found")
        models.append(EvalModel.from_run(d, label=labels[i] if labels else None))
    if not labels:  # default labels: spec names, made unique with the folder name
        names = [m.label for m in models]
        for m, d in zip(models, run_dirs):
            if names.count(m.label) > 1:
                m.label = f"{m.label} ({Path(d).name})"
    return models
