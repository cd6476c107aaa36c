"""Tests for agent/cli.py: the `pollen` command's parsing, role and config handling.

`main` is called in-process with the environment set through monkeypatch; nothing here starts
a daemon (the role commands are only run up to `--print-config` or a config error).
"""

from __future__ import annotations

import os

import pytest

from agent.cli import main, with_role
from agent.core.config import load_config
from agent.core.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("POLLEN_"):
            monkeypatch.delenv(name)


def mode_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("DeployConfig.mode"))


def test_root_print_config_shows_the_role_the_command_sets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POLLEN_CLUSTER_TOKEN", "secret")
    assert main(["root", "--print-config"]) == 0
    out = capsys.readouterr().out
    line = mode_line(out)
    assert " root " in line and "(command line)" in line
    assert "secret" not in out  # the token is masked


def test_run_keeps_the_configured_mode(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POLLEN_MODE", "root")
    monkeypatch.setenv("POLLEN_CLUSTER_TOKEN", "secret")
    assert main(["run", "--print-config"]) == 0
    assert "(env)" in mode_line(capsys.readouterr().out)


def test_a_root_without_a_token_is_refused_naming_the_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["root", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "clusterToken" in err and "POLLEN_CLUSTER_TOKEN" in err


def test_a_bad_value_stops_start_up_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POLLEN_CACHE_CAPACITY", "lots")
    assert main(["agent", "--print-config"]) == 2
    assert "POLLEN_CACHE_CAPACITY" in capsys.readouterr().err


def test_with_role_sets_p2p_for_a_root_and_checks_again(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config({"POLLEN_CLUSTER_TOKEN": "t"})
    assert config.mode == "agent" and not config.p2p_enabled
    root = with_role(config, "root")
    assert root.mode == "root" and root.p2p_enabled and root.source("mode") == "command line"
    assert with_role(config, "run") is config
    with pytest.raises(ConfigError, match="clusterToken"):
        with_role(load_config({}), "root")


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: pollen" in capsys.readouterr().out


def test_help_config_lists_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help-config"]) == 0
    out = capsys.readouterr().out
    for env in ("POLLEN_CACHE_CAPACITY", "POLLEN_ROOTS", "POLLEN_CLUSTER_TOKEN"):
        assert env in out
