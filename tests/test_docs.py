"""Every worked example of the documentation site runs, so the examples stay true.

Each ```python block of docs/examples/*.md runs in a fresh namespace (the blocks of one page share one,
in order). The site itself is built with warnings as errors by ``make docs``, which ``make test`` runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted((DOCS / "examples").glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_every_example_page_has_code():
    assert PAGES, "docs/examples holds no page"
    for page in PAGES:
        assert BLOCK.findall(page.read_text()), f"{page.name} has no python block"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_example_runs(page, capsys):
    namespace: dict = {"__name__": f"docs_example_{page.stem}"}
    for code in BLOCK.findall(page.read_text()):
        exec(compile(code, str(page), "exec"), namespace)
    assert capsys.readouterr().out.strip(), "the example printed nothing"
