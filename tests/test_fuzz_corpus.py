"""Every committed fuzzing input, replayed through its target without atheris (fuzz/).

The corpus holds realistic seeds and every input that ever crashed a target: `make fuzz`
writes a crash straight into ``fuzz/corpus/<target>/``, so this test fails until the crash is
fixed, and from then on keeps it fixed.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from fuzz import CORPUS_DIR, TARGETS


def corpus_files() -> list[tuple[str, Path]]:
    return [
        (target, path)
        for target in TARGETS
        for path in sorted((CORPUS_DIR / target).iterdir())
        if path.is_file()
    ]


def test_every_target_has_seeds_and_every_corpus_a_target() -> None:
    """A target without inputs would replay nothing; a directory without a target, likewise."""
    for target in TARGETS:
        assert any((CORPUS_DIR / target).iterdir()), f"fuzz/corpus/{target}/ is empty"
    assert sorted(p.name for p in CORPUS_DIR.iterdir() if p.is_dir()) == sorted(TARGETS)


@pytest.mark.parametrize(
    ("target", "path"), corpus_files(), ids=lambda v: v.name if isinstance(v, Path) else v
)
def test_corpus_input_keeps_the_contract(target: str, path: Path) -> None:
    module = importlib.import_module(f"fuzz.{target}")
    module.fuzz_one(path.read_bytes())
