"""The audit log's line, exactly as the original writes it (docs/REFERENCE.md, "Audit log"); pure.

    2022/08/30 15:44:52|AUDIT|th=00007FBA247C5280|download[pathname=/https://reg.example.com/v2/app/blobs/sha256:...][offset=125829120][size=2097152][latency=267172]

Local time to the second, ``AUDIT``, ``th=`` and 16 upper-case hex digits naming the task that
did the operation, the op code, then the operation's pathname, offset and size in bytes (size
negative on failure: ``-errno`` where one is known, else ``-1``) and its latency in µs.

What each op code's pathname is (the original's names; Pollen's meanings):

- ``http:pread`` -- a blob response on the proxy port (one line per response, offset = the
  first byte of the range): ``/<upstream base URL>/v2/<repo>/blobs/<digest>``.
- ``download`` -- a chunk's bytes from the upstream (one line per chunk): ``/`` + the URL
  fetched, the registry's or the object-storage URL it redirected to, without its query
  (a pre-signed URL's query is a credential).
- ``rpc:stat`` / ``rpc:pread`` -- a chunk's length / bytes served on the P2P port: the request
  path, ``/p2p/v1/chunk/<digest>/<index>``; offset is the chunk's offset in the layer.
- ``filewrite`` / ``fileread`` -- a chunk written to / read from the cache: the cache's data
  file of the layer; a read that fails its checksum is logged with size ``-1``.
"""

from __future__ import annotations

import errno as errno_module
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

HTTP_PREAD = "http:pread"
RPC_STAT = "rpc:stat"
RPC_PREAD = "rpc:pread"
DOWNLOAD = "download"
FILEWRITE = "filewrite"
FILEREAD = "fileread"
OPS = frozenset({HTTP_PREAD, RPC_STAT, RPC_PREAD, DOWNLOAD, FILEWRITE, FILEREAD})

TIME_FORMAT = "%Y/%m/%d %H:%M:%S"
TASK_MASK = (1 << 64) - 1

#: One audit line; what a log pipeline (or a test) matches.
LINE_RE = re.compile(
    r"(?P<time>\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2})\|AUDIT\|th=(?P<task>[0-9A-F]{16})\|"
    r"(?P<op>http:pread|rpc:stat|rpc:pread|download|filewrite|fileread)"
    r"\[pathname=(?P<pathname>[^\r\n]*?)\]\[offset=(?P<offset>-?\d+)\]"
    r"\[size=(?P<size>-?\d+)\]\[latency=(?P<latency>\d+)\]"
)


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditRecord:
    """One operation, as the data path hands it over (formatting happens later, off it)."""

    when: float  # unix time
    task: int
    op: str
    pathname: str
    offset: int
    size: int  # bytes, negative on failure
    latency_us: int

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown audit op {self.op!r}")


def format_line(
    record: AuditRecord, *, localtime: Callable[[float], time.struct_time] = time.localtime
) -> str:
    """The line, without its newline."""
    stamp = time.strftime(TIME_FORMAT, localtime(record.when))
    pathname = record.pathname.replace("\r", "%0D").replace("\n", "%0A")  # one line, always
    return (
        f"{stamp}|AUDIT|th={record.task & TASK_MASK:016X}|{record.op}"
        f"[pathname={pathname}][offset={record.offset}][size={record.size}]"
        f"[latency={max(0, record.latency_us)}]"
    )


def failure_size(exc: BaseException | None) -> int:
    """The size of a failed operation: ``-errno`` when the failure carries one, else -1."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "errno", None)
        if isinstance(code, int) and code > 0:
            return -code
        exc = exc.__cause__ or exc.__context__
    return -1


NOT_HELD = -errno_module.ENOENT  # a chunk asked of a node that does not hold it


def url_pathname(url: str) -> str:
    """``/`` + a URL without query or fragment (object-storage URLs sign in the query)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]  # never a userinfo credential
    default = {"https": ":443", "http": ":80"}.get(parts.scheme)
    if default and netloc.endswith(default):
        netloc = netloc[: -len(default)]
    return "/" + urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def blob_pathname(scheme: str, host: str, repo: str, digest: str) -> str:
    """The pathname of a layer at its upstream: ``/https://<host>/v2/<repo>/blobs/<digest>``
    (`host` with its port when it is not the scheme's default)."""
    return f"/{scheme}://{host}/v2/{repo}/blobs/{digest}"


def microseconds(seconds: float) -> int:
    return max(0, round(seconds * 1_000_000))
