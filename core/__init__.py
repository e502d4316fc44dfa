"""fusepot core: interfaces, plugin manager, DiffTRe engine, trainers, spec, units.

The core knows no element, no model and no specific observable; those come from plugins.
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("fusepot")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
