"""cffi builder for ``agent.cache._pollen_io``, the native chunk I/O module.

Out-of-line API mode: cffi generates a C wrapper that is compiled against the real header, so
type mismatches are compile errors, and every call releases the GIL. The ``cdef`` is the
header itself minus its preprocessor lines, so declarations live in one place
(``native/pollen_io.h``) and cannot drift from what Python sees.

The C code needs only libc and the kernel's UAPI headers (``<linux/io_uring.h>``,
``<linux/aio_abi.h>``: Debian's linux-libc-dev, which libc6-dev pulls in); io_uring and Linux
AIO are reached through raw system calls, so neither liburing nor libaio is needed.

setuptools uses this through ``setup.py`` (``cffi_modules=["build.py:ffibuilder"]``), which is
what ``make build`` / ``pip install -e .`` run. ``python build.py`` compiles the module in place
(``agent/cache/_pollen_io.*.so``) for quick development loops.
"""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
HEADER = HERE / "native" / "pollen_io.h"


def header_cdef(text: str) -> str:
    """Return the header text with every preprocessor line removed, ready for ``cdef``.

    cffi's parser does not run the C preprocessor; the header is written so that dropping
    ``#`` lines (guards, includes, the version macro) leaves only plain declarations.
    """
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


ffibuilder = FFI()
ffibuilder.cdef(header_cdef(HEADER.read_text(encoding="utf-8")))
# Paths are relative to the project root: setuptools insists on relative source paths, and
# both pip and ``python build.py`` (which changes directory first) build from there.
ffibuilder.set_source(
    "agent.cache._pollen_io",
    '#include "pollen_io.h"',
    sources=["native/pollen_io.c"],
    include_dirs=["native"],
    extra_compile_args=["-O2", "-Wall", "-std=gnu11"],
    # Stable-ABI module (``_pollen_io.abi3.so``), which is what setuptools builds anyway; said
    # here so ``python build.py`` writes the same file name as ``make build`` and one build
    # never leaves a differently named .so that shadows the other's.
    py_limited_api=True,
)


if __name__ == "__main__":
    os.chdir(HERE)
    ffibuilder.compile(tmpdir=".", verbose=True)
