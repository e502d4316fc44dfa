"""Evaluation tools: phonons (phonopy), energy–volume curves, report plots (under construction)."""
