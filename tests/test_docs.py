"""The core concept pages' Python snippets run as written."""
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["interfaces.md", "plugins.md", "difftre.md", "spec.md", "datasets.md", "dft_training.md"]


@pytest.mark.parametrize("page", PAGES)
def test_snippets_run(page):
    text = (DOCS / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, f"{page} has no python snippet"
    ns = {"__name__": f"docs_{page.replace('.', '_')}"}
    import sys, types

    mod = types.ModuleType(ns["__name__"])
    sys.modules[mod.__name__] = mod
    for code in blocks:  # blocks of one page share a namespace, like a reader's session
        exec(compile(code, f"{page}", "exec"), mod.__dict__)
