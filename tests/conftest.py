"""Test-session settings: float64 everywhere (finite-difference checks need it); tests that
exercise float32 paths pass explicit dtypes."""
import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared_data():
    d = SHARED / "data"
    if not d.is_dir():
        pytest.skip(f"reference data not found at {d} (../shared/data is not part of the project)")
    return d
