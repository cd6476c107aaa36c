"""Pollen: a peer-to-peer container image accelerator (node agent, root and webhook)."""

__version__ = "0.1.0"
