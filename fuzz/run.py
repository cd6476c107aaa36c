"""``python -m fuzz.run TARGET [--seconds N] [libFuzzer flags or files]``: fuzz one target.

With only ``--seconds`` (what `make fuzz` passes) it fuzzes for that long, starting from the
committed corpus (``fuzz/corpus/TARGET/``, read only) and the working corpus of past runs
(``.cache/fuzz/TARGET/``, where libFuzzer adds what it finds), writes a crashing input into
the committed corpus as ``crash-<sha1>`` (`make test` replays it from there), and prints
libFuzzer's final statistics (executions, exec/s). Anything else on the command line goes to
libFuzzer as it is: a file reproduces one input, ``-help=1`` lists the flags.

The agent's modules and h11 are imported under atheris' instrumentation, so libFuzzer sees
their branches; the standard library and C extensions are not instrumented.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from fuzz import CORPUS_DIR, FUZZ_DIR, TARGETS

WORK_DIR = FUZZ_DIR.parent / ".cache" / "fuzz"
DICT_DIR = FUZZ_DIR / "dicts"
PER_INPUT_TIMEOUT = 10  # seconds: a slower input is a finding (a hang), not a slow machine
MAX_LEN = 16384  # bytes per input: room for a whole request head or AdmissionReview


def libfuzzer_args(target: str, seconds: int, extra: list[str]) -> list[str]:
    """The flags and directories of a bounded run, or `extra` alone when it is given."""
    args = [f"-timeout={PER_INPUT_TIMEOUT}"]
    dictionary = DICT_DIR / f"{target}.dict"
    if dictionary.exists():
        args.append(f"-dict={dictionary}")
    if extra:
        return [*args, *extra]
    work = WORK_DIR / target
    work.mkdir(parents=True, exist_ok=True)
    seeds = CORPUS_DIR / target
    return [
        *args,
        f"-max_total_time={seconds}",
        f"-max_len={MAX_LEN}",
        f"-artifact_prefix={seeds}/",
        "-print_final_stats=1",
        str(work),  # first: where libFuzzer writes new inputs
        str(seeds),
    ]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__)
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--seconds", type=int, default=30, help="fuzzing time (default 30)")
    options, extra = parser.parse_known_args(argv[1:])

    import atheris  # only here: replaying the corpus in the tests needs no atheris

    with atheris.instrument_imports(include=["agent", "h11"]):
        module = importlib.import_module(f"fuzz.{options.target}")
    args = libfuzzer_args(options.target, options.seconds, extra)
    atheris.Setup([str(Path(argv[0])), *args], module.fuzz_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
