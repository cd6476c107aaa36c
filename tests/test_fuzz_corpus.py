"""Every committed fuzzing input, replayed through its target without atheris (fuzz/).

The corpus holds realistic seeds and every input that ever crashed a target: `make fuzz`
writes a crash straight into ``fuzz/corpus/<target>/``, so this test fails until the crash is
fixed, and from then on keeps it fixed.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from fuzz import CORPUS_DIR, FUZZ_DIR, TARGETS

DICT_DIR = FUZZ_DIR / "dicts"


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


# A dictionary line as libFuzzer parses it: [name=]"...", escapes \\, \" and \xAB only.
_DICT_LINE_RE = re.compile(r'([A-Za-z0-9_]+=)?"(?:[^"\\]|\\\\|\\"|\\x[0-9A-Fa-f]{2})*"')


@pytest.mark.parametrize("path", sorted(DICT_DIR.glob("*.dict")), ids=lambda p: p.name)
def test_dictionaries_parse(path: Path) -> None:
    """libFuzzer refuses a whole run for one bad line (`\\u` in a JSON token did once)."""
    assert path.stem in TARGETS
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            assert _DICT_LINE_RE.fullmatch(line), f"{path.name}:{number}: {line}"
