"""Disk benchmark: the cache's chunk I/O engines against fio doing the same pattern.

    .venv/bin/python bench/disk.py [--dir DIR] [--size 2GiB] [--chunk 4MiB] [--depth 32]
                                   [--rounds 3] [--engines io_uring,aio,pread]

For each engine (io_uring, aio, pread) one round
  - writes a fresh, preallocated file of --size in --chunk blocks with --depth operations in
    flight, O_DIRECT, the blocks taken in order by --depth tasks (what the cache does with
    cache.aioEnable=1), then reads it back the same way;
  - has fio do the same on the same directory: same block size and queue depth, direct=1,
    sequential write of a fresh (fallocated) file then read of it, with its matching engine:
    io_uring -> io_uring (nonvectored=1: plain READ/WRITE, as ours), aio -> libaio,
    pread -> psync (synchronous, so --depth jobs each doing a --depth'th of the file, as the
    pread engine runs --depth threads).
Runs are interleaved (ours and fio back to back, who goes first alternating by round) so drift
in the disk hits both alike, and the median of --rounds is reported: each engine's MB/s (10^6
bytes/s), fio's, their ratio (the goal is >= 0.8 for io_uring and aio), and CPU used per pass.
O_DIRECT bypasses the page cache, so nothing needs dropping between passes. Every file is
removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from agent.cache import engines, native
from agent.core.values import parse_size

MiB = 1 << 20
FIO_ENGINE = {"io_uring": "io_uring", "aio": "libaio", "pread": "psync"}


@dataclass
class Pass:
    """One timed pass: bytes per second, and CPU seconds per second of wall time."""

    rate: float
    cpu: float


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def pollen_pass(kind: str, path: Path, op: str, size: int, chunk: int, depth: int) -> Pass:
    """Write (fresh, preallocated) or read ``path`` with the engine ``kind``."""
    fd = native.open_file(path, write=True, create=True, direct=True)
    try:
        if op == "write":
            native.allocate(fd, 0, size)  # as the cache reserves a layer at admission
        count = size // chunk
        next_index = 0
        sources = []
        for i in range(depth):
            buffer = native.alloc_buffer(chunk)
            buffer[:] = os.urandom(64) * (chunk // 64)
            buffer[:8] = i.to_bytes(8, "little")
            sources.append(buffer)
        async with engines.open_engine(kind, depth, direct=True) as engine:

            async def worker(slot: int) -> None:
                nonlocal next_index
                while next_index < count:
                    index = next_index
                    next_index += 1
                    if op == "write":
                        await engine.write(fd, index * chunk, sources[slot])
                    else:
                        data = await engine.read(fd, index * chunk, chunk)
                        if len(data) != chunk:
                            raise RuntimeError(f"short read at chunk {index}: {len(data)} bytes")

            cpu0, start = cpu_seconds(), time.perf_counter()
            async with trio.open_nursery() as nursery:
                for slot in range(depth):
                    nursery.start_soon(worker, slot)
            elapsed = time.perf_counter() - start
            cpu = cpu_seconds() - cpu0
            stats = engine.statistics()
        if op == "write" and stats["copies"]:
            raise RuntimeError(f"{kind}: {stats['copies']} writes were copied")
    finally:
        native.close_file(fd)
    return Pass(rate=count * chunk / elapsed, cpu=cpu / elapsed)


def fio_pass(kind: str, path: Path, op: str, size: int, chunk: int, depth: int) -> Pass:
    """The same pattern with fio; returns its bandwidth and its CPU use."""
    engine = FIO_ENGINE[kind]
    args = [
        "fio",
        "--name=pollen-bench",
        f"--filename={path}",
        f"--rw={op}",
        f"--bs={chunk}",
        "--direct=1",
        f"--ioengine={engine}",
        "--fallocate=native",
        "--output-format=json",
    ]
    if engine == "psync":
        share = size // depth
        args += [
            f"--numjobs={depth}",
            f"--size={share}",
            f"--offset_increment={share}",
            "--thread",
            "--group_reporting",
        ]
    else:
        args += [f"--size={size}", f"--iodepth={depth}"]
    if engine == "io_uring":
        # IORING_OP_READ/WRITE, as UringEngine submits; fio's default, READV/WRITEV, ran at
        # half the speed of either on the disk this was written on, which would flatter us.
        args.append("--nonvectored=1")
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"fio failed: {result.stderr.strip() or result.stdout.strip()}")
    job = json.loads(result.stdout[result.stdout.index("{") :])["jobs"][0]
    return Pass(rate=float(job[op]["bw_bytes"]), cpu=(job["usr_cpu"] + job["sys_cpu"]) / 100)


def describe_disk(directory: Path) -> str:
    """The filesystem and block device under ``directory``, as far as /sys tells."""
    found = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    source, _, fstype = found.stdout.strip().partition(" ")
    parts = [f"{directory} on {source or '?'} ({fstype.strip() or '?'})"]
    device = Path(source).name
    block = Path("/sys/class/block") / device
    if block.exists():
        disk = block if (block / "queue").exists() else block.parent  # a partition's disk
        queue = disk / "queue"

        def read(path: Path) -> str:
            try:
                return path.read_text().strip()
            except OSError:
                return "?"

        device_info = ", ".join(
            f"{name} {value}"
            for name, value in (
                ("driver", Path(os.path.realpath(disk / "device" / "driver")).name),
                ("vendor", read(disk / "device" / "vendor")),
                ("model", read(disk / "device" / "model")),
            )
            if value not in ("?", "driver", "")
        )
        sectors = read(disk / "size")
        size_gib = int(sectors) * 512 / (1 << 30) if sectors.isdigit() else 0.0
        scheduler = read(queue / "scheduler")
        if "[" in scheduler:
            scheduler = scheduler.split("[", 1)[1].split("]", 1)[0]
        parts.append(
            f"disk {disk.name} ({device_info or 'device unknown'}): {size_gib:.0f} GiB, "
            f"rotational={read(queue / 'rotational')}, "
            f"logical block {read(queue / 'logical_block_size')} B, scheduler {scheduler}, "
            f"nr_requests {read(queue / 'nr_requests')}"
        )
    return "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where files go")
    parser.add_argument("--size", type=parse_size, default=2 << 30, help="file size")
    parser.add_argument("--chunk", type=parse_size, default=4 * MiB, help="block size")
    parser.add_argument("--depth", type=int, default=32, help="operations in flight")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", default="io_uring,aio,pread")
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    chunk, depth = args.chunk, args.depth
    size = args.size // chunk * chunk
    if chunk % native.ALIGNMENT or size == 0 or size % depth:
        parser.error(f"chunk must be a multiple of {native.ALIGNMENT}; size >= chunk * depth")
    if shutil.which("fio") is None:
        parser.error("fio is not installed (apt-get install fio)")

    work = Path(tempfile.mkdtemp(prefix="pollen-bench-disk-", dir=args.dir))
    results: dict[tuple[str, str, str], list[Pass]] = {}
    try:
        print(describe_disk(work))
        print(
            f"pattern: {size / (1 << 30):.2f} GiB file, {chunk // 1024} KiB blocks, "
            f"queue depth {depth}, O_DIRECT, sequential, median of {args.rounds} rounds"
        )
        for round_no in range(1, args.rounds + 1):
            for kind in engines:
                ours, theirs = work / f"pollen-{kind}.dat", work / f"fio-{kind}.dat"
                for op in ("write", "read"):
                    # Who goes first alternates by round: the disk's recent history (its own
                    # caches, the file written just before) should favour neither side.
                    if round_no % 2:
                        mine = trio.run(pollen_pass, kind, ours, op, size, chunk, depth)
                        fio = fio_pass(kind, theirs, op, size, chunk, depth)
                    else:
                        fio = fio_pass(kind, theirs, op, size, chunk, depth)
                        mine = trio.run(pollen_pass, kind, ours, op, size, chunk, depth)
                    results.setdefault((kind, op, "pollen"), []).append(mine)
                    results.setdefault((kind, op, "fio"), []).append(fio)
                    print(
                        f"  round {round_no} {kind:8} {op:5}: pollen {mine.rate / 1e6:7.0f} MB/s"
                        f"   fio {fio.rate / 1e6:7.0f} MB/s   ratio {mine.rate / fio.rate:5.2f}",
                        flush=True,
                    )
                ours.unlink()
                theirs.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(
        f"{'engine':9} {'op':6} {'pollen MB/s':>11} {'fio MB/s':>9} {'fio engine':>10} "
        f"{'ratio':>6} {'pollen CPU':>10} {'fio CPU':>8}"
    )
    for kind in engines:
        for op in ("write", "read"):
            mine = results[(kind, op, "pollen")]
            fio = results[(kind, op, "fio")]
            rate = statistics.median(p.rate for p in mine)
            fio_rate = statistics.median(p.rate for p in fio)
            print(
                f"{kind:9} {op:6} {rate / 1e6:11.0f} {fio_rate / 1e6:9.0f} "
                f"{FIO_ENGINE[kind]:>10} {rate / fio_rate:6.2f} "
                f"{statistics.median(p.cpu for p in mine):9.0%} "
                f"{statistics.median(p.cpu for p in fio):8.0%}"
            )
    print("(CPU: CPU seconds per wall second of the pass; 100% is one core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
