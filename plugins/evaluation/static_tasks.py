"""Evaluation report sections (see plugins/evaluation/__init__.py); under construction."""
from fusepot.core.plugins import Component

COMPONENTS: list[Component] = []
