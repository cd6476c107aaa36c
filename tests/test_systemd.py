"""The systemd units verify with systemd's own checker, and the env file speaks config keys."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.core.config import CONFIG_ENV, ENV_VARS, KEYS

SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"
INSTALLED_BINARY = "/opt/pollen/venv/bin/pollen"


def units() -> list[Path]:
    return sorted(SYSTEMD.glob("*.service"))


@pytest.mark.parametrize("unit", units(), ids=lambda p: p.name)
def test_unit_verifies(unit: Path, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    text = unit.read_text()
    assert INSTALLED_BINARY in text
    # verify insists that ExecStart exists: point it at this checkout's console script.
    pollen = Path(sys.executable).parent / "pollen"
    assert pollen.exists(), "the pollen console script is installed by `make build`"
    copy = tmp_path / unit.name
    copy.write_text(text.replace(INSTALLED_BINARY, str(pollen)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        # Messages about the host's own units are not ours to fix.
        if unit.name in line or "pollen" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_env_file_lists_exactly_the_config_keys() -> None:
    text = (SYSTEMD / "pollen.env").read_text()
    names = set(re.findall(r"^#?\s*(POLLEN_[A-Z0-9_]+)=", text, flags=re.M))
    assert names == set(ENV_VARS)
    for key in KEYS:
        assert f"#{key.env}={key.default_text()}\n" in text, f"{key.env} default out of date"
    assert CONFIG_ENV in names


def test_units_use_only_config_env_names() -> None:
    for unit in units():
        for name in re.findall(r"\b(POLLEN_[A-Z0-9_]+)=", unit.read_text()):
            assert name in ENV_VARS, f"{unit.name} sets unknown {name}"
