"""ShardHealth, the tier client's circuit breaker: what a trip fails fast, when it is checked, and
what clears it (raylsm.shard_health). Pure logic on a fake clock: the health answers are given, not
asked of Ray."""

from __future__ import annotations

import pytest

from raylsm.shard_health import FIRST_CHECK_S, ShardHealth

LIMIT_S = 5.0


def _healthy(shards):
    return {shard: {"stalled_s": 0.0} for shard in shards}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def pass_until_due(self, health: ShardHealth) -> None:
        self.now += health.due_in()


def test_a_late_read_fails_reads_fast_and_leaves_puts_to_the_shard():
    health = ShardHealth()
    health.mark("a")
    assert health.is_stalled("a") and not health.is_stalled("a", writes=True)
    assert not health.is_stalled("b")
    health.mark("a", writes=True)  # then a put missed its (longer) deadline too
    assert health.is_stalled("a") and health.is_stalled("a", writes=True)
    totals = health.totals()
    assert totals["trips"] == 1 and totals["write_trips"] == 1


def test_a_late_put_fails_both_fast():
    health = ShardHealth()
    health.mark("a", writes=True)
    assert health.is_stalled("a") and health.is_stalled("a", writes=True)


def test_the_first_check_comes_soon_and_each_failed_one_doubles_the_delay_up_to_the_cap():
    clock = Clock()
    health = ShardHealth(max_check_delay_s=0.5, clock=clock)
    assert health.due_in() is None
    health.mark("a")
    assert 0.0 < health.due_in() <= FIRST_CHECK_S
    assert health.check(lambda shards: pytest.fail("asked before the check was due"), LIMIT_S) == []
    delays = []
    for _ in range(5):
        clock.pass_until_due(health)
        assert health.check(lambda shards: {}, LIMIT_S) == []  # no answer: kept
        delays.append(health.due_in())
    tolerance = 1e-9  # (float sums on the fake clock)
    assert delays[0] <= 2 * FIRST_CHECK_S + tolerance and delays[1] <= 4 * FIRST_CHECK_S + tolerance
    assert delays[1] > 2 * FIRST_CHECK_S - 0.05  # it backs off
    assert all(delay <= 0.5 + tolerance for delay in delays) and delays[-1] > 0.4  # up to the cap, no further
    assert delays == pytest.approx([0.2, 0.4, 0.5, 0.5, 0.5])
    assert health.totals()["kept_no_answer"] == 5


@pytest.mark.parametrize("answer, kept", [({"stalled_s": LIMIT_S + 1}, "kept_busy"), (RuntimeError("dead"), "kept_no_answer")])
def test_a_shard_that_is_busy_or_silent_stays_marked(answer, kept):
    clock = Clock()
    health = ShardHealth(clock=clock)
    health.mark("a", writes=True)
    clock.pass_until_due(health)
    assert health.check(lambda shards: {shard: answer for shard in shards}, LIMIT_S) == []
    assert health.is_stalled("a", writes=True) and health.totals()[kept] == 1


def test_a_healthy_answer_clears_reads_and_puts_and_the_schedule():
    clock = Clock()
    health = ShardHealth(clock=clock)
    health.mark("a", writes=True)
    health.mark("b")
    clock.pass_until_due(health)
    assert sorted(health.check(_healthy, LIMIT_S)) == ["a", "b"]
    assert not health.is_stalled("a") and not health.is_stalled("a", writes=True) and not health.is_stalled("b")
    assert health.due_in() is None and health.stalled() == []
    totals = health.totals()
    assert totals["trips"] == 2 and totals["checks"] == 2
    assert totals["longest_s"] == pytest.approx(FIRST_CHECK_S) and totals["stalled_s"] == pytest.approx(2 * FIRST_CHECK_S)


def test_an_abandoned_local_read_keeps_the_shard_marked_until_it_finishes_then_it_is_checked_at_once():
    clock = Clock()
    health = ShardHealth(max_check_delay_s=2.0, clock=clock)
    health.local_read_abandoned("a")
    health.local_read_abandoned("a")
    assert health.is_stalled("a") and not health.is_stalled("a", writes=True)
    clock.pass_until_due(health)
    assert health.check(_healthy, LIMIT_S) == []  # the shard answers, but its disk has not
    assert health.totals()["kept_local_reads"] == 1
    health.wake.clear()
    health.local_read_finished("a")
    assert health.due_in() > 0.0 and not health.wake.is_set()  # one of the two still runs
    health.local_read_finished("a")
    assert health.wake.is_set() and health.due_in() == 0.0
    assert health.check(_healthy, LIMIT_S) == ["a"]


def test_shards_that_left_the_ring_are_forgotten():
    health = ShardHealth()
    health.mark("a", writes=True)
    health.mark("b")
    health.forget({"b"})
    assert health.stalled() == ["b"] and not health.is_stalled("a", writes=True)
