"""Stores of one disk pool their budget (raylsm/store/budget_pool.py): together they hold what the
sum of their capacities allows, one store may hold more than its own share while the others hold
less, and the pool frees the oldest sealed segment of any member first (one eviction order). A
member that leaves, dies or goes silent stops counting; a damaged pool file leaves the store alone."""

from __future__ import annotations

import os

import pytest

from raylsm.errors import ConfigError
from raylsm.store import ShardStore
from raylsm.store import budget_pool
from raylsm.store.budget_pool import BudgetPool

KiB, MiB = 1024, 1024 * 1024
PAGE = 64 * KiB
PER_BATCH = 8  # half a segment


@pytest.fixture
def pooled(tmp_path, kit):
    """open_member(name, capacity_segments=6) -> a store with background reclaim in the pool file
    tmp_path/.disk.pool; closed at teardown."""
    opened: list[ShardStore] = []
    pool = str(tmp_path / ".disk.pool")

    def open_member(name: str, capacity_segments: int = 6, pool_path: str | None = pool) -> ShardStore:
        config = kit.config(capacity_bytes=capacity_segments * MiB, background_reclaim=True)
        store = ShardStore.open(str(tmp_path / name), config, budget_pool=pool_path)
        opened.append(store)
        return store

    open_member.pool = pool
    yield open_member
    for store in opened:
        store.close()


def _fill(store, kit, tag, batches):
    keys_all = []
    for b in range(batches):
        keys = [kit.key((tag, b, i)) for i in range(PER_BATCH)]
        assert store.put_batch(keys, [kit.value((tag, b, i), PAGE) for i in range(PER_BATCH)]) == [True] * PER_BATCH
        assert store.wait_reclaimed()
        keys_all += keys
    return keys_all


def _present(store, keys) -> int:
    return sum(store._present_flags(keys))


def _disk(store) -> int:
    return store.stats()["space"]["disk_bytes"]


def test_one_member_may_use_the_capacity_the_others_leave(pooled, kit):
    busy, idle = pooled("busy"), pooled("idle")
    own = busy.config.capacity_bytes
    keys = _fill(busy, kit, "busy", 20)  # 10 MiB offered to a store of 6 MiB
    assert _disk(busy) > own, "a pooled store stayed within its own share while its neighbour was empty"
    pool = busy.stats()["pool"]
    assert pool["members"] == 2 and pool["capacity_bytes"] == own + idle.config.capacity_bytes
    assert pool["disk_bytes"] <= pool["capacity_bytes"] + 2 * busy.config.segment_bytes
    assert _present(busy, keys) > len(keys) * 0.8


def test_the_pool_frees_the_oldest_segment_of_any_member_first(pooled, kit):
    old, new = pooled("old"), pooled("new")
    old_keys = _fill(old, kit, "old", 16)  # 8 MiB into old (above its own 6 MiB share)
    assert _present(old, old_keys) == len(old_keys)
    new_keys = _fill(new, kit, "new", 8)  # 4 MiB more takes the pool past its 12 MiB
    # One cache: the room came from the oldest pages, which are old's, not from new's own.
    assert _present(new, new_keys) == len(new_keys)
    assert _present(old, old_keys[:PER_BATCH]) == 0, "the pool's oldest pages were kept"
    assert kit.counters(old)["evicted_segments"] >= 1 and kit.counters(new)["evicted_segments"] == 0


def test_partitions_without_a_pool_evict_their_own_pages(pooled, kit):
    """The contrast: the same puts into two stores with fixed budgets."""
    old, new = pooled("old", pool_path=None), pooled("new", pool_path=None)
    old_keys = _fill(old, kit, "old", 16)
    new_keys = _fill(new, kit, "new", 8)
    assert _present(old, old_keys) < len(old_keys)  # old already evicted from its own share
    assert _present(new, new_keys) == len(new_keys)
    assert "pool" not in old.stats()


