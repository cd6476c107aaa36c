"""Only here because cffi hooks into setuptools through ``cffi_modules``; metadata lives in
pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["build.py:ffibuilder"])
