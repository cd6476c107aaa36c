"""docs/REFERENCE.md is what agent/reference.py generates from the code: it cannot drift."""

from __future__ import annotations

from pathlib import Path

from agent.core.config import KEYS
from agent.reference import render

PAGE = Path(__file__).resolve().parents[1] / "docs" / "REFERENCE.md"


def test_the_committed_reference_is_the_generated_one() -> None:
    assert PAGE.read_text(encoding="utf-8") == render(), (
        "docs/REFERENCE.md is stale: run `make docs` and commit the result"
    )


def test_every_key_and_the_original_metrics_are_on_the_page() -> None:
    page = render()
    for key in KEYS:
        assert f"`{key.env}`" in page
    for name in ("DADIP2P_Read_Throughtput", "DADIP2P_Cache", "pollen_layer_bytes"):
        assert f"`{name}`" in page
    assert "|AUDIT|th=00007FBA247C5280|download[pathname=" in page
