"""Tests for agent/core/config.py: the table, precedence, key errors and the checks across keys.

Pure: environments are plain dicts and config files are written under tmp_path; nothing reads
os.environ and nothing opens a network socket.  The value grammars themselves are tested in
test_values.py, test_hostport.py and test_upstream.py; here they are reached through
`load_config`, to check that each key uses the right one and that errors name the key.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest

from agent.core import config
from agent.core.config import ENV_VARS, KEY_BY_ATTR, KEYS, Config, help_text, load_config
from agent.core.errors import ConfigError
from agent.core.upstream import Upstream

SPEC_SAMPLE = """\
DeployConfig: {mode: agent, logDir: /var/log/pollen, logAudit: true, logAuditMode: file}
ExporterConfig: {enable: true, port: 65003, standaloneExporterPort: true}
proxyConcurrencyLimit: 128
p2pPort: 65002
throttleLimitMB: 512
cache: {capacity: 4294967296, aioEnable: 0, path: /var/cache/pollen}
upstreams: [registry.example.com, "http://127.0.0.1:5000"]
roots: ["10.0.0.11:65002", "10.0.0.12:65002"]
"""


def write(tmp_path: Path, text: str) -> dict[str, str]:
    """Write a config file and return an environment that names it."""
    path = tmp_path / "pollen.yaml"
    path.write_text(text)
    return {"POLLEN_CONFIG": str(path)}


def error_for(environ: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(environ)
    return info.value


# --- the table ------------------------------------------------------------------------------


def test_defaults_equal_spec_table() -> None:
    cfg = load_config({})
    hub = Upstream("https", "registry-1.docker.io", 443)
    assert cfg.mode == "agent"
    assert cfg.proxy_concurrency_limit == 128
    assert cfg.p2p_port == 65002
    assert cfg.cache_capacity == 4294967296
    assert cfg.cache_aio_enable is False
    assert cfg.exporter_enable is False
    assert cfg.exporter_port == 65003
    assert cfg.exporter_standalone_port is True
    assert cfg.throttle_limit_mb == 512
    assert cfg.log_dir == "/var/log/pollen"
    assert cfg.log_audit is False
    assert cfg.log_audit_mode == "stdout"
    assert cfg.proxy_port == 65001
    assert cfg.listen_address == "0.0.0.0"
    assert cfg.node_ip == ""  # detected by the daemon
    assert cfg.cache_path == "/var/cache/pollen"
    assert cfg.cache_chunk_size == 4 * 1024 * 1024
    assert cfg.cache_queue_depth == 32
    assert cfg.upstreams == (hub,)
    assert cfg.default_upstream == hub
    assert cfg.upstream_ca_file == ""
    assert cfg.auth_cache_ttl == 60.0
    assert cfg.roots == ()
    assert cfg.cluster_token == ""
    assert (cfg.p2p_tls_ca, cfg.p2p_tls_cert, cfg.p2p_tls_key) == ("", "", "")
    assert (cfg.tls_cert, cfg.tls_key) == ("", "")
    assert cfg.tls_reload_interval == 5.0
    assert cfg.webhook_port == 8443
    assert cfg.webhook_registries == ("*.cr.aliyuncs.com",)
    assert cfg.webhook_endpoint_port == 65001
    # Keys beyond SPEC's table, for later issues.
    assert cfg.cache_io_engine == "auto"
    assert (cfg.read_timeout, cfg.idle_timeout, cfg.shutdown_grace) == (30.0, 60.0, 10.0)
    assert (cfg.upstream_timeout, cfg.upstream_retries) == (30.0, 3)
    assert cfg.cache_write_retry == 30.0
    assert cfg.labels == ()
    assert all(source == "default" for *_, source in cfg.describe())


def test_spec_env_vars_and_file_keys_are_all_present() -> None:
    spec = {
        "POLLEN_MODE": "DeployConfig.mode",
        "POLLEN_PROXY_CONCURRENCY_LIMIT": "proxyConcurrencyLimit",
        "POLLEN_P2P_PORT": "p2pPort",
        "POLLEN_CACHE_CAPACITY": "cache.capacity",
        "POLLEN_CACHE_AIO_ENABLE": "cache.aioEnable",
        "POLLEN_EXPORTER_ENABLE": "exporter.enable",
        "POLLEN_EXPORTER_PORT": "exporter.port",
        "POLLEN_EXPORTER_STANDALONE_PORT": "ExporterConfig.standaloneExporterPort",
        "POLLEN_THROTTLE_LIMIT_MB": "throttleLimitMB",
        "POLLEN_LOG_DIR": "DeployConfig.logDir",
        "POLLEN_LOG_AUDIT": "DeployConfig.logAudit",
        "POLLEN_LOG_AUDIT_MODE": "DeployConfig.logAuditMode",
        "POLLEN_PROXY_PORT": "proxyPort",
        "POLLEN_LISTEN_ADDRESS": "listenAddress",
        "POLLEN_NODE_IP": "nodeIP",
        "POLLEN_CACHE_PATH": "cache.path",
        "POLLEN_CACHE_CHUNK_SIZE": "cache.chunkSize",
        "POLLEN_CACHE_QUEUE_DEPTH": "cache.queueDepth",
        "POLLEN_UPSTREAMS": "upstreams",
        "POLLEN_DEFAULT_UPSTREAM": "defaultUpstream",
        "POLLEN_UPSTREAM_CA_FILE": "upstreamCAFile",
        "POLLEN_AUTH_CACHE_TTL": "authCacheTTL",
        "POLLEN_ROOTS": "roots",
        "POLLEN_PARENT_ROOTS": "parentRoots",
        "POLLEN_CLUSTER_TOKEN": "clusterToken",
        "POLLEN_P2P_TLS_CA": "p2p.tls.ca",
        "POLLEN_P2P_TLS_CERT": "p2p.tls.cert",
        "POLLEN_P2P_TLS_KEY": "p2p.tls.key",
        "POLLEN_TLS_CERT": "tls.cert",
        "POLLEN_TLS_KEY": "tls.key",
        "POLLEN_TLS_RELOAD_INTERVAL": "tls.reloadInterval",
        "POLLEN_WEBHOOK_PORT": "webhook.port",
        "POLLEN_WEBHOOK_REGISTRIES": "webhook.registries",
        "POLLEN_WEBHOOK_ENDPOINT_PORT": "webhook.endpointPort",
        "POLLEN_CACHE_IO_ENGINE": "cache.ioEngine",
        "POLLEN_READ_TIMEOUT": "readTimeout",
        "POLLEN_IDLE_TIMEOUT": "idleTimeout",
        "POLLEN_SEND_TIMEOUT": "sendTimeout",
        "POLLEN_PROXY_MAX_CONNECTIONS": "proxyMaxConnections",
        "POLLEN_P2P_MAX_CONNECTIONS": "p2pMaxConnections",
        "POLLEN_MAX_CLIENT_CONNECTIONS": "maxClientConnections",
        "POLLEN_PROXY_MAX_RESPONSES": "proxyMaxResponses",
        "POLLEN_MANIFEST_FETCH_LIMIT": "manifestFetchLimit",
        "POLLEN_SLOW_READER_TIMEOUT": "slowReaderTimeout",
        "POLLEN_SHUTDOWN_GRACE": "shutdownGrace",
        "POLLEN_UPSTREAM_TIMEOUT": "upstreamTimeout",
        "POLLEN_UPSTREAM_RETRIES": "upstreamRetries",
        "POLLEN_CACHE_WRITE_RETRY": "cache.writeRetry",
        "POLLEN_LABELS": "labels",
    }
    assert {k.env: k.file for k in KEYS} == spec
    assert ENV_VARS == {*spec, "POLLEN_CONFIG"}


def test_config_attributes_follow_the_table_with_matching_types() -> None:
    attrs = [f.name for f in dataclasses.fields(Config)][: len(KEYS)]
    assert attrs == [k.attr for k in KEYS]
    hints = typing.get_type_hints(Config, vars(config))
    cfg = load_config({})
    for key in KEYS:
        hint = hints[key.attr]
        origin = typing.get_origin(hint) or hint
        assert isinstance(getattr(cfg, key.attr), origin), key.attr


def test_every_key_has_help_unit_column_and_unique_names() -> None:
    assert len({k.env for k in KEYS}) == len(KEYS)
    names = [n for k in KEYS for n in (k.file, *k.aliases)]
    assert len(set(names)) == len(names)
    for key in KEYS:
        assert key.help and key.env.startswith("POLLEN_")


def test_effective_values_format_and_parse_back() -> None:
    """describe() output is valid input: each value written as text parses to itself."""
    cfg = load_config(
        {
            "POLLEN_UPSTREAMS": "http://[::1]:5000,reg.example:8443,docker.io",
            "POLLEN_ROOTS": "roots.pollen.svc",
            "POLLEN_CLUSTER_TOKEN": "s3cret",
            "POLLEN_LABELS": "zone=a,rack=7",
            "POLLEN_THROTTLE_LIMIT_MB": "0.5",
            "POLLEN_AUTH_CACHE_TTL": "250ms",
        }
    )
    for key in KEYS:
        value = getattr(cfg, key.attr)
        assert key.parse(key.fmt(value)) == value, key.file


# --- precedence, aliases, file --------------------------------------------------------------


def test_env_beats_file_beats_default(tmp_path: Path) -> None:
    env = write(tmp_path, "proxyPort: 7000\np2pPort: 7001\n")
    env["POLLEN_PROXY_PORT"] = "8000"
    cfg = load_config(env)
    assert cfg.proxy_port == 8000
    assert cfg.p2p_port == 7001
    assert cfg.exporter_port == 65003
    assert cfg.source("proxy_port") == "env"
    assert cfg.source("p2p_port") == "file"
    assert cfg.source("exporter_port") == "default"
    assert cfg.config_file == env["POLLEN_CONFIG"]


def test_set_but_empty_env_var_wins(tmp_path: Path) -> None:
    env = write(tmp_path, 'nodeIP: "10.1.2.3"\n')
    assert load_config(env).node_ip == "10.1.2.3"
    assert load_config({**env, "POLLEN_NODE_IP": ""}).node_ip == ""


def test_empty_yaml_value_counts_as_absent(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "nodeIP:\ncache:\n"))
    assert cfg.node_ip == "" and cfg.source("node_ip") == "default"


@pytest.mark.parametrize(
    ("text", "attr", "value"),
    [
        ("exporter: {enable: true}", "exporter_enable", True),
        ("ExporterConfig: {enable: true}", "exporter_enable", True),
        ("exporter: {port: 9100}", "exporter_port", 9100),
        ("ExporterConfig: {port: 9100}", "exporter_port", 9100),
        ("ExporterConfig: {standaloneExporterPort: false}", "exporter_standalone_port", False),
    ],
)
def test_aliases(tmp_path: Path, text: str, attr: str, value: object) -> None:
    assert getattr(load_config(write(tmp_path, text)), attr) == value


def test_alias_and_key_both_set_is_an_error(tmp_path: Path) -> None:
    err = error_for(write(tmp_path, "exporter: {port: 1}\nExporterConfig: {port: 2}\n"))
    assert "exporter.port" in str(err) and "ExporterConfig.port" in str(err)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("cache: {capasity: 1}", "cache.capasity"),
        ("proxyport: 1", "proxyport"),
        ("nope: {deeper: 1}", "nope"),
        ("cache: 5", "cache"),
        ("DeployConfig: {mode: agent, colour: red}", "DeployConfig.colour"),
    ],
)
def test_unknown_file_key_is_named(tmp_path: Path, text: str, named: str) -> None:
    err = error_for(write(tmp_path, text))
    assert err.key == named
    assert f"config {named}:" in str(err)


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    err = error_for(write(tmp_path, "cache: {capasity: 1}"))
    assert "did you mean cache.capacity" in str(err)


@pytest.mark.parametrize(
    "text", ["cache: {capacity: [1, 2", "just a string", "- a\n- b\n", "\tbad: tab"]
)
def test_invalid_yaml_names_pollen_config(tmp_path: Path, text: str) -> None:
    err = error_for(write(tmp_path, text))
    assert err.key == "POLLEN_CONFIG"


def test_missing_file_names_pollen_config(tmp_path: Path) -> None:
    err = error_for({"POLLEN_CONFIG": str(tmp_path / "absent.yaml")})
    assert err.key == "POLLEN_CONFIG" and "absent.yaml" in str(err)


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == load_config({})


def test_spec_sample_loads(tmp_path: Path) -> None:
    # The sample sets roots without clusterToken, which is required with roots: it comes
    # from the environment, where a secret belongs.
    env = write(tmp_path, SPEC_SAMPLE)
    assert error_for(env).key == "clusterToken"
    cfg = load_config({**env, "POLLEN_CLUSTER_TOKEN": "t0ken"})
    assert cfg.mode == "agent"
    assert cfg.log_audit is True and cfg.log_audit_mode == "file"
    assert cfg.exporter_enable is True and cfg.exporter_port == 65003
    assert cfg.exporter_standalone_port is True
    assert cfg.cache_capacity == 4294967296 and cfg.cache_aio_enable is False
    assert cfg.upstreams == (
        Upstream("https", "registry.example.com", 443),
        Upstream("http", "127.0.0.1", 5000),
    )
    assert cfg.default_upstream == cfg.upstreams[0]
    assert cfg.roots == ("10.0.0.11:65002", "10.0.0.12:65002")
    assert cfg.p2p_enabled
    assert cfg.source("cache_capacity") == "file"
    assert cfg.source("cluster_token") == "env"


# --- error messages -------------------------------------------------------------------------


def test_message_names_file_key_and_env_var() -> None:
    err = error_for({"POLLEN_CACHE_CAPACITY": "lots"})
    assert str(err) == (
        "config cache.capacity (POLLEN_CACHE_CAPACITY): "
        "expected a size like 4GiB or 4294967296 "
        "(units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB), got 'lots'"
    )
    assert err.key == "cache.capacity"


BAD_VALUES = {
    "mode": "leaf",
    "proxy_concurrency_limit": "0",
    "p2p_port": "65536",
    "cache_capacity": "-1",
    "cache_aio_enable": "maybe",
    "cache_io_engine": "mmap",
    "exporter_enable": "2",
    "exporter_port": "http",
    "exporter_standalone_port": "",
    "throttle_limit_mb": "0",
    "log_dir": "",
    "log_audit": "enabled",
    "log_audit_mode": "syslog",
    "proxy_port": "-1",
    "listen_address": "localhost",
    "node_ip": "10.0.0.256",
    "cache_path": " ",
    "cache_chunk_size": "0",
    "cache_queue_depth": "many",
    "upstreams": "ftp://reg.example",
    "default_upstream": "https://",
    "upstream_ca_file": "/nonexistent/ca.pem",
    "auth_cache_ttl": "-5s",
    "roots": "a.example,b.example",
    "parent_roots": "a.example,b.example",
    "cluster_token": None,  # any string is a token; a bad one only comes from YAML
    "p2p_tls_ca": "/nonexistent/ca.pem",
    "p2p_tls_cert": "/nonexistent/cert.pem",
    "p2p_tls_key": "/nonexistent/key.pem",
    "tls_cert": "/nonexistent/cert.pem",
    "tls_key": "/nonexistent/key.pem",
    "tls_reload_interval": "soon",
    "webhook_port": "8443.0",
    "webhook_registries": "*bad*",
    "webhook_endpoint_port": "x",
    "read_timeout": "0",
    "idle_timeout": "1 minute",
    "send_timeout": "0",
    "proxy_max_connections": "0",
    "p2p_max_connections": "-1",
    "max_client_connections": "many",
    "proxy_max_responses": "0",
    "manifest_fetch_limit": "1.5",
    "slow_reader_timeout": "-3s",
    "shutdown_grace": "soon",
    "upstream_timeout": "0s",
    "cache_write_retry": "0s",
    "upstream_retries": "-1",
    "labels": "node=x",
}


def test_bad_values_cover_every_key() -> None:
    assert set(BAD_VALUES) == {k.attr for k in KEYS}


@pytest.mark.parametrize("attr", [a for a, v in BAD_VALUES.items() if v is not None])
def test_bad_env_value_names_key_and_env(attr: str) -> None:
    key = KEY_BY_ATTR[attr]
    value = BAD_VALUES[attr]
    assert value is not None
    err = error_for({key.env: value})
    assert key.file in str(err) and key.env in str(err)
    assert err.key == key.file


@pytest.mark.parametrize("attr", [a for a, v in BAD_VALUES.items() if v is not None])
def test_bad_file_value_names_key_and_env(tmp_path: Path, attr: str) -> None:
    key = KEY_BY_ATTR[attr]
    *parents, leaf = key.file.split(".")
    text = f"{leaf}: {json.dumps(BAD_VALUES[attr])}"
    for parent in reversed(parents):
        text = f"{parent}: {{{text}}}"
    err = error_for(write(tmp_path, text))
    assert key.file in str(err) and key.env in str(err)
    assert err.key == key.file


def test_bad_yaml_type_for_token_is_not_echoed(tmp_path: Path) -> None:
    err = error_for(write(tmp_path, "clusterToken: [hunter2]"))
    assert "clusterToken (POLLEN_CLUSTER_TOKEN)" in str(err)
    assert "hunter2" not in str(err)


def test_kubernetes_service_link_gets_a_hint() -> None:
    err = error_for({"POLLEN_WEBHOOK_PORT": "tcp://10.96.0.7:443"})
    assert "enableServiceLinks" in str(err)


@pytest.mark.parametrize(
    ("attr", "text", "want"),
    [
        ("proxy_port", "0", 0),
        ("proxy_port", "65535", 65535),
        ("webhook_port", " 443 ", 443),
        ("proxy_concurrency_limit", "1", 1),
        ("upstream_retries", "0", 0),
        ("throttle_limit_mb", "0.5", 0.5),
        ("throttle_limit_mb", "1024", 1024.0),
        ("mode", "Root", "root"),
        ("log_audit_mode", "file", "file"),
        ("cache_io_engine", "io_uring", "io_uring"),
        ("listen_address", "::", "::"),
        ("listen_address", "[::1]", "::1"),
        ("listen_address", "", ""),
        ("node_ip", "fd00::0:1", "fd00::1"),
        ("shutdown_grace", "0", 0.0),
        ("auth_cache_ttl", "0", 0.0),
        ("webhook_registries", "*.CR.aliyuncs.com, reg.example:5000,", ("*.cr.aliyuncs.com",
                                                                      "reg.example:5000")),
        ("labels", "zone=a, rack = 7", (("zone", "a"), ("rack", "7"))),
        ("labels", "", ()),
    ],
)  # fmt: skip
def test_key_parsers_good(attr: str, text: str, want: object) -> None:
    token = {"POLLEN_CLUSTER_TOKEN": "t"}  # so that mode=root passes the check across keys
    assert getattr(load_config({**token, KEY_BY_ATTR[attr].env: text}), attr) == want


@pytest.mark.parametrize(
    ("attr", "yaml_value", "want"),
    [
        ("cache_capacity", "4294967296", 4294967296),
        ("cache_capacity", "4GiB", 4 << 30),
        ("cache_aio_enable", "1", True),
        ("cache_aio_enable", "yes", True),
        ("proxy_port", "'7000'", 7000),
        ("throttle_limit_mb", "0.25", 0.25),
        ("read_timeout", "1.5", 1.5),
        ("upstreams", "[a.example, 'http://b.example:81']",
         (Upstream("https", "a.example", 443), Upstream("http", "b.example", 81))),
        ("upstreams", "'a.example, b.example'",
         (Upstream("https", "a.example", 443), Upstream("https", "b.example", 443))),
        ("labels", "{zone: a, rack: 7}", (("zone", "a"), ("rack", "7"))),
        ("labels", "[zone=a]", (("zone", "a"),)),
    ],
)  # fmt: skip
def test_yaml_values(tmp_path: Path, attr: str, yaml_value: str, want: object) -> None:
    key = KEY_BY_ATTR[attr]
    *parents, leaf = key.file.split(".")
    text = f"{leaf}: {yaml_value}"
    for parent in reversed(parents):
        text = f"{parent}: {{{text}}}"
    assert getattr(load_config(write(tmp_path, text)), attr) == want


@pytest.mark.parametrize(
    ("text", "yaml_value"),
    [
        ("proxyPort", "true"),  # a YAML bool is not a port
        ("proxyPort", "1.0"),
        ("throttleLimitMB", "-3"),
        ("throttleLimitMB", ".inf"),
        ("upstreams", "[1]"),
        ("upstreams", "[]"),
        ("labels", "{node: x}"),
        ("labels", "[a=1, a=2]"),
    ],
)
def test_yaml_values_bad(tmp_path: Path, text: str, yaml_value: str) -> None:
    err = error_for(write(tmp_path, f"{text}: {yaml_value}"))
    assert err.key == text


# --- upstreams in the config ------------------------------------------------------------------


def test_bad_upstream_entry_is_named_with_the_key() -> None:
    err = error_for({"POLLEN_UPSTREAMS": "reg.example,ftp://bad.example"})
    assert "upstreams (POLLEN_UPSTREAMS)" in str(err)
    assert "ftp://bad.example" in str(err)


def test_ipv6_upstreams_from_env() -> None:
    cfg = load_config({"POLLEN_UPSTREAMS": "http://[::1]:5000,[2001:db8::5]:8443"})
    assert cfg.upstreams == (Upstream("http", "::1", 5000), Upstream("https", "2001:db8::5", 8443))
    assert [u.key for u in cfg.upstreams] == ["[::1]:5000", "[2001:db8::5]:8443"]


def test_duplicate_upstreams_rejected() -> None:
    err = error_for({"POLLEN_UPSTREAMS": "docker.io,registry-1.docker.io"})
    assert err.key == "upstreams"


# --- checks across keys ---------------------------------------------------------------------


def test_default_upstream_must_be_in_upstreams() -> None:
    err = error_for(
        {"POLLEN_UPSTREAMS": "a.example,b.example", "POLLEN_DEFAULT_UPSTREAM": "c.example"}
    )
    assert err.key == "defaultUpstream"
    assert "POLLEN_DEFAULT_UPSTREAM" in str(err) and "c.example" in str(err)


def test_default_upstream_matches_by_key_and_takes_the_entry() -> None:
    cfg = load_config(
        {
            "POLLEN_UPSTREAMS": "a.example,http://127.0.0.1:5000",
            "POLLEN_DEFAULT_UPSTREAM": "127.0.0.1:5000",
        }
    )
    assert cfg.default_upstream == Upstream("http", "127.0.0.1", 5000)
    cfg = load_config({"POLLEN_DEFAULT_UPSTREAM": "docker.io"})
    assert cfg.default_upstream == Upstream("https", "registry-1.docker.io", 443)
    assert cfg.source("default_upstream") == "env"


def test_roots_need_cluster_token() -> None:
    err = error_for({"POLLEN_ROOTS": "10.0.0.11:65002"})
    assert err.key == "clusterToken"
    assert "POLLEN_CLUSTER_TOKEN" in str(err) and "roots" in str(err)


def test_a_root_needs_cluster_token() -> None:
    err = error_for({"POLLEN_MODE": "root"})
    assert err.key == "clusterToken"
    assert "POLLEN_CLUSTER_TOKEN" in str(err) and "root" in str(err)
    cfg = load_config({"POLLEN_MODE": "root", "POLLEN_CLUSTER_TOKEN": "t"})
    assert cfg.mode == "root" and cfg.p2p_enabled


def test_parent_roots_belong_to_a_root() -> None:
    """`pollen root` sets the role after the file and environment are read, so the check
    runs when the role is final (the daemon calls it), naming the key."""
    token = {"POLLEN_CLUSTER_TOKEN": "t", "POLLEN_P2P_PORT": "7"}
    cfg = load_config({**token, "POLLEN_PARENT_ROOTS": "tier.pollen.svc"})
    with pytest.raises(ConfigError) as err:
        cfg.check_parent_roots()
    assert err.value.key == "parentRoots" and "POLLEN_PARENT_ROOTS" in str(err.value)
    root = dataclasses.replace(cfg, mode="root")
    root.check_parent_roots()
    assert root.parent_roots == ("tier.pollen.svc:7",)  # one DNS name takes p2pPort
    cfg = load_config({**token, "POLLEN_PARENT_ROOTS": "10.0.0.1:1,10.0.0.2:1"})
    assert cfg.parent_roots == ("10.0.0.1:1", "10.0.0.2:1")


def test_p2p_is_enabled_on_a_root_or_with_roots() -> None:
    token = {"POLLEN_CLUSTER_TOKEN": "t"}
    assert not load_config({}).p2p_enabled
    assert not load_config(token).p2p_enabled  # a token alone opens nothing
    assert load_config({**token, "POLLEN_ROOTS": "r.svc"}).p2p_enabled
    assert load_config({**token, "POLLEN_MODE": "root"}).p2p_enabled


def test_roots_forms() -> None:
    token = {"POLLEN_CLUSTER_TOKEN": "t"}
    cfg = load_config({**token, "POLLEN_ROOTS": "10.0.0.11:65002, [fd00::12]:65002"})
    assert cfg.roots == ("10.0.0.11:65002", "[fd00::12]:65002")
    cfg = load_config({**token, "POLLEN_ROOTS": "Pollen-Root.pollen.svc", "POLLEN_P2P_PORT": "7"})
    assert cfg.roots == ("pollen-root.pollen.svc:7",)
    assert load_config({**token, "POLLEN_ROOTS": ""}).roots == ()
    cfg = load_config({**token, "POLLEN_ROOTS": "[fd00::12]", "POLLEN_P2P_PORT": "7"})
    assert cfg.roots == ("[fd00::12]:7",)


@pytest.mark.parametrize(
    "roots", ["a.example,b.example:1", "10.0.0.1:65002,10.0.0.1:65002", "a.example:99999"]
)
def test_roots_bad(roots: str) -> None:
    err = error_for({"POLLEN_ROOTS": roots, "POLLEN_CLUSTER_TOKEN": "t"})
    assert err.key == "roots"


def test_portless_root_needs_a_p2p_port() -> None:
    err = error_for({"POLLEN_ROOTS": "r.svc", "POLLEN_CLUSTER_TOKEN": "t", "POLLEN_P2P_PORT": "0"})
    assert err.key == "roots"


@pytest.mark.parametrize(
    ("cert", "key"), [("tls_cert", "tls_key"), ("p2p_tls_cert", "p2p_tls_key")]
)
def test_tls_cert_and_key_go_together(tmp_path: Path, cert: str, key: str) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("-----BEGIN-----\n")
    cert_key, key_key = KEY_BY_ATTR[cert], KEY_BY_ATTR[key]
    assert error_for({cert_key.env: str(pem)}).key == key_key.file
    assert error_for({key_key.env: str(pem)}).key == cert_key.file
    cfg = load_config({cert_key.env: str(pem), key_key.env: str(pem)})
    assert getattr(cfg, cert) == getattr(cfg, key) == str(pem)


def test_tls_files_must_be_readable(tmp_path: Path) -> None:
    err = error_for({"POLLEN_UPSTREAM_CA_FILE": str(tmp_path)})  # a directory
    assert err.key == "upstreamCAFile"


def test_chunk_size_must_suit_o_direct_when_aio_is_on() -> None:
    assert load_config({"POLLEN_CACHE_CHUNK_SIZE": "1000"}).cache_chunk_size == 1000
    err = error_for({"POLLEN_CACHE_CHUNK_SIZE": "1000", "POLLEN_CACHE_AIO_ENABLE": "1"})
    assert err.key == "cache.chunkSize"


def test_ports_must_not_clash() -> None:
    assert error_for({"POLLEN_P2P_PORT": "65001"}).key == "p2pPort"
    both = {"POLLEN_EXPORTER_ENABLE": "1", "POLLEN_EXPORTER_PORT": "65001"}
    assert error_for(both).key == "exporter.port"
    # No clash when metrics ride on the proxy port, or with 0 (the OS picks each).
    load_config({**both, "POLLEN_EXPORTER_STANDALONE_PORT": "false"})
    load_config({"POLLEN_PROXY_PORT": "0", "POLLEN_P2P_PORT": "0"})


@pytest.mark.parametrize(
    ("aio", "engine", "want"),
    [
        ("1", "auto", ("io_uring", "aio", "pread")),
        ("0", "auto", ("pread",)),
        ("0", "aio", ("aio",)),
        ("1", "pread", ("pread",)),
    ],
)
def test_io_engines(aio: str, engine: str, want: tuple[str, ...]) -> None:
    cfg = load_config({"POLLEN_CACHE_AIO_ENABLE": aio, "POLLEN_CACHE_IO_ENGINE": engine})
    assert cfg.io_engines == want


def test_throttle_bytes_per_second() -> None:
    assert load_config({}).throttle_bytes_per_second == 512 * 1024 * 1024
    assert load_config({"POLLEN_THROTTLE_LIMIT_MB": "0.5"}).throttle_bytes_per_second == 524288


# --- the role the CLI sets: dataclasses.replace ----------------------------------------------


def test_replace_mode_root_without_token_names_cluster_token() -> None:
    """`pollen root` over a config with no token fails as load_config would, naming the key."""
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(load_config({}), mode="root")
    assert info.value.key == "clusterToken"
    assert str(info.value).startswith("config clusterToken (POLLEN_CLUSTER_TOKEN): ")


def test_replace_mode_sets_the_role_config_reports() -> None:
    agent = load_config({"POLLEN_CLUSTER_TOKEN": "t"})
    assert (agent.mode, agent.p2p_enabled) == ("agent", False)
    root = dataclasses.replace(agent, mode="root")
    assert (root.mode, root.p2p_enabled) == ("root", True)
    back = dataclasses.replace(root, mode="agent")
    assert back == agent and not back.p2p_enabled
    # What replace keeps: where each value came from, the file that was read, the token.
    assert root.sources == agent.sources and root.config_file == agent.config_file
    assert root.cluster_token == "t"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"p2p_port": 65001}, "p2pPort"),
        ({"tls_cert": "/etc/pollen/tls.crt"}, "tls.key"),
        ({"cache_aio_enable": True, "cache_chunk_size": 1000}, "cache.chunkSize"),
        ({"roots": ("10.0.0.11:65002",)}, "clusterToken"),
        ({"default_upstream": Upstream("https", "c.example", 443)}, "defaultUpstream"),
        ({"upstreams": (Upstream("https", "a.example", 443),)}, "defaultUpstream"),
    ],
)
def test_replace_runs_the_checks_across_keys(change: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(load_config({}), **change)
    assert info.value.key == key


# --- views ----------------------------------------------------------------------------------


def test_describe_masks_secrets_and_reports_sources(tmp_path: Path) -> None:
    env = write(tmp_path, "roots: ['10.0.0.11:65002']\n")
    env["POLLEN_CLUSTER_TOKEN"] = "hunter2"
    rows = {row[0]: row for row in load_config(env).describe()}
    assert len(rows) == len(KEYS)
    assert rows["clusterToken"] == ("clusterToken", "POLLEN_CLUSTER_TOKEN", "***", "env")
    assert rows["roots"] == ("roots", "POLLEN_ROOTS", "10.0.0.11:65002", "file")
    assert rows["cache.capacity"] == ("cache.capacity", "POLLEN_CACHE_CAPACITY", "4GiB", "default")
    assert "hunter2" not in repr(load_config(env).describe())


def test_as_dict_is_json_and_masked() -> None:
    cfg = load_config(
        {"POLLEN_CLUSTER_TOKEN": "hunter2", "POLLEN_ROOTS": "r.svc", "POLLEN_LABELS": "zone=a"}
    )
    data = json.loads(json.dumps(cfg.as_dict()))
    assert data["clusterToken"] == "***"
    assert data["upstreams"] == ["https://registry-1.docker.io"]
    assert data["defaultUpstream"] == "https://registry-1.docker.io"
    assert data["roots"] == ["r.svc:65002"]
    assert data["labels"] == {"zone": "a"}
    assert data["cache.capacity"] == 4294967296
    assert "hunter2" not in json.dumps(data)
    assert set(data) == {k.file for k in KEYS}


def test_repr_does_not_leak_the_token() -> None:
    cfg = load_config({"POLLEN_CLUSTER_TOKEN": "hunter2"})
    assert cfg.cluster_token == "hunter2"
    assert "hunter2" not in repr(cfg)


def test_help_text_lists_every_key() -> None:
    text = help_text()
    assert "POLLEN_CONFIG" in text
    for key in KEYS:
        assert key.env in text and key.file in text and key.help in text
        for alias in key.aliases:
            assert alias in text
    assert "default: 4GiB (bytes)" in text
    assert "default: detected" in text
    assert "default: first of upstreams" in text
