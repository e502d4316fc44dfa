"""The `fusepot` command line.

Exit codes: 0 success, 1 a run failed (e.g. MD kept exploding), 2 bad input (spec, dataset,
checkpoint, flag) with a one-paragraph message; `--debug` shows tracebacks.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__


class UsageError(Exception):
    """Bad input: exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"fusepot: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fusepot", description="Train interatomic potentials on DFT data and experimental observables.")
    p.add_argument("--version", action="version", version=f"fusepot {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("plugins", help="list potentials, ensembles and observables and the package providing each")
    v = sub.add_parser("validate", help="validate a spec file")
    v.add_argument("spec")
    s = sub.add_parser("schema", help="write the spec's JSON schema")
    s.add_argument("-o", "--output", help="file to write (default: stdout)")
    r = sub.add_parser("run", help="run a spec")
    r.add_argument("spec")
    r.add_argument("--out", help="output folder (overrides the spec's `output`)")
    r.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output folder")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    e = sub.add_parser("evaluate", help="evaluate trained run(s) and write a report folder (Markdown, JSON/CSV, PNG)")
    e.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folder(s) written by `fusepot run`; several are "
                                                              "compared side by side")
    e.add_argument("--config", help="evaluation config (YAML with `tasks`); default: the first run's spec "
                                    "`evaluation` section")
    e.add_argument("--out", help="report folder (default: RUN_DIR/report for one run; required for several)")
    e.add_argument("--label", action="append", help="label of each run in tables and plots (repeat, in order)")
    e.add_argument("--only", action="append", help="run only the task with this id (repeatable)")
    e.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_data_parser(sub)
    return p


def _cmd_plugins(args) -> int:
    from .plugins import get_plugin_manager

    pm = get_plugin_manager()
    rows = [(c.kind, c.name, c.package, c.description) for c in pm.components()]
    w = [max(len(r[i]) for r in rows + [("kind", "name", "package", "")]) for i in range(3)]
    print(f"{'kind':<{w[0]}}  {'name':<{w[1]}}  {'package':<{w[2]}}  description")
    for r in rows:
        print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}")
    return 0


def _cmd_validate(args) -> int:
    from .spec import load_spec

    spec = load_spec(args.spec)
    print(f"{args.spec}: valid ({spec.trainer.kind} trainer, {len(spec.state_points)} state point(s))")
    return 0


def _cmd_schema(args) -> int:
    from .plugins import get_plugin_manager
    from .spec import json_schema

    schema = json_schema()
    schema["x-fusepot-plugins"] = {
        c.kind + ":" + c.name: c.params.model_json_schema() for c in get_plugin_manager().components()}
    text = json.dumps(schema, indent=2)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0


def _cmd_run(args) -> int:
    import yaml

    from .checkpoint import CheckpointError
    from .progress import Progress
    from .spec import load_spec

    spec_path = Path(args.spec)
    spec = load_spec(spec_path)
    out = Path(args.out or spec.output)
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise UsageError(f"output folder {out} is not empty; use --resume to continue it or choose another --out "
                         f"(nothing was overwritten)")
    if args.resume and (out / "spec.resolved.yaml").exists():
        old = yaml.safe_load((out / "spec.resolved.yaml").read_text())
        new = spec.model_dump(mode="json")
        old.pop("output", None), new.pop("output", None)
        if old != new:
            raise UsageError(f"--resume: {spec_path} differs from the spec the run in {out} was started with "
                             f"({out / 'spec.resolved.yaml'}); resume with the same spec")
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.resolved.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    from .checkpoint import save_json

    save_json(out / "run_info.json", {"spec_path": str(spec_path.resolve()), "spec_dir": str(spec_path.parent.resolve()),
                                      "fusepot_version": __version__})
    progress = Progress(spec.progress_every_s, enabled=not args.quiet)
    from .trainers import run_spec

    try:
        result = run_spec(spec, spec_path.parent, out, progress, resume=args.resume)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from exc
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    progress.line(f"done; results in {out}")
    if spec.evaluation is not None:
        from .evaluation import evaluate, load_models

        report = out / "report"
        if args.resume and report.exists():
            raise UsageError(f"{report} exists from an earlier finished run; remove it or run `fusepot evaluate {out} "
                             f"--out OTHER` (training is complete, nothing was overwritten)")
        result = evaluate(load_models([out]), spec.evaluation, spec_path.parent, report, progress)
        return _report_status(result, report, progress)
    return 0


