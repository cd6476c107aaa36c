"""Tests for `pollen simulate` (agent/sim): its flags, its report and its JSON; the engine's
behaviour on the schedule is tested with the schedule (tests/swarm/test_schedule.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from agent import cli
from agent.sim import reference, roots
from agent.sim.engine import simulate
from agent.sim.model import (
    GiB,
    Mbit,
    MiB,
    SwarmConfig,
    bench_case,
    parse_image,
    parse_size,
    sim_layers,
)
from agent.swarm.intake import Fed, take_request
from agent.swarm.protocol import PlanTarget

JSON_FIELDS = {
    "p50_s",
    "p95_s",
    "max_s",
    "t_min_s",
    "origin_bytes",
    "origin_over_f",
    "origin_peak_gbit",
    "link_use_while_receiving",
    "lane_idle",
    "link_use_by_fifth",
    "ramp",
    "wall_s",
}


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("4MiB", 4 * MiB),
        ("1.5GiB", 3 * GiB // 2),
        ("10GB", 10**10),
        ("2 kib", 2048),
    ],
)
def test_sizes_take_binary_and_decimal_units(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_an_image_is_a_comma_list_of_count_x_size() -> None:
    assert parse_image("8x512MiB") == (512 * MiB,) * 8
    assert parse_image("5x4GiB,2x10GiB") == (4 * GiB,) * 5 + (10 * GiB,) * 2
    assert parse_image("1GiB") == (GiB,)


@pytest.mark.parametrize("spec", ["", "0x4MiB", "ax4MiB", "8x", "8xlots", "2x0"])
def test_a_bad_image_spec_says_what_to_write(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_image(spec)


def test_bad_flags_exit_2_naming_the_problem(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "--image", "8xlots"]) == 2
    assert "not a size" in capsys.readouterr().err
    assert cli.main(["simulate", "--nodes", "0"]) == 2
    assert "--nodes" in capsys.readouterr().err


def test_json_has_the_fields_scripts_read(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["simulate", "--nodes", "6", "--image", "2x8MiB", "--node-gbit", "0.1"]
    assert cli.main([*args, "--origin-gbit", "0.2", "--roots", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert JSON_FIELDS <= set(result)
    assert result["nodes"] == 6 and result["layers"] == [8 * MiB, 8 * MiB]
    assert result["p50_s"] <= result["p95_s"] <= result["max_s"]
    assert result["p95_s"] >= result["t_min_s"] > 0
    assert result["origin_over_f"] == pytest.approx(1.0, abs=0.05)
    assert 0 < result["origin_peak_gbit"] <= 0.2 + 1e-6


def test_the_text_report_names_the_floor_and_the_roots_load(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["simulate", "--nodes", "4", "--image", "16MiB", "--node-gbit", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "P95" in out and "T_min" in out and "plan requests" in out


def test_layers_spread_over_roots_and_share_the_links() -> None:
    """Two layers on two roots: each root fetches and first-sends its own layer; every
    node gets every chunk of both, and the origin sends each layer once."""
    config = SwarmConfig(
        nodes=6,
        layers=(16 * MiB, 16 * MiB),
        chunk_size=4 * MiB,
        upload=100 * Mbit,
        download=100 * Mbit,
        origin=200 * Mbit,
        roots=2,
        owners=(0, 1),
    )
    result = simulate(config)
    assert len(result.completion) == 6
    assert result.origin_bytes == 32 * MiB
    assert all(n >= 16 * MiB for root, n in result.uploaded.items() if root.startswith("root"))
    assert set(result.requests) == {"root0:1", "root1:1"}
    assert all(n > 0 for n in result.requests.values())


def test_a_busy_root_core_slows_the_swarm() -> None:
    """Plan requests queue at the root's one core: at 20 ms each, a swarm that needs hundreds
    of them per second waits for the root."""
    free = SwarmConfig(
        nodes=8,
        layers=(32 * MiB,),
        chunk_size=4 * MiB,
        upload=1000 * Mbit,
        download=1000 * Mbit,
        origin=1000 * Mbit,
    )
    busy = dataclasses.replace(free, root_request_s=0.02)
    assert simulate(busy).p95 > 2 * simulate(free).p95


def test_links_faster_than_a_round_trip_keep_several_transfers_in_flight() -> None:
    """10 Gbit/s moves a 4 MiB chunk in 3.4 ms; a hop's round trip is 10 ms. One transfer at a
    time per link (`max_depth=1`) left the links idle most of the time; the planners' depth
    hides the round trips behind transfers in flight, and the origin still sends F once."""
    link = 10_000 * Mbit
    one = SwarmConfig(
        nodes=30, layers=(256 * MiB,), chunk_size=4 * MiB, upload=link, download=link, origin=link
    )
    one = dataclasses.replace(one, latency=0.010, max_depth=1)
    deep = simulate(dataclasses.replace(one, max_depth=16))
    assert deep.p95 < simulate(one).p95 / 2
    assert deep.origin_over_f == 1.0


def test_link_use_is_the_bytes_received_over_what_the_links_moved_while_busy() -> None:
    """The figure bench/transfers.py measures on the netns cluster (77-83 % there): a node
    fed by a root whose link is half its own moves half its rate while a transfer is in,
    one fed at its own rate all of it (a little less: a transfer's first bytes wait for a
    latency, and the two fluid shares are exact)."""
    base = bench_case(nodes=1, origin_mbit=1000, file_size=32 * MiB, jitter=False)
    assert simulate(base).link_use == pytest.approx(1.0, abs=0.01)
    narrow = simulate(dataclasses.replace(base, root_upload=50 * Mbit))
    assert narrow.link_use == pytest.approx(0.5, abs=0.01)


def test_link_use_by_fifth_shows_a_swarm_filling_up_at_the_start() -> None:
    """The figure bench/transfers.py measures on the netns cluster (N=16 100/200: 41-53 % of
    the links in the first fifth of each pull, 79-85 % after): a node fed at its link's rate
    from its first byte uses all of it in every fifth; in a swarm of 16 a chunk must first
    cross a few hops before most nodes have one to take, so the first fifth lags the rest."""
    base = bench_case(nodes=1, origin_mbit=1000, file_size=32 * MiB, jitter=False)
    base = dataclasses.replace(base, head_chunk=base.chunk_size)  # (see the next test)
    assert simulate(base).phase_use == pytest.approx((1.0,) * 5, abs=0.01)
    swarm = simulate(dataclasses.replace(bench_case(jitter=False), head_chunk=MiB * 4)).phase_use
    assert len(swarm) == 5 and swarm[0] < 0.7 and min(swarm[1:]) > 0.85


def test_lane_idle_is_the_share_of_a_layers_download_with_nothing_to_move() -> None:
    """The figure bench/transfers.py measures on the netns cluster (11 % at N=8 against the
    simulator's 7 %): a node fed as fast as its link never waits between chunks; one whose
    root gets each chunk from the origin in two (four) times the node's transfer waits for
    the next one half (three quarters) of the time, less the first chunk's. In chunks of one
    size: the root gets the layer at the node's rate and passes a chunk on once it is whole,
    so where the 2 MiB head chunks end the node waits for the first 4 MiB one to be whole at
    the root (half a chunk time, 6 % of this pull; it waited as long for the first chunk).
    """
    base = bench_case(nodes=1, origin_mbit=1000, file_size=32 * MiB, jitter=False)
    base = dataclasses.replace(base, head_chunk=base.chunk_size)
    assert simulate(base).lane_idle == pytest.approx(0.0, abs=0.01)
    half = simulate(dataclasses.replace(base, origin=50 * Mbit))
    assert half.lane_idle == pytest.approx(0.5, abs=0.05)
    quarter = simulate(dataclasses.replace(base, origin=25 * Mbit))
    assert quarter.lane_idle == pytest.approx(0.75, abs=0.05)


def test_tcps_climb_leaves_part_of_every_link_unused_and_never_overfills_one() -> None:
    """With `ramp` a transfer takes a larger share over time (a new one, or one whose neighbour
    ended) and a smaller one at once: a node fed alone by its root loses part of each chunk's
    start (the more, the slower the climb), and where two layers' transfers share every link
    the links still never carry more than their rate (a share cut at once: link use <= 1).
    0.3 chunk times reproduce the netns cluster's N=16 run (measured 1.45-1.49 x T_min, its
    links 81 % used while receiving)."""
    alone = bench_case(nodes=1, origin_mbit=1000, file_size=32 * MiB, jitter=False)
    fluid, climbing, slower = (
        simulate(dataclasses.replace(alone, ramp=r)) for r in (0.0, 0.3, 0.6)
    )
    assert fluid.link_use > 0.99
    assert 0.6 < slower.link_use < climbing.link_use < 0.95
    assert fluid.p95 < climbing.p95 < slower.p95
    two = (64 * MiB, 64 * MiB)
    result = simulate(bench_case(layers=two, roots=2, latency=0.015, store_delay=0.015, ramp=0.3))
    assert 0.75 < result.link_use <= 1.0
    assert 1.3 < result.p95_ratio < 1.6
    with pytest.raises(ValueError, match="ramp"):
        dataclasses.replace(alone, ramp=-1.0)


def test_a_slow_disk_or_a_busy_core_caps_a_nodes_rate() -> None:
    config = SwarmConfig(
        nodes=4, file_size=GiB, chunk_size=4 * MiB, upload=1e10, download=1e10, origin=1e10
    )
    assert config.download_of(0) == 1e10
    assert dataclasses.replace(config, disk=220e6).download_of(0) == 220e6
    cpu = dataclasses.replace(config, agent_cpu_s_per_gib=5.0)
    assert cpu.download_of(0) == pytest.approx(GiB / 5.0)


def test_the_published_table_is_the_seven_rows() -> None:
    assert len(reference.PUBLISHED) == 7
    assert [r.p95_s for r in reference.PUBLISHED] == [116, 380, 555, 590, 475, 660, 493]
    first = reference.PUBLISHED[0]
    layers = parse_image(first.image)
    assert first.unpack_s(layers) == pytest.approx(4 * GiB / 150e6)


def test_the_reference_runs_in_tiers_with_16_roots_unless_told_otherwise() -> None:
    from agent.sim import cli as sim_cli

    parser = cli.build_parser()
    args = parser.parse_args(["simulate", "--reference"])
    sim_cli.reference_defaults(args)
    assert (args.tiers, args.roots, args.nodes, args.chunk) == (True, 16, 1000, "16MiB")
    args = parser.parse_args(["simulate", "--reference", "--no-tiers", "--roots", "8"])
    sim_cli.reference_defaults(args)
    assert (args.tiers, args.roots) == (False, 8)
    config = sim_cli.build_config(args, reference.PUBLISHED[0].image)
    assert not config.tiers and config.roots == 8


def test_the_simulated_trackers_plans_are_the_plans_the_checks_accept() -> None:
    """The simulation builds its replies without Plan's checks (for speed): what it builds
    must be what the checked constructor builds from the same fields."""
    import dataclasses as dc

    from agent.sim.roots import trusted_plan
    from agent.swarm.plan import Plan

    fields = {
        "size": 10 * MiB,
        "chunk_size": 4 * MiB,
        "head_chunk": MiB,  # given: the simulated tracker gives it
        "chunk_sha256": {1: "a" * 64},
        "assignments": ((1, "10.0.0.1:65002"),),
    }
    assert dc.asdict(trusted_plan(**fields)) == dc.asdict(Plan(**fields))  # type: ignore[arg-type]


def test_stripes_spread_one_layers_plan_requests_over_the_roots() -> None:
    """The design under study: a layer's chunks in stripes, each scheduled by its own root.
    Every node still gets every chunk, the origin still sends the layer once, and the plan
    requests that one root answered alone are now shared."""
    whole = SwarmConfig(
        nodes=8,
        layers=(64 * MiB,),
        chunk_size=4 * MiB,
        upload=200 * Mbit,
        download=200 * Mbit,
        origin=400 * Mbit,
        roots=4,
    )
    # Two stripes of 8 (four of 4 land three on one root by rendezvous: with ~1.3 requests
    # per chunk since `finishing` stands for `done`, a stripe's own standing requests then
    # outweigh what the split saves).
    striped = dataclasses.replace(whole, stripe_chunks=8)
    one, spread = simulate(whole), simulate(striped)
    assert len(spread.completion) == 8 and spread.origin_bytes == 64 * MiB
    assert sum(1 for n in one.requests.values() if n) == 1
    assert sum(1 for n in spread.requests.values() if n) >= 2
    assert max(spread.requests.values()) < max(one.requests.values())


def test_tiers_spread_a_layers_requests_over_every_root_and_the_origin_sends_it_once() -> None:
    """Roots in tiers (parentRoots): each node asks its group's root; the root that owns the
    layer fetches it from the origin and the others through its swarm. Every node completes,
    the origin sends the layer once, every root answers requests and the busiest answers far
    fewer than the one root of the flat swarm; with a root's core the bottleneck (5 ms per
    request) the tiered swarm finishes first."""
    flat = SwarmConfig(
        nodes=60,
        layers=(32 * 4 * MiB,),
        chunk_size=4 * MiB,
        upload=1000 * Mbit,
        download=1000 * Mbit,
        origin=1000 * Mbit,
        roots=4,
        latency=0.01,
        root_request_s=0.005,
    )
    one, tiered = simulate(flat), simulate(dataclasses.replace(flat, tiers=True))
    assert len(tiered.completion) == 60
    assert tiered.origin_bytes == 32 * 4 * MiB
    assert sum(1 for n in one.requests.values() if n) == 1
    assert all(tiered.requests.values())
    assert max(tiered.requests.values()) < 0.5 * max(one.requests.values())
    assert tiered.p95 < one.p95
    # The three roots that do not own the layer each got it whole, from the owner's swarm.
    owner_upload = max(tiered.uploaded[f"root{j}"] for j in range(4))
    assert owner_upload >= 32 * 4 * MiB


def test_tiers_cannot_go_with_stripes_and_owners_place_each_image_layer() -> None:
    base = SwarmConfig(nodes=2, file_size=MiB, chunk_size=MiB, upload=1.0, download=1.0, origin=1.0)
    with pytest.raises(ValueError, match="tiers"):
        dataclasses.replace(base, tiers=True, stripe_chunks=2)
    config = dataclasses.replace(base, layers=(MiB, MiB), file_size=0, roots=3, owners=(2, 1))
    tiered = dataclasses.replace(config, tiers=True)
    layers = sim_layers(tiered, ["r0", "r1", "r2"])
    assert [(la.group, la.owner_id, la.root_id) for la in layers] == [
        (0, "r2", "r0"),
        (1, "r2", "r1"),
        (2, "r2", "r2"),
        (0, "r1", "r0"),
        (1, "r1", "r1"),
        (2, "r1", "r2"),
    ]


def window_case(chunks: int = 192, cache: int = 12, **fields: object) -> SwarmConfig:
    """A layer of `chunks` 16 MiB chunks through a `cache`-chunk window at 10 Gbit/s, disks
    and CPU as in the reference setting: readers consume each chunk as it arrives and the
    window lets it go soon after, while peers still fetch it."""
    return SwarmConfig(
        layers=(chunks * 16 * MiB,),
        chunk_size=16 * MiB,
        upload=10_000 * Mbit,
        download=10_000 * Mbit,
        origin=10_000 * Mbit,
        disk=220e6,
        agent_cpu_s_per_gib=2.2,
        latency=0.010,
        store_delay=0.015,
        node_cache_chunks=cache,
        **fields,  # type: ignore[arg-type]
    )


def test_a_striped_layer_bigger_than_the_cache_passes_through_its_window() -> None:
    """Sixteen chunks of cache for a 64-chunk layer in 8 stripes: the stripes go one after
    another, each through a window the schedule can fill (sharing the 16 chunks among all 8
    stripes at once left each 2, and the swarm stalled)."""
    config = SwarmConfig(
        nodes=6,
        layers=(64 * 16 * MiB,),
        chunk_size=16 * MiB,
        upload=1000 * Mbit,
        download=1000 * Mbit,
        origin=1000 * Mbit,
        roots=4,
        stripe_chunks=8,
        node_cache_chunks=16,
        time_limit=600.0,
    )
    result = simulate(config)
    assert len(result.completion) == 6
    assert result.origin_bytes == 64 * 16 * MiB


def test_a_chunk_being_sent_keeps_its_slot_in_the_window() -> None:
    """As a ring slot is never reused while a peer is sent its chunk (agent/fetch/window.py),
    the simulated cache does not let a chunk go under an upload. It did: four transfers ended
    waiting for a source that no longer had the chunk, and four nodes never finished (the
    1000-node reference row of one 20 GB layer stalled so)."""
    result = simulate(window_case(nodes=60, seed=0))
    assert len(result.completion) == 60
    assert result.origin_over_f == 1.0


def test_a_simulated_root_hears_the_agents_missing_reports() -> None:
    """A node asked a peer that had let the chunk go (404): the simulated root, like the
    tracker (agent/swarm/intake.py), stops counting that copy. It went on assigning the
    chunk from two evicted copies, and the node waited for ever."""
    result = simulate(window_case(nodes=30, roots=4, tiers=True, seed=2))
    assert len(result.completion) == 30


def test_a_stuck_swarm_fails_when_nothing_moves_not_at_the_time_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A root deaf to `missing` reports (the simulator's old fault) leaves a node waiting for
    ever: the run ends `stall_after` seconds (100 here) after the last chunk was stored, not
    after the CLI's 24 simulated hours of idle ticks (half an hour of CPU at 1000 nodes)."""

    def deaf(schedule: object, asker: str, request: PlanTarget, now: float) -> Iterator[Fed]:
        quiet = dataclasses.replace(request, missing=())
        return take_request(schedule, asker, quiet, now)  # type: ignore[arg-type]

    monkeypatch.setattr(roots, "take_request", deaf)
    config = window_case(nodes=30, roots=4, tiers=True, seed=2, time_limit=24 * 3600.0)
    assert config.stall_after == 100.0  # ten transfer timeouts; a chunk takes 76 ms
    with pytest.raises(RuntimeError, match=r"no chunk stored for 100s at .*'n1'"):
        simulate(config)


