"""Static energy–volume curves, Birch–Murnaghan fits and model-vs-reference comparison.

A structure is scaled isotropically (all lattice vectors by s^(1/3), fractional positions
fixed, so c/a is kept) to volumes s·V, and the calculator gives the static energy of each.
Energies and volumes are per atom: eV/atom and Å³/atom.

Birch–Murnaghan (3rd order; Birch, Phys. Rev. 71, 809 (1947)):
    E(V) = E0 + 9 V0 B0/16 · { [(V0/V)^(2/3) − 1]³ B0' + [(V0/V)^(2/3) − 1]² [6 − 4 (V0/V)^(2/3)] }
is a cubic polynomial in x = V^(−2/3), so the least-squares fit is linear (a cubic in x) and
E0, V0, B0 = V E''(V0), B0' = −1 − V0 E'''(V0)/E''(V0) follow from the polynomial.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from fusepot.core.units import pressure_to_gpa

#: volume scalings V/V_ref of the default curves (±10 %)
DEFAULT_SCALINGS = np.linspace(0.90, 1.10, 11)

ArrayPair = tuple[Sequence[float], Sequence[float]]


def titanium_structures(a_hcp: float = 2.951, c_hcp: float = 4.686, a_bcc: float = 3.26,
                        a_fcc: float = 4.12) -> dict:
    """hcp, bcc and fcc Ti (ase.build.bulk primitive cells) at the given lattice constants (Å).

    Defaults: hcp from experiment at room temperature; bcc and fcc near typical PBE minima.
    """
    from ase.build import bulk

    return {"hcp": bulk("Ti", "hcp", a=a_hcp, c=c_hcp), "bcc": bulk("Ti", "bcc", a=a_bcc),
            "fcc": bulk("Ti", "fcc", a=a_fcc)}


@dataclass(frozen=True)
class EVCurve:
    name: str
    scalings: np.ndarray  # (n,) V / V_ref
    volumes: np.ndarray  # (n,) Å³/atom
    energies: np.ndarray  # (n,) eV/atom


@dataclass(frozen=True)
class BirchMurnaghanFit:
    v0: float  # Å³/atom
    e0: float  # eV/atom
    b0_gpa: float  # bulk modulus at V0, GPa
    b0_prime: float  # dB/dP at V0
    rms_residual: float  # eV/atom
    coefficients: np.ndarray  # cubic in u = (V^(-2/3) − x_center) / x_scale, highest power first
    x_center: float
    x_scale: float

    def energy(self, volumes) -> np.ndarray:
        """Fitted E(V) in eV/atom."""
        u = (np.asarray(volumes, float) ** (-2.0 / 3.0) - self.x_center) / self.x_scale
        return np.polyval(self.coefficients, u)


def scaled(atoms, scaling: float):
    """A copy of `atoms` with volume × `scaling` (isotropic, fractional positions kept)."""
    if scaling <= 0:
        raise ValueError(f"volume scaling must be > 0, got {scaling}")
    out = atoms.copy()
    out.set_cell(atoms.cell.array * scaling ** (1.0 / 3.0), scale_atoms=True)
    return out


def energy_volume_curve(atoms, calculator, scalings: Sequence[float] = DEFAULT_SCALINGS, name: str = "") -> EVCurve:
    """Static energies per atom of `atoms` scaled to V_ref · scalings (one calculator for all)."""
    scalings = np.asarray(scalings, dtype=float)
    if scalings.ndim != 1 or len(scalings) == 0:
        raise ValueError("scalings must be a non-empty 1-D sequence")
    n = len(atoms)
    vols, energies = [], []
    for s in scalings:
        a = scaled(atoms, s)
        a.calc = calculator
        energies.append(a.get_potential_energy() / n)
        vols.append(a.get_volume() / n)
    return EVCurve(name or atoms.get_chemical_formula(), scalings, np.asarray(vols), np.asarray(energies))


def energy_volume_curves(structures: Mapping[str, object], calculator,
                         scalings: Sequence[float] = DEFAULT_SCALINGS) -> dict[str, EVCurve]:
    """`energy_volume_curve` for each named structure (e.g. `titanium_structures()`)."""
    return {name: energy_volume_curve(atoms, calculator, scalings, name) for name, atoms in structures.items()}


def birch_murnaghan_fit(volumes, energies) -> BirchMurnaghanFit:
    """Least-squares 3rd-order Birch–Murnaghan fit (needs ≥ 5 points bracketing the minimum)."""
    v = np.asarray(volumes, float)
    e = np.asarray(energies, float)
    if v.shape != e.shape or v.ndim != 1 or len(v) < 5:
        raise ValueError("birch_murnaghan_fit: need matching 1-D volumes and energies, at least 5 points")
    x = v ** (-2.0 / 3.0)
    # centre and scale x for a well-conditioned fit, then convert the derivatives back
    xm, xs = x.mean(), x.std()
    c = np.polyfit((x - xm) / xs, e, 3)
    p = np.poly1d(c)
    dp, d2p, d3p = p.deriv(1), p.deriv(2), p.deriv(3)
    roots = [r.real for r in dp.roots if abs(r.imag) <= 1e-9 * max(1.0, abs(r))]
    minima = [r for r in roots if d2p(r) > 0]
    u_lo, u_hi = (x.min() - xm) / xs, (x.max() - xm) / xs
    inside = [r for r in minima if u_lo <= r <= u_hi]
    if not inside:
        raise ValueError("birch_murnaghan_fit: the fitted curve has no minimum inside the volume range; "
                         "extend the range around the equilibrium volume")
    u0 = inside[0]
    x0 = xm + xs * u0
    v0 = x0 ** (-1.5)
    # derivatives of E(V) = P(u(V)), u = (V^(-2/3) − xm)/xs; at V0 P'(u0) = 0
    g1 = -(2.0 / 3.0) * v0 ** (-5.0 / 3.0) / xs
    g2 = (10.0 / 9.0) * v0 ** (-8.0 / 3.0) / xs
    e2 = d2p(u0) * g1 ** 2
    e3 = d3p(u0) * g1 ** 3 + 3.0 * d2p(u0) * g1 * g2
    b0 = v0 * e2  # eV/Å³
    resid = e - p((x - xm) / xs)
    return BirchMurnaghanFit(float(v0), float(p(u0)), float(pressure_to_gpa(b0)), float(-1.0 - v0 * e3 / e2),
                             float(np.sqrt(np.mean(resid ** 2))), np.asarray(c), float(xm), float(xs))


def compare_energies(model: Mapping[str, EVCurve], reference: Mapping[str, ArrayPair],
                     zero: Optional[str] = None) -> dict[str, dict[str, float]]:
    """Model vs reference energies per structure (meV/atom): rmse, mae, max.

    reference: name → (volumes Å³/atom, energies eV/atom) at the model curve's volumes.
    zero: None compares absolute energies; a structure name (e.g. "hcp") subtracts, separately
        for model and reference, that structure's lowest energy from all curves (phase energy
        differences survive, the arbitrary energy zero of a potential does not); "each" subtracts
        every curve's own minimum (shapes only).
    """
    missing = sorted(set(reference) - set(model))
    if missing:
        raise ValueError(f"compare_energies: no model curve for reference structure(s) {missing}")
    ref = {k: (np.asarray(v, float), np.asarray(e, float)) for k, (v, e) in reference.items()}
    for k, (v, e) in ref.items():
        if v.shape != model[k].volumes.shape or e.shape != v.shape:
            raise ValueError(f"compare_energies: {k}: reference has {v.shape[0]} points, model {model[k].volumes.shape[0]}")
        if not np.allclose(v, model[k].volumes, rtol=1e-4):
            raise ValueError(f"compare_energies: {k}: reference volumes differ from the model curve's "
                             f"(evaluate the model at the reference volumes)")
    if zero is not None and zero != "each" and zero not in ref:
        raise ValueError(f"compare_energies: zero={zero!r} is not a reference structure ({sorted(ref)})")
    out = {}
    for k, (_, e_ref) in ref.items():
        e_mod = model[k].energies
        if zero == "each":
            e_mod, e_ref = e_mod - e_mod.min(), e_ref - e_ref.min()
        elif zero is not None:
            e_mod, e_ref = e_mod - model[zero].energies.min(), e_ref - ref[zero][1].min()
        d = 1e3 * (e_mod - e_ref)
        out[k] = {"rmse_mev_per_atom": float(np.sqrt(np.mean(d ** 2))), "mae_mev_per_atom": float(np.mean(np.abs(d))),
                  "max_mev_per_atom": float(np.max(np.abs(d)))}
    return out


def plot_ev_curves(path_png, curves: Mapping[str, EVCurve], reference: Optional[Mapping[str, ArrayPair]] = None, *,
                   fit: bool = True, zero: Optional[str] = None, title: Optional[str] = None) -> Path:
    """E(V) per structure (model lines/points, reference as open markers, BM fit dashed) → PNG.

    zero: as in `compare_energies` (None, a structure name, or "each") for the plotted energies.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    reference = reference or {}

    def offset(energies_by_name, name) -> float:
        if zero == "each":
            return float(np.min(energies_by_name[name]))
        return float(np.min(energies_by_name[zero])) if zero is not None else 0.0

    model_e = {k: c.energies for k, c in curves.items()}
    ref_e = {k: np.asarray(e, float) for k, (_, e) in reference.items()}
    if zero not in (None, "each") and (zero not in model_e or (reference and zero not in ref_e)):
        raise ValueError(f"plot_ev_curves: zero={zero!r} is not among the structures")
    fig = Figure(figsize=(5.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, (name, c) in enumerate(curves.items()):
        col = f"C{i}"
        ax.plot(c.volumes, c.energies - offset(model_e, name), "o-" if not fit else "o", color=col, ms=4,
                label=f"{name} model")
        if fit:
            try:
                bm = birch_murnaghan_fit(c.volumes, c.energies)
                vv = np.linspace(c.volumes.min(), c.volumes.max(), 200)
                ax.plot(vv, bm.energy(vv) - offset(model_e, name), "-", color=col, lw=1.0,
                        label=f"{name} BM: V0={bm.v0:.2f} Å³, B0={bm.b0_gpa:.0f} GPa")
            except ValueError:
                pass  # no minimum in range: points only
        if name in reference:
            v, e = (np.asarray(a, float) for a in reference[name])
            ax.plot(v, e - offset(ref_e, name), "s", mfc="none", color=col, ms=6, label=f"{name} reference")
    ax.set_xlabel("volume (Å³/atom)")
    ax.set_ylabel("energy (eV/atom)" if zero is None else "relative energy (eV/atom)")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path_png = Path(path_png)
    fig.savefig(path_png, dpi=130)
    return path_png
