"""ShardHealth: when a stalled shard's health is checked (first after 0.1 s, then backing off) and
when it is cleared. A fake clock; the `ask` function stands in for the shards' health() calls."""

from __future__ import annotations

from raylsm.shard_health import FIRST_CHECK_S, ShardHealth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _asker(answers: dict, asked: list):
    def ask(shards):
        asked.append(sorted(shards))
        return {shard: answers.get(shard) for shard in shards}
    return ask


def test_a_stalled_shard_is_checked_soon_and_cleared_once_it_answers():
    clock = Clock()
    health = ShardHealth(max_backoff_s=2.0, clock=clock)
    asked: list = []
    health.mark("a")
    assert health.is_stalled("a") and not health.due()
    assert health.check(_asker({"a": {"stalled_s": 0.0}}, asked), 5.0) == []  # not due yet: nothing asked
    assert asked == []
    clock.now += FIRST_CHECK_S
    assert health.due()
    assert health.check(_asker({"a": {"stalled_s": 0.0}}, asked), 5.0) == ["a"]
    assert asked == [["a"]] and not health.is_stalled("a") and not health.due()


def test_a_shard_that_stays_stalled_is_asked_with_doubling_backoff_up_to_the_cap():
    clock = Clock()
    health = ShardHealth(max_backoff_s=1.0, clock=clock)
    asked: list = []
    hung = _asker({"a": TimeoutError("no answer")}, asked)
    health.mark("a")
    times = []
    for _ in range(120):  # 12 s in steps of 0.1 s
        clock.now = round(clock.now + 0.1, 6)
        if health.due():
            health.check(hung, 5.0)
            times.append(round(clock.now - 100.0, 1))
    assert times[:5] == [0.1, 0.3, 0.7, 1.5, 2.5]  # waits 0.2, 0.4, 0.8, then the 1.0 s cap
    assert all(round(b - a, 1) == 1.0 for a, b in zip(times[3:], times[4:]))
    assert health.is_stalled("a")
    # A busy answer (a data call stuck longer than the limit) keeps it stalled too.
    clock.now += 1.0
    assert health.check(_asker({"a": {"stalled_s": 9.0}}, asked), 5.0) == [] and health.is_stalled("a")


def test_an_abandoned_local_read_keeps_the_shard_stalled_until_it_finishes():
    clock = Clock()
    health = ShardHealth(clock=clock)
    asked: list = []
    answers = _asker({"a": {"stalled_s": 0.0}}, asked)
    health.local_read_abandoned("a")
    clock.now += FIRST_CHECK_S
    assert health.check(answers, 5.0) == [] and health.is_stalled("a")
    health.local_read_finished("a")
    clock.now += 2 * FIRST_CHECK_S
    assert health.check(answers, 5.0) == ["a"]


def test_marking_again_does_not_reset_the_backoff_and_forget_drops_the_schedule():
    clock = Clock()
    health = ShardHealth(max_backoff_s=2.0, clock=clock)
    asked: list = []
    hung = _asker({}, asked)
    health.mark("a")
    clock.now += FIRST_CHECK_S
    health.check(hung, 5.0)  # next due 0.2 s later
    health.mark("a")  # another timeout while stalled
    clock.now += 0.1
    assert not health.due()
    health.mark("b")
    health.forget({"b"})
    assert health.stalled() == ["b"]
    clock.now += 0.1
    assert health.check(hung, 5.0) == [] and asked[-1] == ["b"]
