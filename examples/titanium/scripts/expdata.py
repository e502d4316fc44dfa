"""Experimental reference data of the titanium example (numpy, yaml and fusepot's table reader).

Every table lives in `examples/titanium/data/experimental/`: CSV files open with `# key: value`
lines (title, citation, doi, units, notes), then a header row; YAML files carry the same keys.
Units are in the column names (T_K, C11_GPa, a_A, nu_THz, ...).

    import expdata
    ec = expdata.elastic_constants()          # Table: ec["T_K"], ec["C11_GPa"], ec.meta["citation"]
    lat = expdata.lattice_constants()         # the suspect 73 K row dropped unless keep_suspect=True
    targets = expdata.training_targets()      # list of TargetStatePoint at 23, 323, 623, 923 K
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from fusepot.core.evaluation import Table, read_table  # noqa: F401 (re-exported for users)

DATA = Path(__file__).resolve().parents[1] / "data" / "experimental"
ELASTIC_KEYS = ("C11", "C12", "C13", "C33", "C44")


def elastic_constants() -> Table:
    """hcp Ti C11, C12, C13, C33, C44 (GPa) at 22 temperatures, 4–973 K (Fisher & Renken 1964)."""
    return read_table(DATA / "hcp_elastic_constants.csv")


def lattice_constants(keep_suspect: bool = False) -> Table:
    """hcp Ti a, c (Å) vs T (K); the 73 K row is flagged suspect (see the file) and dropped by default."""
    t = read_table(DATA / "hcp_lattice_constants.csv")
    return t if keep_suspect else t.rows(t["suspect"] == 0)


def liquid_rdf(chemtrain_edit: bool = False) -> Table:
    """Liquid Ti g(r) at ~1965 K (Holland-Moritz et al. 2007).

    chemtrain_edit=True gives the curve chemtrain (and the paper) trained on: without the
    2.04097 Å point and with g(2.13240 Å) set to 0.
    """
    t = read_table(DATA / "liquid_rdf_1965K.csv")
    if not chemtrain_edit:
        return t
    t = t.rows(t["flag"] != "absent_in_chemtrain")
    g = np.where(t["flag"] == "zeroed_in_chemtrain", 0.0, t["g_r"])
    return Table({**t.columns, "g_r": g}, t.meta)


def self_diffusion() -> dict:
    """Liquid Ti self-diffusion: {'T_K', 'D_m2_per_s', 'D_err_m2_per_s', 'citation', 'doi', ...}."""
    d = yaml.safe_load((DATA / "liquid_self_diffusion.yaml").read_text())
    (v,) = d["values"]
    return {**{k: d[k] for k in ("citation", "doi", "method")}, **{k: float(x) for k, x in v.items()}}


def phonon_dos() -> Table:
    """hcp Ti phonon DOS at 295 K (Stassis et al. 1979, digitised), arbitrary units, max 1."""
    return read_table(DATA / "hcp_phonon_dos_295K.csv")


def phonon_dispersion_bvk() -> Table:
    """hcp Ti dispersion along Γ–M–K–Γ–A from Stassis' Born–von Kármán model: DERIVED, not measured."""
    return read_table(DATA / "hcp_phonon_dispersion_295K_bvk_DERIVED.csv")


@dataclass(frozen=True)
class TargetStatePoint:
    """One experimental training target: hcp Ti at T_K, pressure_GPa, in the box of a_A, c_A."""

    T_K: float
    pressure_GPa: float
    a_A: float
    c_A: float
    elastic_constants_GPa: dict[str, float]


def training_targets() -> list[TargetStatePoint]:
    """The fused run's targets at 23, 323, 623, 923 K (elastic constants, zero pressure)."""
    d = yaml.safe_load((DATA / "training_targets.yaml").read_text())
    return [TargetStatePoint(float(s["T_K"]), float(s["pressure_GPa"]), float(s["lattice_constants_A"]["a"]),
                             float(s["lattice_constants_A"]["c"]),
                             {k: float(s["elastic_constants_GPa"][k]) for k in ELASTIC_KEYS})
            for s in d["state_points"]]


def training_targets_meta() -> dict:
    """Citation and units of training_targets.yaml."""
    d = yaml.safe_load((DATA / "training_targets.yaml").read_text())
    return {k: v for k, v in d.items() if k != "state_points"}
