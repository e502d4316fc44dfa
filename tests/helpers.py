"""Small builders shared by the tests."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from ase.build import bulk

from fusepot.core.interfaces import StatePoint
from fusepot.core.plugins import BuildContext, get_plugin_manager
from fusepot.core.system import from_ase


def lj_argon(epsilon=0.0104, sigma=3.40, cutoff=2.5):
    return get_plugin_manager().build("potential", "lennard_jones",
                                      {"epsilon": epsilon, "sigma": sigma, "cutoff": cutoff}, BuildContext(species=["Ar"]))


def argon_fcc(reps=2, a=5.26):
    return from_ase(bulk("Ar", "fcc", a=a, cubic=True).repeat(reps))


def short_trajectory(potential, temperature=60.0, production_ps=2.0, seed=0, reps=2):
    conf, masses = argon_fcc(reps)
    # chunks of 5 frames = the equilibration: one compiled MD chunk for the whole run
    ens = get_plugin_manager().build("ensemble", "nvt_langevin", {
        "timestep_fs": 5.0, "production_ps": production_ps, "equilibration_ps": 0.5, "sample_every_ps": 0.1,
        "friction_per_ps": 2.0, "chunk_frames": 5})
    traj, carry = ens.sample(potential, conf, masses, StatePoint(temperature), jax.random.PRNGKey(seed))
    return traj


# a tiny LJ argon EXP spec and a fake finished run of it (for calculator/evaluation tests); its
# equilibration is as long as its production (10 frames each): one compiled MD chunk serves both
SMALL_RUN_SPEC = """
name: tiny
seed: 3
dtype: float64
system: {crystal: {element: Ar, structure: fcc, a: 5.26, cubic: true}}
potential: {name: lennard_jones, params: {epsilon: 0.0095, sigma: 3.35}}
state_points:
  - name: cold
    temperature: 40
    ensemble: {name: nvt_langevin, params: {timestep_fs: 5, production_ps: 1.0, equilibration_ps: 1.0, sample_every_ps: 0.1}}
    targets:
      - observable: {name: pressure}
        value: 0.1
        unit: GPa
        uncertainty: 0.01
trainer: {kind: exp, updates: 3, reuse_threshold: 0.95}
optimizer: {name: adam, learning_rate: 0.01}
"""


def make_run(run, spec_text=SMALL_RUN_SPEC, trained=None):
    """A run folder as `fusepot run` leaves it: spec.resolved.yaml + final_potential.npz."""
    import textwrap

    import yaml

    from fusepot.core.checkpoint import save_tree

    run.mkdir(parents=True)
    (run / "spec.resolved.yaml").write_text(yaml.safe_dump(yaml.safe_load(textwrap.dedent(spec_text))))
    # "trained" parameters differ from the spec's initial ones, so loading is visible
    save_tree(run / "final_potential.npz", trained or lj_argon(epsilon=0.0110, sigma=3.30))
    return run


def sigkill_after_checkpoint(cmd, meta, key: str, timeout_s: float = 600.0, poll_s: float = 0.05):
    """Start `cmd` (a `fusepot run` command line), wait until its checkpoint JSON `meta` holds
    `key` >= 1, kill it with SIGKILL and return the value of `key` at that moment."""
    import json
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd)
    t0 = time.time()
    while not (meta.exists() and json.loads(meta.read_text())[key] >= 1):
        assert proc.poll() is None and time.time() - t0 < timeout_s
        time.sleep(poll_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return json.loads(meta.read_text())[key]


def assert_same_final_parameters(run_a, run_b):
    """The two run folders' final_potential.npz hold the same arrays, bitwise."""
    import numpy as np

    a, b = np.load(run_a / "final_potential.npz"), np.load(run_b / "final_potential.npz")
    assert a.files == b.files
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])
