"""Built-in ensembles (samplers)."""
from fusepot.core.plugins import Component, hookimpl

from .langevin import LangevinNVT, LangevinParams, build_langevin


@hookimpl
def fusepot_ensembles():
    return [Component("nvt_langevin", LangevinNVT, LangevinParams, build_langevin,
                      "NVT Langevin dynamics (BAOAB splitting), fixed box")]
