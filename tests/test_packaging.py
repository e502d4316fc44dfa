"""Packaging: every package is listed in pyproject, and a built wheel imports and finds the built-ins."""
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for top, name in (("core", "fusepot.core"), ("plugins", "fusepot.plugins")):
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / top).parts
            found.add(".".join((name,) + rel))
    assert found == listed, f"missing from pyproject: {found - listed}; stale: {listed - found}"


def test_built_wheel_imports_and_finds_plugins(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(REPO)], check=True)
    (wheel,) = wheels.glob("fusepot-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], check=True)
    # -S: no site-packages .pth processing, so the editable install of the checkout is invisible;
    # dependencies come from the interpreter's site-packages placed *after* the wheel's folder.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]]))
    code = ("import fusepot.core, fusepot.plugins.classical as c; from fusepot.core.plugins import get_plugin_manager;"
            "pm = get_plugin_manager(); print(c.__file__); print(sorted(pm.names('potential')), sorted(pm.names('ensemble')))")
    out = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()[:2]
    assert first.startswith(str(site)), f"imported from {first}, not from the wheel"
    assert "lennard_jones" in second and "nvt_langevin" in second
