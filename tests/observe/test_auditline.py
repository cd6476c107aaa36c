"""The audit line, byte for byte as docs/REFERENCE.md shows it."""

from __future__ import annotations

import calendar
import errno
import time

import pytest

from agent.observe.auditline import (
    LINE_RE,
    AuditRecord,
    blob_pathname,
    failure_size,
    format_line,
    microseconds,
    url_pathname,
)

SPEC_EXAMPLE_TIME = calendar.timegm((2022, 8, 30, 15, 44, 52, 0, 0, 0))


def record(**kw: object) -> AuditRecord:
    fields: dict[str, object] = {
        "when": SPEC_EXAMPLE_TIME,
        "task": 0x00007FBA247C5280,
        "op": "download",
        "pathname": "/https://reg.example.com/v2/app/blobs/sha256:" + "0" * 64,
        "offset": 125829120,
        "size": 2097152,
        "latency_us": 267172,
    }
    fields.update(kw)
    return AuditRecord(**fields)  # type: ignore[arg-type]


def test_the_spec_example_exactly() -> None:
    line = format_line(record(), localtime=time.gmtime)
    assert line == (
        "2022/08/30 15:44:52|AUDIT|th=00007FBA247C5280|download[pathname=/https://"
        "reg.example.com/v2/app/blobs/sha256:" + "0" * 64 + "][offset=125829120]"
        "[size=2097152][latency=267172]"
    )
    m = LINE_RE.fullmatch(line)
    assert m is not None
    assert (m["op"], m["offset"], m["size"], m["latency"]) == (
        "download",
        "125829120",
        "2097152",
        "267172",
    )


@pytest.mark.parametrize(
    "op", ["http:pread", "rpc:stat", "rpc:pread", "download", "filewrite", "fileread"]
)
def test_every_op_code_formats_and_parses(op: str) -> None:
    line = format_line(record(op=op, size=-5, task=1), localtime=time.gmtime)
    m = LINE_RE.fullmatch(line)
    assert m is not None and m["op"] == op and m["size"] == "-5"
    assert "|th=0000000000000001|" in line


def test_local_time_by_default() -> None:
    line = format_line(record())
    assert line.startswith(time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(SPEC_EXAMPLE_TIME)))


def test_unknown_op_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown audit op"):
        record(op="write")


def test_a_line_stays_one_line() -> None:
    line = format_line(record(pathname="/a\nb\rc"), localtime=time.gmtime)
    assert "\n" not in line and "\r" not in line and "/a%0Ab%0Dc" in line


def test_task_and_latency_are_bounded() -> None:
    line = format_line(record(task=-1, latency_us=-3), localtime=time.gmtime)
    assert "|th=FFFFFFFFFFFFFFFF|" in line and line.endswith("[latency=0]")


def test_failure_size_is_minus_errno_where_known() -> None:
    assert failure_size(OSError(errno.ENOSPC, "disk full")) == -errno.ENOSPC
    try:
        try:
            raise ConnectionResetError(errno.ECONNRESET, "reset")
        except OSError as inner:
            raise RuntimeError("body broke") from inner
    except RuntimeError as outer:
        assert failure_size(outer) == -errno.ECONNRESET
    assert failure_size(RuntimeError("no errno")) == -1
    assert failure_size(None) == -1


def test_url_pathname_drops_query_credentials_and_default_port() -> None:
    assert (
        url_pathname("https://bucket.oss.example.com:443/docker/blob?Signature=abc&Expires=1")
        == "/https://bucket.oss.example.com/docker/blob"
    )
    assert url_pathname("http://user:pw@127.0.0.1:5000/v2/x") == "/http://127.0.0.1:5000/v2/x"
    assert url_pathname("http://[::1]:80/o#frag") == "/http://[::1]/o"


def test_blob_pathname() -> None:
    assert (
        blob_pathname("https", "reg.example.com", "team/app", "sha256:ab")
        == "/https://reg.example.com/v2/team/app/blobs/sha256:ab"
    )


def test_microseconds() -> None:
    assert microseconds(0.267172) == 267172
    assert microseconds(-0.5) == 0
