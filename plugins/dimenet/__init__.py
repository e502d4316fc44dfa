"""DimeNet++ potential plugin (under construction)."""
from fusepot.core.plugins import hookimpl


@hookimpl
def fusepot_potentials():
    return []
