"""Produce the teacher's targets for spec.yaml: run the teacher potential at the spec's state
point and print ⟨P⟩ (GPa) and ⟨U⟩/N (eV/atom) with block-average error bars.

    python teacher.py [spec.yaml] [--write]   (--write updates the target values in the spec)
"""
from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import yaml

from fusepot.core import difftre
from fusepot.core.build import build_ensemble, build_system, build_targets, state_configuration, state_point
from fusepot.core.plugins import BuildContext, get_plugin_manager
from fusepot.core.spec import load_spec
from fusepot.core.stats import block_average

TEACHER = {"epsilon": 0.0104, "sigma": 3.40, "cutoff": 2.5}


def teacher_targets(spec_path: Path, production_ps: float | None = None, seed: int = 123) -> dict:
    spec = load_spec(spec_path)
    jax.config.update("jax_enable_x64", spec.dtype == "float64")
    dtype = jax.numpy.float64 if spec.dtype == "float64" else jax.numpy.float32
    system = build_system(spec, spec_path.parent, dtype)
    pot = get_plugin_manager().build("potential", "lennard_jones", TEACHER, BuildContext(species=system.species, dtype=dtype))
    out = {}
    for i, sp in enumerate(spec.state_points):
        if production_ps is not None:
            sp = sp.model_copy(update={"ensemble": sp.ensemble.model_copy(update={"params": {**sp.ensemble.params, "production_ps": production_ps}})})
        ens = build_ensemble(sp, i, spec_path.parent, dtype)
        conf = state_configuration(spec, sp, system, spec_path.parent, dtype)
        traj, _ = ens.sample(pot, conf, system.masses, state_point(sp), jax.random.PRNGKey(seed))
        targets = build_targets(sp, i, system.species, spec_path.parent, dtype)
        _, vals, _ = difftre.evaluate_frames(pot, traj, {t.name: t.observable for t in targets})
        out[sp.name] = {}
        for t in targets:
            est = block_average(np.asarray(t.observable.to_user(vals[t.name])))
            out[sp.name][t.name] = (float(est.mean), float(est.error))
    return out


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else Path(__file__).with_name("spec.yaml")
    res = teacher_targets(path)
    for sp, d in res.items():
        for name, (m, e) in d.items():
            print(f"{sp} {name}: {m:.6f} ± {e:.6f}")
    if "--write" in sys.argv:
        data = yaml.safe_load(path.read_text())
        for sp in data["state_points"]:
            for t in sp["targets"]:
                t["value"] = round(res[sp["name"]][t.get("name") or t["observable"]["name"]][0], 6)
        print("updated values (copy them into the spec):", yaml.safe_dump(data["state_points"], sort_keys=False))
