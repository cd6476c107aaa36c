"""Coverage-guided fuzzing of the parsers that read untrusted bytes (`make fuzz`).

Theory of operation
-------------------
Each target is a module here with one function, ``fuzz_one(data: bytes) -> None``, that hands
the bytes to the same pure (sans-I/O) entry point the product calls on what arrives from the
network or the disk, and checks its contract: only the documented error escapes (the one the
caller turns into a 4xx, a refusal or a refetch), never IndexError, KeyError, TypeError,
RecursionError, UnicodeError..., and what is accepted is well-formed and, where that is cheap,
survives a round trip. Anything else raises out of ``fuzz_one``, which is a crash.

`fuzz.run` drives one target under atheris (libFuzzer) for a bounded time; atheris is needed
only there. ``fuzz/corpus/<target>/`` holds the committed inputs: ``seed-*``, a few realistic
ones; ``crash-*``, every input that ever crashed, renamed to say what it broke; ``regress-*``,
inputs written by hand for a break coverage cannot lead a fuzzer to (JSON nested past the
decoder's depth: no instrumented branch rewards one more bracket). A crash lands there
by itself (libFuzzer's artifact prefix), and ``tests/test_fuzz_corpus.py`` replays every file
through ``fuzz_one`` without atheris, so `make test` fails until it is fixed and then keeps it
fixed. Inputs libFuzzer finds interesting but harmless stay in ``.cache/fuzz/<target>/``.
"""

from __future__ import annotations

from pathlib import Path

# Each target is fuzz/<name>.py; its inputs are in fuzz/corpus/<name>/.
TARGETS = (
    "http_head",
    "registry_route",
    "range_header",
    "p2p_target",
    "plan_reply",
    "preheat_reply",
    "image_manifest",
    "admission_review",
    "cache_index",
)

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
