"""Evaluation: report sections for `fusepot evaluate` (hook `fusepot_evaluations`) and the
library functions they use, for any fusepot potential through the ASE calculator
`fusepot.core.calculator.FusepotCalculator`:

- `phonons`: phonon dispersion and DOS with phonopy (finite displacements), plot with data overlay;
- `ev_curve`: static energy–volume curves, Birch–Murnaghan fits, model-vs-reference comparison;
- `static_tasks`: report sections dft_errors, ev_curves, phonons;
- `solid_tasks`: report sections elastic_vs_temperature, npt_lattice;
- `liquid_tasks`: report sections liquid_structure, self_diffusion.

See docs/evaluation_tools.md and docs/evaluation_report.md.
"""
from fusepot.core.plugins import hookimpl


@hookimpl
def fusepot_evaluations():
    from . import liquid_tasks, solid_tasks, static_tasks

    return [*static_tasks.COMPONENTS, *solid_tasks.COMPONENTS, *liquid_tasks.COMPONENTS]
