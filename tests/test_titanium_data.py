"""Titanium example data: the experimental tables (examples/titanium/data/experimental, loaded by
examples/titanium/scripts/expdata.py) and the committed CHGNet stand-in for the DFT set
(examples/titanium/data/dft_chgnet, read with fusepot.core.datasets)."""
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fusepot.core.datasets import read_dataset

REPO = Path(__file__).resolve().parents[1]
TI = REPO / "examples" / "titanium"
CHGNET = TI / "data" / "dft_chgnet"
TARGET_T = (23, 323, 623, 923)


def _load_expdata():
    spec = importlib.util.spec_from_file_location("ti_expdata", TI / "scripts" / "expdata.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


E = _load_expdata()


# ------------------------------------------------------------------------------------------
# experimental tables
# ------------------------------------------------------------------------------------------
def test_elastic_constants_22_temperatures_in_gpa():
    ec = E.elastic_constants()
    T = ec["T_K"]
    assert len(ec) == 22 and T[0] == 4 and T[-1] == 973 and np.all(np.diff(T) > 0)
    for k in E.ELASTIC_KEYS:
        assert np.all((ec[f"{k}_GPa"] > 20) & (ec[f"{k}_GPa"] < 250)), k  # GPa, not 1e12 dyn/cm² or Pa
    assert np.all(np.diff(ec["C11_GPa"]) <= 0) and np.all(np.diff(ec["C44_GPa"]) <= 0)  # soften with T
    assert "Fisher" in ec.meta["citation"] and ec.meta["doi"]


def test_lattice_constants_suspect_row_flagged():
    full = E.lattice_constants(keep_suspect=True)
    assert len(full) == 22 and list(full["T_K"][full["suspect"] == 1]) == [73]
    lat = E.lattice_constants()
    assert len(lat) == 21 and 73 not in lat["T_K"]
    assert np.all(np.diff(lat["a_A"]) > 0)  # a grows with T once the 73 K row is out
    assert np.all((lat["a_A"] > 2.9) & (lat["a_A"] < 3.0))
    assert np.all((lat["c_A"] / lat["a_A"] > 1.57) & (lat["c_A"] / lat["a_A"] < 1.60))
    np.testing.assert_array_equal(full["T_K"], E.elastic_constants()["T_K"])


def test_training_targets_match_tables():
    targets = E.training_targets()
    assert [t.T_K for t in targets] == list(TARGET_T)
    ec, lat = E.elastic_constants(), E.lattice_constants()
    for t in targets:
        i, j = int(np.flatnonzero(ec["T_K"] == t.T_K)[0]), int(np.flatnonzero(lat["T_K"] == t.T_K)[0])
        assert t.pressure_GPa == 0.0
        for k in E.ELASTIC_KEYS:
            assert t.elastic_constants_GPa[k] == pytest.approx(ec[f"{k}_GPa"][i], abs=1e-9), (t.T_K, k)
        assert (t.a_A, t.c_A) == pytest.approx((lat["a_A"][j], lat["c_A"][j]), abs=1e-9)
    assert targets[0].elastic_constants_GPa == {"C11": 175.9, "C12": 86.7, "C13": 68.2, "C33": 190.5, "C44": 50.8}
    assert "GPa" in E.training_targets_meta()["units"]["elastic_constants"]


def test_liquid_rdf_and_chemtrain_edit():
    rdf = E.liquid_rdf()
    r, g = rdf["r_A"], rdf["g_r"]
    assert np.all(np.diff(r) > 0) and np.all(g >= 0) and r[0] > 1.5 and r[-1] > 8
    assert 2.5 < r[np.argmax(g)] < 3.2 and 2.0 < g.max() < 3.5  # first peak of liquid Ti
    assert abs(np.mean(g[r > 8]) - 1) < 0.1
    edit = E.liquid_rdf(chemtrain_edit=True)
    assert len(edit) == len(rdf) - 1 and edit["r_A"][0] == pytest.approx(2.1324) and edit["g_r"][0] == 0
    np.testing.assert_array_equal(edit["g_r"][1:], g[2:])
    assert "10.1016/j.msea.2005.12.093" in rdf.meta["doi"]


def test_self_diffusion():
    d = E.self_diffusion()
    assert d["T_K"] == 2000 and d["D_m2_per_s"] == pytest.approx(5.3e-9) and d["D_err_m2_per_s"] == pytest.approx(2e-10)
    assert "Meyer" in d["citation"]


def test_phonon_dos_and_derived_dispersion():
    dos = E.phonon_dos()
    nu = dos["nu_THz"]
    assert np.all(np.diff(nu) > 0) and nu[-1] < 10 and dos["dos"].max() == pytest.approx(1.0)
    np.testing.assert_allclose(dos["E_meV"], nu * 4.135667696, rtol=2e-3)  # E = h·ν
    disp = E.phonon_dispersion_bvk()
    assert "DERIVED" in disp.meta["status"]
    nus = np.stack([disp[f"nu{i}_THz"] for i in range(1, 7)], axis=1)
    assert np.all(np.diff(nus, axis=1) >= 0) and np.allclose(nus[0, :3], 0) and nus.max() < 10
    assert list(disp["label"][disp["label"] != ""]) == ["G", "M", "M", "K", "K", "G", "G", "A"]


# ------------------------------------------------------------------------------------------
# CHGNet-labelled stand-in for the DFT set
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chgnet_set():
    return read_dataset(CHGNET, ["Ti"]), json.loads((CHGNET / "manifest.json").read_text())


def test_chgnet_set_counts_match_manifest(chgnet_set):
    ds, man = chgnet_set
    assert not man["quick"] and len(ds) == man["n_configurations"]
    assert 600 <= len(ds) <= 1500
    assert dict(Counter(s.system.split("/")[0] for s in ds)) == man["phases"]
    assert dict(Counter("/".join(s.system.split("/")[:2]) for s in ds)) == man["kinds"]
    assert set(man["phases"]) == {"hcp", "bcc", "fcc", "omega", "liquid"}
    assert ds.n_atoms.min() >= 30 and ds.n_atoms.max() <= 128  # 32–128, minus up to 2 vacancies
    size = sum(f.stat().st_size for f in CHGNET.rglob("*") if f.is_file())
    assert size < 10e6


def test_chgnet_labels_sane(chgnet_set):
    ds, _ = chgnet_set
    epa = np.array([s.energy / s.n_atoms for s in ds])
    assert np.all((epa > -8.0) & (epa < -7.0)), (epa.min(), epa.max())  # CHGNet Ti: ≈ −7.8 eV/atom
    assert all(s.has_virial and np.all(np.isfinite(s.virial)) for s in ds)
    assert all(np.all(np.isfinite(s.forces)) for s in ds)
    fmax = max(float(np.abs(s.forces).max()) for s in ds)
    assert 0.1 < fmax < 30
    for s in ds:  # the virial is symmetric and the net force vanishes
        np.testing.assert_allclose(s.virial, s.virial.T, atol=1e-3 * max(1.0, np.abs(s.virial).max()))
        assert np.abs(s.forces.sum(0)).max() < 1e-2 * max(1.0, s.n_atoms ** 0.5)


def test_chgnet_virial_sign(chgnet_set):
    """W = −V·σ: compressed cells push outwards (P = tr W / 3V > 0), stretched ones pull in."""
    ds, _ = chgnet_set
    hcp = [s for s in ds if s.system.startswith("hcp/strained")]
    vpa = np.array([s.volume / s.n_atoms for s in hcp])
    p = np.array([np.trace(s.virial) / (3 * s.volume) for s in hcp])
    assert np.corrcoef(vpa, p)[0, 1] < -0.8
    assert p[np.argmin(vpa)] > 0 > p[np.argmax(vpa)]
