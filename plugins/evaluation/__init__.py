"""Evaluation tools (a library, no plugin hooks) for any fusepot potential through the ASE
calculator `fusepot.core.calculator.FusepotCalculator`:

- `phonons`: phonon dispersion and DOS with phonopy (finite displacements), plot with data overlay;
- `ev_curve`: static energy–volume curves, Birch–Murnaghan fits, model-vs-reference comparison.

See docs/evaluation_tools.md.
"""
