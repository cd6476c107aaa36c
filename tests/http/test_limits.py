"""Who gives way at a port's limits: the pure choices of `agent.http.limits`, no sockets."""

from __future__ import annotations

from agent.http.limits import Limits, Standing, longest_stalled, longest_waiting, next_turn


def conns() -> list[Standing]:
    return [
        Standing(1, "10.0.0.1", waiting_since=5.0),
        Standing(2, "10.0.0.1", stalled_since=1.0),
        Standing(3, "10.0.0.2", waiting_since=3.0),
        Standing(4, "10.0.0.2"),  # busy: its handler runs, or its body waits for upstream bytes
        Standing(5, "10.0.0.3", stalled_since=9.5),
    ]


def test_the_connection_waiting_longest_for_a_head_gives_way_first() -> None:
    assert longest_waiting(conns()).conn_id == 3


def test_a_client_at_its_own_limit_reclaims_only_its_own_waiting_connection() -> None:
    assert longest_waiting(conns(), client="10.0.0.1").conn_id == 1
    assert longest_waiting(conns(), client="10.0.0.3") is None


def test_a_connection_already_reclaimed_is_not_chosen_again() -> None:
    table = conns()
    table[2].going = True
    assert longest_waiting(table).conn_id == 1


def test_only_a_send_stalled_beyond_the_grace_is_reclaimed_oldest_first() -> None:
    assert longest_stalled(conns(), now=10.0, grace=2.0).conn_id == 2
    assert longest_stalled(conns(), now=2.5, grace=2.0) is None
    fresh = [Standing(5, "10.0.0.3", stalled_since=9.5)]
    assert longest_stalled(fresh, now=10.0, grace=2.0) is None


def test_a_free_slot_goes_to_the_address_holding_the_fewest() -> None:
    # The flooding address holds 30 and has 400 waiting; the other holds 0 with 1 waiting.
    assert next_turn({"10.0.0.66": 400, "127.0.0.1": 1}, {"10.0.0.66": 30}, 32) == "127.0.0.1"


def test_an_address_at_its_own_cap_waits_even_with_slots_free() -> None:
    assert next_turn({"10.0.0.66": 4}, {"10.0.0.66": 32}, 32) is None
    assert next_turn({}, {}, 32) is None


def test_ties_go_to_the_address_with_more_waiting() -> None:
    assert next_turn({"a": 1, "b": 3}, {"a": 2, "b": 2}, 32) == "b"


def test_one_address_gets_half_the_response_slots() -> None:
    assert Limits(max_responses=64).max_client_responses == 32
    assert Limits(max_responses=1).max_client_responses == 1
    assert Limits().max_client_responses == 0
