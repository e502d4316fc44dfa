"""Structure and dynamics observables: RDF, ADF, VACF, self-diffusion (under construction)."""
from fusepot.core.plugins import hookimpl


@hookimpl
def fusepot_observables():
    return []
