"""Tests for agent/cli.py: the `pollen` command's parsing, role and config handling.

`main` is called in-process with the environment set through monkeypatch; nothing here starts
a daemon (the role commands are only run up to `--print-config` or a config error).
"""

from __future__ import annotations

import json
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


def test_preheat_without_roots_names_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POLLEN_UPSTREAMS", "http://127.0.0.1:5000")
    assert main(["preheat", "127.0.0.1:5000/team/app:v1"]) == 2
    assert "POLLEN_ROOTS" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["reg.example.com/team/app:v1"], "registry 'reg.example.com' of image"),
        (["--platform", "amd64", "127.0.0.1:5000/app"], "--platform: platform must be"),
        (["127.0.0.1:5000/Bad"], "bad repository name"),
        (["--creds", "alice", "127.0.0.1:5000/app"], "--creds must be USER:PASSWORD"),
        (["--timeout", "soon", "127.0.0.1:5000/app"], "soon"),
    ],
)
def test_preheat_refuses_what_must_change_before_contacting_anything(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    words: str,
) -> None:
    """Checked before any registry or root is contacted (the roots here do not exist)."""
    monkeypatch.setenv("POLLEN_UPSTREAMS", "http://127.0.0.1:5000")
    monkeypatch.setenv("POLLEN_ROOTS", "192.0.2.1:65002")
    monkeypatch.setenv("POLLEN_CLUSTER_TOKEN", "t")
    assert main(["preheat", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pollen preheat: ") and words in err, err
    if "of image" in words:
        assert "POLLEN_UPSTREAMS" in err


def test_preheat_json_reports_a_refusal_as_a_document(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POLLEN_UPSTREAMS", "http://127.0.0.1:5000")
    assert main(["preheat", "--json", "127.0.0.1:5000/app"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and "POLLEN_ROOTS" in doc["error"]
