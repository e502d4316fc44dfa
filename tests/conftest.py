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


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop jax's compiled executables after each test module.  One pytest process compiles
    thousands of XLA programs; each maps executable memory, and a long CPU session can run into
    the kernel's map-count limit (vm.max_map_count, 65530 by default: the XLA compiler then
    segfaults).  Modules share no compiled functions worth keeping."""
    yield
    jax.clear_caches()


# files that take a large share of the suite: handed to a worker first (pytest-xdist gives out
# whole files in collection order), so that they do not run alone at the end
LONG_FILES = ("test_titanium_example.py", "test_exp_trainer.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: order kept otherwise
