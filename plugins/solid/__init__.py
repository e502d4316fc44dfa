"""Solid-state observables (stress, elastic constants, lattice constants) and Nosé–Hoover
NVT / anisotropic MTK NPT ensembles.  See docs/observables_solid.md and docs/ensembles.md."""
from fusepot.core.plugins import Component, hookimpl

from .born import born_stress_voigt, born_terms
from .elastic import ElasticConstants, ElasticConstantsParams, build_elastic_constants, stress_fluctuation_tensor
from .lattice import (EnergyVolumeCurve, LatticeConstants, LatticeConstantsParams, build_lattice_constants,
                      energy_volume_curve, fit_birch_murnaghan)
from .nose_hoover import (NHState, NoseHooverNPT, NoseHooverNPTParams, NoseHooverNVT, NoseHooverNVTParams,
                          build_npt_nose_hoover, build_nvt_nose_hoover, kinetic_temperature)
from .protocol import Stage, run_protocol
from .protocol_ensemble import ProtocolEnsemble, ProtocolParams, build_protocol
from .stress import Stress, StressParams, build_stress, stress_tensor
from .voigt import voigt_moduli_cubic, voigt_moduli_hexagonal


@hookimpl
def fusepot_observables():
    return [
        Component("stress", Stress, StressParams, build_stress,
                  "Stress tensor (Voigt or 3×3, tensile positive) or pressure: virial + kinetic term, GPa"),
        Component("elastic_constants", ElasticConstants, ElasticConstantsParams, build_elastic_constants,
                  "Isothermal elastic constants by the stress-fluctuation formula (NVT frames), GPa"),
        Component("lattice_constants", LatticeConstants, LatticeConstantsParams, build_lattice_constants,
                  "Lattice parameters from the cell of NPT frames (Å; angles in degrees)"),
    ]


@hookimpl
def fusepot_ensembles():
    return [
        Component("nvt_nose_hoover", NoseHooverNVT, NoseHooverNVTParams, build_nvt_nose_hoover,
                  "NVT Nosé–Hoover chain thermostat with velocity Verlet"),
        Component("npt_nose_hoover", NoseHooverNPT, NoseHooverNPTParams, build_npt_nose_hoover,
                  "NPT: MTK barostat with independent box axes (a, b, c) and Nosé–Hoover chains"),
        Component("protocol", ProtocolEnsemble, ProtocolParams, build_protocol,
                  "Multi-stage protocol (e.g. NPT equilibration, then NVT production); samples the last stage"),
    ]


__all__ = ["born_terms", "born_stress_voigt", "stress_tensor", "stress_fluctuation_tensor", "energy_volume_curve",
           "fit_birch_murnaghan", "EnergyVolumeCurve", "kinetic_temperature", "NHState", "Stage", "run_protocol",
           "voigt_moduli_cubic", "voigt_moduli_hexagonal", "Stress", "ElasticConstants", "LatticeConstants",
           "NoseHooverNVT", "NoseHooverNPT"]
