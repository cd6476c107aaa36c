"""Tests for agent/core/values.py: the value grammars every config key is written in.

Pure: parsers take strings or YAML-like values and return typed values or raise ValueError.
Round trips (format, then parse) are checked with hypothesis, because `--print-config` output
must be valid input.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.values import (
    choice,
    format_duration,
    format_labels,
    format_list,
    format_number,
    format_size,
    parse_bool,
    parse_duration,
    parse_labels,
    parse_nonnegative_int,
    parse_optional_ip,
    parse_path,
    parse_port,
    parse_positive_duration,
    parse_positive_int,
    parse_positive_number,
    parse_positive_size,
    parse_readable_file,
    parse_size,
    parse_string,
    show_value,
    split_list,
)

# --- sizes, booleans, durations ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("0", 0),
        ("4294967296", 4294967296),
        (" 17 ", 17),
        ("512B", 512),
        ("4KiB", 4096),
        ("4MiB", 4 << 20),
        ("4GiB", 4 << 30),
        ("1TiB", 1 << 40),
        ("4 GiB", 4 << 30),
        ("1.5KiB", 1536),
        ("4KB", 4000),
        ("4MB", 4_000_000),
        ("4GB", 4_000_000_000),
        ("2TB", 2 * 10**12),
        (4294967296, 4294967296),
        (8.0, 8),
    ],
)
def test_parse_size_good(text: object, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize(
    "text",
    [
        "", "lots", "-1", -1, "4G", "4g", "4gib", "4GIB", "4Gi", "4kb", "4 K", "0.5B", "1.1KiB",
        "4GiB4", "4 2", "+4", "1e9", True, 1.5, [], None, "٣",
    ],
)  # fmt: skip
def test_parse_size_bad(text: object) -> None:
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(text)


UNITS = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
         "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}  # fmt: skip


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(UNITS)))
def test_parse_size_round_trips_n_times_unit(n: int, unit: str) -> None:
    assert parse_size(f"{n}{unit}") == n * UNITS[unit]
    assert parse_size(f"{n} {unit}") == n * UNITS[unit]


@given(st.integers(min_value=0, max_value=2**64))
def test_format_size_round_trips(n: int) -> None:
    assert parse_size(format_size(n)) == n


def test_format_size_prefers_largest_exact_binary_unit() -> None:
    assert format_size(4294967296) == "4GiB"
    assert format_size(4_000_000_000) == "4GB"
    assert format_size(1536) == "1536"
    assert format_size(1024) == "1KiB"
    assert format_size(1000) == "1KB"
    assert format_size(512) == "512"
    assert format_size(0) == "0"


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("1", True), ("0", False), ("true", True), ("FALSE", False), ("Yes", True),
        ("no", False), ("on", True), (" off ", False), (True, True), (False, False),
        (1, True), (0, False),
    ],
)  # fmt: skip
def test_parse_bool_good(value: object, want: bool) -> None:
    assert parse_bool(value) is want


@pytest.mark.parametrize("value", ["", "2", "y", "enabled", 2, -1, None, 1.0, "truee"])
def test_parse_bool_bad(value: object) -> None:
    with pytest.raises(ValueError, match="expected a boolean"):
        parse_bool(value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30", 30.0), ("30s", 30.0), ("1.5s", 1.5), ("500ms", 0.5), ("5m", 300.0),
        ("1h", 3600.0), (" 2 m ", 120.0), ("0", 0.0), (45, 45.0), (0.25, 0.25),
    ],
)  # fmt: skip
def test_parse_duration_good(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["", "soon", "-1", "1m30s", "5 min", "1d", "30S", True, -2, float("inf"), None]
)
def test_parse_duration_bad(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


@given(
    st.one_of(
        st.integers(min_value=0, max_value=10**7).map(float),
        st.integers(min_value=0, max_value=10**7).map(lambda ms: ms / 1000),
        st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False),
    )
)
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_positive_size_and_duration_reject_zero() -> None:
    assert parse_positive_size("4KiB") == 4096
    assert parse_positive_duration("500ms") == 0.5
    with pytest.raises(ValueError, match="greater than 0"):
        parse_positive_size("0")
    with pytest.raises(ValueError, match="greater than 0"):
        parse_positive_duration("0s")


# --- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "want"), [("0", 0), (" 65535 ", 65535), (443, 443)])
def test_parse_port_good(value: object, want: int) -> None:
    assert parse_port(value) == want


@pytest.mark.parametrize("value", ["65536", "-1", "http", "80.0", 1.0, True, None])
def test_parse_port_bad(value: object) -> None:
    with pytest.raises(ValueError, match="expected a port 0..65535"):
        parse_port(value)


def test_parse_port_explains_kubernetes_service_links() -> None:
    with pytest.raises(ValueError, match="enableServiceLinks: false"):
        parse_port("tcp://10.96.0.7:443")


def test_whole_number_bounds() -> None:
    assert parse_positive_int("1") == 1
    assert parse_nonnegative_int("0") == 0
    with pytest.raises(ValueError, match=">= 1, got 0"):
        parse_positive_int("0")
    with pytest.raises(ValueError, match=">= 0"):
        parse_nonnegative_int(-1)


@pytest.mark.parametrize(("value", "want"), [("0.5", 0.5), (" 2 ", 2.0), (512, 512.0)])
def test_parse_positive_number_good(value: object, want: float) -> None:
    assert parse_positive_number(value) == want


@pytest.mark.parametrize("value", ["0", 0, "-1", "1e3", float("nan"), float("inf"), True, "x"])
def test_parse_positive_number_bad(value: object) -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        parse_positive_number(value)


@given(st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_format_number_round_trips(x: float) -> None:
    assert "e" not in format_number(x)
    assert parse_positive_number(format_number(x)) == x


# --- words, strings, paths, addresses ---------------------------------------------------------


def test_choice_is_case_blind_and_exact() -> None:
    parse = choice("agent", "root")
    assert parse(" Root ") == "root"
    with pytest.raises(ValueError, match="expected one of agent, root, got 'leaf'"):
        parse("leaf")


def test_parse_string_does_not_echo_a_secret() -> None:
    assert parse_string("s3cret") == "s3cret"
    with pytest.raises(ValueError) as info:
        parse_string(["hunter2"])
    assert "hunter2" not in str(info.value)


def test_parse_path_and_readable_file(tmp_path: Path) -> None:
    assert parse_path(" /var/cache ") == "/var/cache"
    with pytest.raises(ValueError, match="expected a path"):
        parse_path("  ")
    pem = tmp_path / "ca.pem"
    pem.write_text("x")
    assert parse_readable_file(str(pem)) == str(pem)
    assert parse_readable_file("") == ""
    with pytest.raises(ValueError, match="readable file"):
        parse_readable_file(str(tmp_path))  # a directory


@pytest.mark.parametrize(
    ("value", "want"),
    [("", ""), ("10.0.0.1", "10.0.0.1"), ("[::1]", "::1"), ("fd00::0:1", "fd00::1"), ("::", "::")],
)
def test_parse_optional_ip_good(value: str, want: str) -> None:
    assert parse_optional_ip(value) == want


@pytest.mark.parametrize("value", ["localhost", "10.0.0.256", "[::1", "fd00::1:5000:"])
def test_parse_optional_ip_bad(value: str) -> None:
    with pytest.raises(ValueError, match="expected an IPv4 or IPv6 address"):
        parse_optional_ip(value)


def test_show_value_cuts_long_values() -> None:
    assert show_value("x") == "'x'"
    assert len(show_value("y" * 500)) == 80 and show_value("y" * 500).endswith("...")


# --- lists and labels -------------------------------------------------------------------------


def test_split_list_forms() -> None:
    assert split_list(" a, ,b ,") == ["a", "b"]
    assert split_list(["a", " b "]) == ["a", "b"]
    assert split_list(None) == []
    assert format_list(("a", "b")) == "a,b"
    with pytest.raises(ValueError, match="list of strings"):
        split_list(["a", 1])
    with pytest.raises(ValueError, match="comma list"):
        split_list(5)


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("zone=a, rack = 7", (("zone", "a"), ("rack", "7"))),
        ({"zone": "a", "rack": 7}, (("zone", "a"), ("rack", "7"))),
        (["zone=a"], (("zone", "a"),)),
        ("", ()),
    ],
)
def test_parse_labels_good(value: object, want: tuple[tuple[str, str], ...]) -> None:
    assert parse_labels(value) == want
    assert parse_labels(format_labels(want)) == want


@pytest.mark.parametrize(
    "value", ["node=x", "mode=y", "type=z", "__x=1", "9zone=a", "zone", "a=1,a=2", {"z": True}]
)
def test_parse_labels_bad(value: object) -> None:
    with pytest.raises(ValueError):
        parse_labels(value)
