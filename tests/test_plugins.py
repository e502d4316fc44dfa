"""Plugin manager: built-ins via entry points, validation errors, a real third-party package."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from fusepot.core.interfaces import Observable, Potential
from fusepot.core.plugins import Component, PluginError, PluginManager, get_plugin_manager, hookimpl


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Obs(Observable):
    def per_frame(self, potential, frame, nbrs):
        return 0.0


def test_builtins_registered_through_entry_points():
    pm = get_plugin_manager()
    assert {"lennard_jones", "eam"} <= set(pm.names("potential"))
    assert "nvt_langevin" in pm.names("ensemble")
    assert {"pressure", "energy_per_atom"} <= set(pm.names("observable"))
    assert pm.get("potential", "lennard_jones").package == "fusepot"


def _plugin(comps, hook="fusepot_observables"):
    class Plugin:
        pass

    setattr(Plugin, hook, staticmethod(hookimpl(lambda: comps)))
    return Plugin()


def test_duplicate_name_is_rejected_naming_both_packages():
    pm = PluginManager(load_entry_points=False)
    pm.register(_plugin([Component("thing", _Obs, _P, lambda p, c: _Obs())]), package="pkg_a")
    with pytest.raises(PluginError, match=r"duplicate name.*pkg_a") as e:
        pm.register(_plugin([Component("thing", _Obs, _P, lambda p, c: _Obs())]), package="pkg_b")
    assert "pkg_b" in str(e.value)


def test_class_not_satisfying_interface_is_rejected():
    pm = PluginManager(load_entry_points=False)
    with pytest.raises(PluginError, match="does not subclass .*Observable"):
        pm.register(_plugin([Component("bad", dict, _P, lambda p, c: None)]), package="pkg_bad")

    class Abstract(Potential):  # leaves energy/cutoff unimplemented
        pass

    with pytest.raises(PluginError, match="abstract method"):
        pm.register(_plugin([Component("abs", Abstract, _P, lambda p, c: None)], "fusepot_potentials"), package="pkg_abs")


def test_params_model_must_forbid_unknown_keys():
    class Loose(BaseModel):
        x: int = 1

    pm = PluginManager(load_entry_points=False)
    with pytest.raises(PluginError, match="extra='forbid'"):
        pm.register(_plugin([Component("loose", _Obs, Loose, lambda p, c: _Obs())]), package="pkg")


def test_wrong_hook_signature_and_unknown_hook():
    pm = PluginManager(load_entry_points=False)

    class WrongSig:
        @hookimpl
        def fusepot_observables(self, unexpected_argument):
            return []

    with pytest.raises(PluginError, match="invalid hook"):
        pm.register(WrongSig(), package="pkg_sig")

    class Typo:
        @hookimpl
        def fusepot_observable(self):
            return []

    with pytest.raises(PluginError, match="unknown hook 'fusepot_observable'"):
        pm.register(Typo(), package="pkg_typo")


def test_build_validates_params_with_plugin_model():
    pm = get_plugin_manager()
    with pytest.raises(Exception, match="extra|not permitted"):
        pm.build("potential", "lennard_jones", {"epsilon": 1, "sigma": 1, "bogus": 3})
    with pytest.raises(KeyError, match="available"):
        pm.get("observable", "no_such_thing")


THIRD_PARTY = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "fusepot-volume-plugin"
        version = "0.1"
        [project.entry-points.fusepot]
        volume = "fusepot_volume_plugin"
        [tool.setuptools]
        py-modules = ["fusepot_volume_plugin"]
    """,
    "fusepot_volume_plugin.py": '''
        """A third-party fusepot plugin: volume per atom (Å³/atom) as a reweightable observable."""
        import jax.numpy as jnp
        from pydantic import BaseModel, ConfigDict
        from fusepot.core.interfaces import Observable
        from fusepot.core.plugins import Component, hookimpl

        class VolumePerAtom(Observable):
            unit = "1"
            def per_frame(self, potential, frame, nbrs):
                return frame.conf.volume() / jnp.sum(frame.conf.mask)

        class Params(BaseModel):
            model_config = ConfigDict(extra="forbid")

        @hookimpl
        def fusepot_observables():
            return [Component("volume_per_atom", VolumePerAtom, Params, lambda p, c: VolumePerAtom(),
                              "volume per atom")]
    ''',
}


def test_third_party_package_is_found_and_used_in_a_run(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, text in THIRD_PARTY.items():
        (src / name).write_text(textwrap.dedent(text))
    site = tmp_path / "site"
    wheel_dir = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir),
                    str(src)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    *map(str, wheel_dir.glob("*.whl"))], check=True)
    env = dict(os.environ, PYTHONPATH=str(site) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "fusepot.core.cli", "plugins"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "volume_per_atom" in out.stdout and "fusepot-volume-plugin" in out.stdout
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent("""
        seed: 0
        dtype: float64
        system: {crystal: {element: Ar, structure: fcc, a: 5.26, cubic: true}}
        potential: {name: lennard_jones, params: {epsilon: 0.0104, sigma: 3.4}}
        state_points:
          - name: cold
            temperature: 30
            ensemble: {name: nvt_langevin, params: {timestep_fs: 5, production_ps: 0.5, sample_every_ps: 0.1}}
            targets:
              - observable: {name: volume_per_atom}
                value: 36.0
                unit: "1"
                weight: 1.0
        trainer: {kind: exp, updates: 1}
    """))
    out = subprocess.run([sys.executable, "-m", "fusepot.core.cli", "run", str(spec), "--out", str(tmp_path / "run"), "--quiet"],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"volume_per_atom"' in metrics
    # 4 atoms in a 5.26 Å cubic cell: 36.38 Å³/atom
    assert "36.38" in metrics
