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
    ens = get_plugin_manager().build("ensemble", "nvt_langevin", {
        "timestep_fs": 5.0, "production_ps": production_ps, "equilibration_ps": 0.5, "sample_every_ps": 0.1,
        "friction_per_ps": 2.0})
    traj, carry = ens.sample(potential, conf, masses, StatePoint(temperature), jax.random.PRNGKey(seed))
    return traj
