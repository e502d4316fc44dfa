"""The one module that owns units.

Internal ("metal") units: energy eV, length Å, mass amu, temperature K via k_B in eV/K.
Time is the derived unit Å·sqrt(amu/eV) (≈ 10.18 fs), so that F = m a needs no factor.
User-facing numbers are K, GPa, Å, ps, eV, amu; convert only through the helpers here.
"""
from __future__ import annotations

import math

# CODATA 2018 exact / recommended values
BOLTZMANN_EV_PER_K = 8.617333262e-5
ELEMENTARY_CHARGE_C = 1.602176634e-19
AMU_KG = 1.66053906660e-27
ANGSTROM_M = 1e-10
AVOGADRO = 6.02214076e23

#: one internal time unit expressed in ps
TIME_UNIT_PS = ANGSTROM_M * math.sqrt(AMU_KG / ELEMENTARY_CHARGE_C) * 1e12
#: 1 eV/Å³ in GPa
EV_PER_A3_IN_GPA = ELEMENTARY_CHARGE_C / ANGSTROM_M**3 / 1e9
#: 1 kJ/mol in eV
KJ_PER_MOL_IN_EV = 1e3 / AVOGADRO / ELEMENTARY_CHARGE_C


def kT(temperature_K: float):
    """Thermal energy in eV."""
    return BOLTZMANN_EV_PER_K * temperature_K


def ps_to_internal(t_ps):
    return t_ps / TIME_UNIT_PS


def internal_to_ps(t):
    return t * TIME_UNIT_PS


def inverse_ps_to_internal(rate_per_ps):
    """Rates (friction coefficients) given in 1/ps."""
    return rate_per_ps * TIME_UNIT_PS


def pressure_to_gpa(p_ev_per_a3):
    return p_ev_per_a3 * EV_PER_A3_IN_GPA


def gpa_to_internal(p_gpa):
    return p_gpa / EV_PER_A3_IN_GPA


def diffusion_to_m2_per_s(d_a2_per_internal_time):
    """Å²/time-unit → m²/s."""
    return d_a2_per_internal_time * ANGSTROM_M**2 / (TIME_UNIT_PS * 1e-12)


# Units a user may write in a spec, with their factor to the internal unit of the same dimension.
_UNITS: dict[str, tuple[str, float]] = {
    "eV": ("energy", 1.0),
    "meV": ("energy", 1e-3),
    "kJ/mol": ("energy", KJ_PER_MOL_IN_EV),
    "eV/atom": ("energy_per_atom", 1.0),
    "meV/atom": ("energy_per_atom", 1e-3),
    "GPa": ("pressure", 1.0 / EV_PER_A3_IN_GPA),
    "MPa": ("pressure", 1e-3 / EV_PER_A3_IN_GPA),
    "bar": ("pressure", 1e-4 / EV_PER_A3_IN_GPA),
    "eV/A^3": ("pressure", 1.0),
    "kJ/mol/nm^3": ("pressure", KJ_PER_MOL_IN_EV / 1000.0),
    "A": ("length", 1.0),
    "nm": ("length", 10.0),
    "deg": ("angle", 1.0),
    "1/deg": ("inverse_angle", 1.0),
    "A^2/ps^2": ("velocity_squared", TIME_UNIT_PS**2),
    "K": ("temperature", 1.0),
    "ps": ("time", 1.0 / TIME_UNIT_PS),
    "fs": ("time", 1e-3 / TIME_UNIT_PS),
    "m^2/s": ("diffusion", (TIME_UNIT_PS * 1e-12) / ANGSTROM_M**2),
    "A^2/ps": ("diffusion", TIME_UNIT_PS),
    "1": ("dimensionless", 1.0),
    "eV/A": ("force", 1.0),
}
_ALIASES = {"Å": "A", "Å^3": "A^3", "eV/Å^3": "eV/A^3", "eV/Å": "eV/A", "Å^2/ps": "A^2/ps", "dimensionless": "1", "": "1"}


def canonical(unit: str) -> str:
    u = _ALIASES.get(unit, unit)
    if u not in _UNITS:
        raise ValueError(f"unknown unit {unit!r}; known units: {', '.join(sorted(_UNITS))}")
    return u


def dimension(unit: str) -> str:
    return _UNITS[canonical(unit)][0]


def to_internal(value, unit: str):
    """Convert a user value in `unit` to the internal unit of its dimension."""
    return value * _UNITS[canonical(unit)][1]


def from_internal(value, unit: str):
    return value / _UNITS[canonical(unit)][1]


def convert(value, from_unit: str, to_unit: str):
    if dimension(from_unit) != dimension(to_unit):
        raise ValueError(f"cannot convert {from_unit!r} ({dimension(from_unit)}) to {to_unit!r} ({dimension(to_unit)})")
    return from_internal(to_internal(value, from_unit), to_unit)


def known_units() -> list[str]:
    return sorted(_UNITS)