def test_a_late_join_or_a_slow_root_link_is_no_stall() -> None:
    """Long quiet spells that are not stuck: the last node joins 400 s after the first
    finished, and a root's link takes 134 s per chunk (stall_after counts it)."""
    late = window_case(nodes=2, start_spread=800.0, time_limit=3600.0)
    assert sorted(simulate(late).completion) == ["n0", "n1"]
    slow = SwarmConfig(
        nodes=2,
        layers=(2 * 8 * MiB,),
        chunk_size=8 * MiB,
        upload=100 * Mbit,
        download=100 * Mbit,
        origin=100 * Mbit,
        root_download=Mbit / 2,
        head_chunk=8 * MiB,
        time_limit=3600.0,
    )
    assert slow.stall_after > 134
    assert len(simulate(slow).completion) == 2


def test_head_chunks_cut_a_layer_and_spread_its_first_copies_sooner() -> None:
    """The agents cut each layer's first 8 chunks small (agent.cache.chunks). A pull's start
    is a chunk time per hop before most nodes hold a chunk: two layers on two roots, 16 nodes
    at 100 Mbit/s, the first fifth of each pull moves 36 % of the links with 4 MiB chunks
    only (`--uniform-chunks`), 65 % with the head in 2 MiB ones, and P95 comes down (1.25 ->
    1.15 x T_min here; with `ramp` 0.3, 1.40 -> 1.33). The simulated agents and roots cut
    layers as the real ones do, stripes excepted (whole chunks)."""
    two = (64 * MiB, 64 * MiB)
    head = bench_case(jitter=False, layers=two, file_size=0, roots=2, latency=0.015)
    uniform = dataclasses.replace(head, head_chunk=head.chunk_size)
    assert head.layout_of(20 * MiB + 5).lengths() == [2 * MiB] * 8 + [4 * MiB, 5]
    assert head.layout_of(3 * MiB).lengths() == [MiB] * 3  # a small layer: quarters
    assert uniform.layout_of(9 * MiB).lengths() == [4 * MiB, 4 * MiB, MiB]
    assert head.chunks_of(64 * MiB) == 8 + 12
    assert dataclasses.replace(head, stripe_chunks=4).chunks_of(64 * MiB) == 16
    before, after = simulate(uniform), simulate(head)
    assert after.origin_over_f == 1.0 and len(after.completion) == 16
    assert after.transfers > before.transfers  # 8 more chunks per layer per node, less 4
    assert after.phase_use[0] > before.phase_use[0] + 0.2
    assert after.p95 < before.p95
    with pytest.raises(ValueError, match="head_chunk"):
        dataclasses.replace(head, head_chunk=8 * MiB)  # larger than the chunks after it


def test_a_simulation_gives_the_same_answer_in_every_process() -> None:
    """Same flags, same result: no set of objects ordered by address, no string hash
    (PYTHONHASHSEED differs per run below). This setting came out 1.527 or 1.562 s before."""
    args = ["--nodes", "30", "--image", "8x16MiB", "--node-gbit", "1", "--origin-gbit", "2"]
    answers = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-m", "agent", "simulate", *args, "--roots", "3", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=True,
        ).stdout
        measured = {"wall_s", "root_cpu_s_max"}  # this machine's CPU, timed in the run
        answers.add(json.dumps({k: v for k, v in json.loads(out).items() if k not in measured}))
    assert len(answers) == 1