def test_a_member_that_closes_stops_counting_and_the_rest_returns_to_its_share(pooled, kit):
    busy, leaving = pooled("busy"), pooled("leaving")
    _fill(busy, kit, "busy", 20)
    assert _disk(busy) > busy.config.capacity_bytes
    leaving.close()
    assert busy.stats()["pool"]["members"] == 1
    _fill(busy, kit, "more", 2)  # the next rolls make room within its own budget again
    assert _disk(busy) <= busy.config.capacity_bytes + busy.config.segment_bytes


def test_a_silent_member_is_neither_capacity_nor_asked_to_evict(pooled, kit, monkeypatch):
    store = pooled("store")
    ghost = BudgetPool.join(pooled.pool, "a store that hung")
    ghost.publish(64 * MiB, 1 * MiB, 1.0)  # huge capacity, the oldest segment of the pool
    assert store.stats()["pool"]["members"] == 2
    monkeypatch.setattr(budget_pool.time, "time", lambda real=budget_pool.time.time: real() + budget_pool.STALE_S + 1)
    assert store.stats()["pool"]["members"] == 1
    _fill(store, kit, "fill", 16)  # 8 MiB into a 6 MiB store: it evicts its own, not waiting on the ghost
    assert _disk(store) <= store.config.capacity_bytes + store.config.segment_bytes
    assert kit.counters(store)["evicted_segments"] >= 1
    ghost.leave()


def test_a_damaged_pool_file_leaves_the_store_running_alone(pooled, kit, caplog):
    with open(pooled.pool, "wb") as handle:
        handle.write(b"not a pool")
    store = pooled("store")
    assert "pool" not in store.stats()
    assert "without its disk's budget pool" in caplog.text
    keys = _fill(store, kit, "fill", 4)
    assert _present(store, keys) == len(keys)


def test_a_reopened_member_takes_its_slot_back(pooled, kit, tmp_path):
    first = pooled("member")
    first.close()
    again = pooled("member")
    other = pooled("other")
    assert again.stats()["pool"]["members"] == 2
    table = BudgetPool.join(pooled.pool, "reader")
    ids = set(int(member) for member in table._table["member"] if member)
    assert budget_pool.member_id(os.path.abspath(str(tmp_path / "member"))) in ids
    assert len(ids) == 3  # member (one slot, not two), other, reader
    table.leave()
    other.close()


def test_a_pool_needs_background_reclaim(tmp_path, kit):
    with pytest.raises(ConfigError, match="background_reclaim"):
        ShardStore.open(str(tmp_path / "store"), kit.config(), budget_pool=str(tmp_path / ".pool"))


def test_pages_read_since_written_get_their_second_chance_in_the_pool(pooled, kit):
    """The member holding the oldest segments frees them for a neighbour's puts; each freed segment's
    read pages are re-appended into the room it made, even when the neighbour's waiting roll takes
    that room first (kept pages never exceed what was freed). A page read since it was last written
    is never lost to eviction: old's pages, read after every batch of its neighbour's, all stay.
    (A page re-appended and not read again is evicted at its next turn: correct, but timing decides
    which segment's turn comes first, so the pages are read throughout.)"""
    old, new = pooled("old"), pooled("new")
    old_keys = _fill(old, kit, "old", 8)  # 4 MiB: the pool's oldest segments
    for batch in range(20):  # 10 MiB into a 12 MiB pool
        _fill(new, kit, ("new", batch), 1)
        assert old.wait_reclaimed()
        assert sum(value is not None for value in old.get_batch(old_keys)) == len(old_keys), batch
    counters = kit.counters(old)
    assert counters["evicted_segments"] >= 3
    assert counters["reinserted_pages"] >= len(old_keys) - PER_BATCH
    assert counters["evicted_pages"] == 0


def test_a_member_short_of_room_wakes_the_one_holding_the_oldest_segment(pooled, kit, monkeypatch):
    """With polling out of the picture, the datagram alone must bring the room: the writer's rolls
    never give up waiting and drop their own segments."""
    from raylsm.store import shard_store

    monkeypatch.setattr(shard_store, "POLL_S", 3600.0)
    old, new = pooled("old"), pooled("new")
    _fill(old, kit, "old", 16)
    _fill(new, kit, "new", 8)
    assert kit.counters(old)["evicted_segments"] >= 1
    assert kit.counters(new)["evicted_segments_inline"] == 0
