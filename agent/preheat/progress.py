"""What `pollen preheat` shows, without I/O: each blob's state and the ways to print it.

Each blob goes ``waiting`` (for one of the preheat's slots) → ``asking`` (its root has not
answered yet) → ``fetching`` (the root's download is under way) → ``fetched``, or straight to
``cached`` (the root had it already), or ``failed``. The command prints this three ways:

- on a terminal, a frame with a progress bar per blob, redrawn in place (:func:`frame`);
- otherwise plain lines as things happen: a blob starting, every quarter of it, its end
  (:class:`PlainLog`), for logs and CI;
- with ``--json``, one document at the end (:func:`json_document`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

FINISHED = ("fetched", "cached", "failed")
BAR_WIDTH = 24
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


@dataclass(kw_only=True)
class BlobState:
    """One blob of the preheat: where it is, at which root, since when."""

    digest: str
    size: int  # as the manifest says
    kind: str  # "config" or "layer"
    images: list[str] = field(default_factory=list)
    root: str | None = None
    state: str = "waiting"
    stored: int = 0
    error: str | None = None
    started: float | None = None
    ended: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def asking(self, root: str, now: float) -> None:
        """A request for this blob went to `root`."""
        self.root = root
        if self.started is None:
            self.started = now
        if self.state == "waiting":
            self.state = "asking"

    def answered(
        self, *, size: int | None, stored: int, complete: bool, cached: bool, now: float
    ) -> None:
        """The root's reply (a ``PreheatReply``'s fields)."""
        if size is not None:
            self.size = size
        self.stored = stored
        if complete:
            # Cached only when the first answer said so: a fetch that this run saw is ours.
            self.state = "cached" if cached and self.state == "asking" else "fetched"
            self.stored = self.size
            self.ended = now
        else:
            self.state = "fetching"

    def fail(self, error: str, now: float) -> None:
        self.state, self.error, self.ended = "failed", error, now
        if self.started is None:
            self.started = now

    def seconds(self, now: float) -> float:
        if self.started is None:
            return 0.0
        return (self.ended if self.ended is not None else now) - self.started


def format_bytes(n: float) -> str:
    """1536 → "1.5 KiB"."""
    value, unit = float(n), 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return f"{int(value)} B" if unit == 0 else f"{value:.1f} {_UNITS[unit]}"


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[#########...............]`` for done/total."""
    filled = width if total <= 0 else min(width, done * width // total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def short(digest: str) -> str:
    """``sha256:0123456789ab``: enough of a digest to tell blobs apart."""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}:{hexpart[:12]}"


def _status(blob: BlobState, now: float) -> str:
    if blob.state == "failed":
        return f"failed: {blob.error}"
    if blob.state in ("fetched", "cached"):
        return f"{blob.state} in {blob.seconds(now):.1f} s"
    return blob.state


def frame(blobs: Sequence[BlobState], now: float) -> list[str]:
    """One line per blob, for a terminal: bar, state or share, bytes, root (the least
    useful part last, where a narrow terminal cuts the line)."""
    lines = []
    for blob in blobs:
        head = f"{short(blob.digest)} {blob.kind:<6} {bar(blob.stored, blob.size, 20)}"
        if blob.state == "failed":
            lines.append(f"{head} failed: {blob.error}")
            continue
        if blob.state == "fetching" and blob.size:
            state = f"{blob.stored * 100 // blob.size:3d}%"
            amount = f"{format_bytes(blob.stored)} / {format_bytes(blob.size)}"
        elif blob.finished:
            state = blob.state
            amount = f"{format_bytes(blob.size)} in {blob.seconds(now):.1f} s"
        else:
            state, amount = blob.state, format_bytes(blob.size)
        root = f"  {blob.root}" if blob.root else ""
        lines.append(f"{head} {state:<7} {amount}{root}")
    return lines


class PlainLog:
    """Lines for a log as blobs move: a start, each quarter of a fetch, the end."""

    def __init__(self) -> None:
        self._told: dict[str, tuple[str, int]] = {}  # digest -> (state, quarter) last told

    def lines(self, blobs: Sequence[BlobState], now: float) -> list[str]:
        out = []
        for blob in blobs:
            fetching = blob.state == "fetching"
            quarter = blob.stored * 4 // blob.size if fetching and blob.size else 0
            told = self._told.get(blob.digest)
            if blob.state == "waiting" or told == (blob.state, quarter):
                continue
            if fetching and told is not None and told[0] == "fetching" and quarter < told[1]:
                continue  # a root that restarted the download: no news until it is back
            self._told[blob.digest] = (blob.state, quarter)
            name = f"{short(blob.digest)} {blob.kind} {format_bytes(blob.size)}"
            if blob.state == "asking":
                out.append(f"{name}: asking {blob.root}")
            elif blob.state == "fetching":
                out.append(f"{name}: {blob.root} has {quarter * 25}%")
            else:
                out.append(f"{name}: {_status(blob, now)} at {blob.root or 'no root'}")
        return out


def summary(blobs: Sequence[BlobState], images: int, seconds: float) -> str:
    """The last line: what was done, in how long."""
    counts = {state: sum(1 for b in blobs if b.state == state) for state in FINISHED}
    total = sum(b.size for b in blobs)
    what = f"{len(blobs)} blobs ({format_bytes(total)}) of {images} image(s)"
    if counts["failed"]:
        return (
            f"preheat failed: {counts['failed']} of {what} could not be preheated "
            f"({counts['fetched']} fetched, {counts['cached']} cached) in {seconds:.1f} s"
        )
    if not counts["fetched"]:
        return f"preheated {what}: all cached already, in {seconds:.1f} s"
    fetched = sum(b.size for b in blobs if b.state == "fetched")
    return (
        f"preheated {what} in {seconds:.1f} s: {counts['fetched']} fetched "
        f"({format_bytes(fetched)}), {counts['cached']} cached already"
    )


@dataclass(frozen=True)
class ImageReport:
    """An image as resolved, for the JSON document."""

    image: str
    registry: str
    repository: str
    reference: str
    manifests: tuple[tuple[str | None, str], ...]  # (platform or None, manifest digest)


def json_document(
    images: Sequence[ImageReport],
    blobs: Sequence[BlobState],
    seconds: float,
    *,
    now: float,
    warnings: Sequence[str] = (),
    error: str | None = None,
) -> dict[str, Any]:
    """``--json``'s one document: ``ok``, the images and their manifests, each blob's
    outcome (state ``fetched``, ``cached`` or ``failed``), the totals and any error."""
    ok = error is None and bool(blobs) and all(b.state in ("fetched", "cached") for b in blobs)
    return {
        "ok": ok,
        "error": error,
        "seconds": round(seconds, 3),
        "images": [
            {
                "image": i.image,
                "registry": i.registry,
                "repository": i.repository,
                "reference": i.reference,
                "manifests": [{"platform": p, "digest": d} for p, d in i.manifests],
            }
            for i in images
        ],
        "blobs": [
            {
                "digest": b.digest,
                "kind": b.kind,
                "size": b.size,
                "images": b.images,
                "root": b.root,
                "state": b.state,
                "seconds": round(b.seconds(now), 3) if b.started is not None else None,
                "error": b.error,
            }
            for b in blobs
        ],
        "fetched": sum(1 for b in blobs if b.state == "fetched"),
        "cached": sum(1 for b in blobs if b.state == "cached"),
        "failed": sum(1 for b in blobs if b.state == "failed"),
        "bytes": sum(b.size for b in blobs),
        "warnings": list(warnings),
    }
