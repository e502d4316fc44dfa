"""Structure and dynamics observables: RDF, ADF (reweightable), VACF and self-diffusion
(evaluation only), plus curve comparison and the liquid protocol description."""
from fusepot.core.plugins import Component, hookimpl

from .adf import ADF, ADFParams, build_adf
from .compare import curve_rms_deviation
from .dynamics import (VACF, DiffusionResult, SelfDiffusion, SelfDiffusionParams, VACFParams, VACFResult,
                       build_self_diffusion, build_vacf)
from .evaluate import per_frame_values, trajectory_average
from .protocol import LiquidProtocol, supercell
from .rdf import RDF, RDFParams, build_rdf

__all__ = ["RDF", "ADF", "VACF", "SelfDiffusion", "VACFResult", "DiffusionResult", "curve_rms_deviation",
           "per_frame_values", "trajectory_average", "LiquidProtocol", "supercell"]


@hookimpl
def fusepot_observables():
    return [
        Component("rdf", RDF, RDFParams, build_rdf,
                  "Radial distribution function g(r), total or partial; smooth (differentiable) or sharp binning"),
        Component("adf", ADF, ADFParams, build_adf,
                  "Bond-angle distribution P(θ) in 1/degree for triplets within a cutoff"),
        Component("vacf", VACF, VACFParams, build_vacf,
                  "Velocity autocorrelation function over many time origins, Å²/ps² (evaluation only)"),
        Component("self_diffusion", SelfDiffusion, SelfDiffusionParams, build_self_diffusion,
                  "Self-diffusion coefficient, Green–Kubo with Einstein cross-check (evaluation only)"),
    ]