def _report_status(result: dict, report: Path, progress) -> int:
    failed = [t["id"] for t in result["tasks"] if t["status"] != "ok"]
    if failed:
        print(f"fusepot: evaluation task(s) {failed} failed; see {report}/<id>/error.txt; the other sections are in "
              f"{report}/report.md", file=sys.stderr)
        return 1
    progress.line(f"report: {report / 'report.md'}")
    return 0


def _cmd_evaluate(args) -> int:
    import yaml

    from .evaluation import evaluate, load_models
    from .progress import Progress
    from .spec import SpecError, parse_evaluation

    models = load_models(args.runs, args.label)
    if args.config:
        cfg = Path(args.config)
        if not cfg.is_file():
            raise UsageError(f"--config: {cfg} not found")
        try:
            data = yaml.safe_load(cfg.read_text())
        except yaml.YAMLError as exc:
            raise SpecError(f"{cfg}: not valid YAML: {exc}") from None
        config, config_dir = parse_evaluation(data, source=str(cfg)), cfg.parent
    else:
        run = models[0].run
        if run.spec.evaluation is None:
            raise UsageError(f"{args.runs[0]}: its spec has no `evaluation` section; give --config FILE")
        config, config_dir = run.spec.evaluation, run.spec_dir
    if args.out:
        out = Path(args.out)
    elif len(args.runs) == 1:
        out = Path(args.runs[0]) / "report"
    else:
        raise UsageError("several run folders: give the report folder with --out")
    progress = Progress(5.0, enabled=not args.quiet)
    result = evaluate(models, config, config_dir, out, progress, only=args.only)
    return _report_status(result, out, progress)


def _add_data_parser(sub) -> None:
    d = sub.add_parser("data", help="fetch published datasets (`fusepot data fetch SOURCE_YAML --out DIR`)")
    actions = d.add_subparsers(dest="data_action", required=True, parser_class=_Parser)
    f = actions.add_parser("fetch", help="download a dataset described by a source YAML, verify its SHA-256 and "
                                         "convert it into DeePMD npy systems (eV, Å)")
    f.add_argument("source", metavar="SOURCE_YAML", help="dataset source description (url, sha256, convert recipe)")
    f.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    f.add_argument("--from-file", metavar="ARCHIVE", help="use this local copy of the archive instead of downloading")
    f.add_argument("--sha256", metavar="HEX", help="expected SHA-256 of the archive (overrides the source's value)")
    f.add_argument("--no-verify", action="store_true",
                   help="accept an archive whose SHA-256 is unknown (warns; the actual hash is recorded)")
    f.add_argument("--keep-archive", action="store_true", help="also keep the verified archive in OUT/archive/")
    f.add_argument("--quiet", action="store_true", help="no progress lines")


def _cmd_data(args) -> int:
    from .fetch import fetch, load_source

    if args.data_action == "fetch":
        fetch(load_source(args.source), args.out, from_file=args.from_file, sha256=args.sha256,
              no_verify=args.no_verify, keep_archive=args.keep_archive, quiet=args.quiet)
        return 0
    raise UsageError(f"unknown data action {args.data_action!r}")


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[fusepot] %(levelname)s %(name)s: %(message)s")
    from .checkpoint import CheckpointError
    from .datasets import DatasetError
    from .plugins import PluginError
    from .spec import SpecError

    handlers = {"plugins": _cmd_plugins, "validate": _cmd_validate, "schema": _cmd_schema, "run": _cmd_run,
                "evaluate": _cmd_evaluate}
    handlers["data"] = _cmd_data
    try:
        return handlers[args.command](args)
    except (UsageError, SpecError, PluginError, DatasetError, CheckpointError) as exc:
        if args.debug:
            raise
        print(f"fusepot: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fusepot: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001
        if args.debug:
            raise
        print(f"fusepot: {args.command} failed: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
