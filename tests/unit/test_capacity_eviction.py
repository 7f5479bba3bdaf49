"""Capacity: disk use stays within the byte budget plus one segment, eviction frees the oldest segment
first, pages read since written are reinserted within the budget (and not with "none"), and a
contract test over every registered admission and reinsertion policy."""

from __future__ import annotations

import random
import time
import zlib

import numpy as np
import pytest

from raylsm.store import ShardStore
from raylsm.store import format as fmt
from raylsm.store.admission import ADMISSION_POLICIES
from raylsm.store.reinsertion import REINSERTION_POLICIES

KiB = 1 << 10
MiB = 1 << 20


def _disk_bytes(kit, store) -> int:
    return sum(kit.segment_files(store.root).values())


def _fill_until_evicted(store, kit, segments: int = 1, size: int = 64 * KiB, tag: str = "filler") -> None:
    """Put fresh pages until `segments` more segments have been evicted."""
    target = kit.counters(store)["evicted_segments"] + segments
    i = 0
    while kit.counters(store)["evicted_segments"] < target:
        assert store.put_batch([kit.key((tag, i))], [kit.value((tag, i), size)]) == [True]
        i += 1
        assert i < 10_000


@pytest.mark.parametrize("reinsertion_policy", sorted(REINSERTION_POLICIES))
@pytest.mark.parametrize("preallocate", [True, False])
def test_disk_use_stays_within_budget_in_a_long_random_workload(store_factory, kit, reinsertion_policy, preallocate):
    store = store_factory(capacity_bytes=4 * MiB, reinsertion_policy=reinsertion_policy,
                          preallocate_segments=preallocate, reinsertion_budget_fraction=1.0)
    rng = random.Random(7)
    limit = store.config.capacity_bytes + store.config.segment_bytes
    sizes: dict[bytes, int] = {}
    seeds: dict[bytes, int] = {}
    deleted: set[bytes] = set()
    next_key = 0
    for step in range(300):
        batch = []
        for _ in range(rng.randint(1, 12)):
            if sizes and rng.random() < 0.15:
                batch.append(rng.choice(list(sizes)))  # already stored (or evicted): same bytes again
            else:
                key = kit.key(("w", next_key))
                next_key += 1
                sizes[key] = rng.randint(4 * KiB, 64 * KiB) + rng.choice([0, 1, 100])
                seeds[key] = next_key
                batch.append(key)
        assert store.put_batch(batch, [kit.value(seeds[k], sizes[k]) for k in batch]) == [True] * len(batch)
        deleted.difference_update(batch)
        assert _disk_bytes(kit, store) <= limit, f"step {step}"
        assert store.stats()["space"]["disk_bytes"] <= limit
        if rng.random() < 0.5:  # reads drive reinsertion
            sample = rng.sample(list(sizes), min(len(sizes), 20))
            for key, value in zip(sample, store.get_batch(sample)):
                if value is not None:
                    assert value.tobytes() == kit.value(seeds[key], sizes[key]).tobytes()
                assert not (key in deleted and value is not None)
        if rng.random() < 0.1:
            victims = rng.sample(list(sizes), min(len(sizes), 3))
            store.delete_batch(victims)
            deleted.update(victims)
    c = kit.counters(store)
    assert c["evicted_segments"] >= 5
    if reinsertion_policy == "none":
        assert c["reinserted_pages"] == 0
    else:
        assert c["reinserted_pages"] > 0
    assert c["gets_miss_corrupt"] == c["gets_miss_io"] == 0


def test_eviction_frees_the_oldest_segment_first(store_factory, kit):
    store = store_factory(capacity_bytes=3 * MiB, reinsertion_policy="none")
    keys = []
    for i in range(120):  # ~7.5 MiB of 64 KiB pages, in write order
        keys.append(kit.key(i))
        store.put_batch([keys[-1]], [kit.value(i, 64 * KiB)])
    hits = [value is not None for value in store.get_batch(keys)]
    first_hit = hits.index(True)
    assert first_hit > 0 and all(hits[first_hit:]), "survivors must be exactly the newest pages"
    ids = sorted(kit.segment_files(store.root))
    assert ids == list(range(ids[0], ids[0] + len(ids))) and ids[0] > 0  # a suffix of segment ids
    c = kit.counters(store)
    assert c["evicted_segments"] == ids[0]
    assert c["evicted_pages"] == first_hit and c["evicted_bytes"] == first_hit * 64 * KiB
    assert store.stats()["space"]["live_bytes"] == (120 - first_hit) * 64 * KiB


def _segment0_pages(store, kit, n=15, size=64 * KiB):
    """Pages filling segment 0 so that no later page fits in it (15 x 64 KiB + a 4 KiB header)."""
    keys = [kit.key(("old", i)) for i in range(n)]
    values = [kit.value(("old", i), size) for i in range(n)]
    assert store.put_batch(keys, values) == [True] * n
    return keys, values


def test_pages_read_since_written_are_reinserted_and_stay_readable(store_factory, kit, tmp_path):
    store = store_factory(capacity_bytes=2 * MiB)
    keys, values = _segment0_pages(store, kit)
    read = [1, 5, 9]
    assert all(v is not None for v in store.get_batch([keys[i] for i in read]))
    _fill_until_evicted(store, kit)
    assert 0 not in kit.segment_files(store.root)
    c = kit.counters(store)
    assert c["reinserted_pages"] == 3 and c["reinserted_bytes"] == 3 * 64 * KiB
    assert c["evicted_pages"] == len(keys) - 3
    got = kit.read_all(store, keys)
    assert [i for i, v in enumerate(got) if v is not None] == read
    assert all(got[i] == values[i].tobytes() for i in read)
    # They survive a reopen too.
    store.close()
    store = store_factory()
    assert [v is not None for v in store.get_batch(keys)] == [i in read for i in range(len(keys))]


def test_reinsertion_needs_a_read_since_the_last_write(store_factory, kit):
    store = store_factory(capacity_bytes=2 * MiB)
    keys, _ = _segment0_pages(store, kit)
    store.get_batch(keys[:2])
    _fill_until_evicted(store, kit)  # both reinserted into the new segment
    store.get_batch(keys[:1])  # only the first is read again after its re-append
    _fill_until_evicted(store, kit, segments=2)  # the segment holding them is evicted too
    assert [v is not None for v in store.get_batch(keys[:2])] == [True, False]


def test_reinsertion_stays_within_its_budget(store_factory, kit):
    store = store_factory(capacity_bytes=2 * MiB, reinsertion_budget_fraction=0.25)
    keys, values = _segment0_pages(store, kit)
    store.get_batch(keys[:10])  # 640 KiB of read pages; the budget is 256 KiB
    _fill_until_evicted(store, kit)
    c = kit.counters(store)
    # Each kept page is charged its bytes and its 69-byte header entry: 3 pages of 64 KiB fit.
    assert c["reinserted_pages"] == 3 and c["reinserted_bytes"] == 192 * KiB
    got = kit.read_all(store, keys)
    assert sum(v is not None for v in got) == 3
    assert all(v is None or v == values[i].tobytes() for i, v in enumerate(got))


def test_full_budget_keeps_every_read_page_that_fits_a_segment(store_factory, kit):
    store = store_factory(capacity_bytes=2 * MiB, reinsertion_budget_fraction=1.0)
    keys, values = _segment0_pages(store, kit)
    store.get_batch(keys)  # every page of the oldest segment was read
    _fill_until_evicted(store, kit)
    c = kit.counters(store)
    room = store.config.segment_bytes - 2 * 4096
    assert c["reinserted_pages"] == min(len(keys), room // (64 * KiB + fmt.ENTRY_BYTES))
    got = kit.read_all(store, keys)
    assert sum(v is not None for v in got) == c["reinserted_pages"]
    assert all(v is None or v == values[i].tobytes() for i, v in enumerate(got))
    assert _disk_bytes(kit, store) <= store.config.capacity_bytes + store.config.segment_bytes


def test_a_roll_that_keeps_more_pages_than_one_vectored_write_takes(store_factory, kit):
    """1,500 kept pages go into the new segment as one record of 1,501 buffers, beyond IOV_MAX
    (1024) for one pwritev. (Before the writes were cut at IOV_MAX, that roll failed: the put that
    triggered it was False and the kept pages were lost.)"""
    store = store_factory(capacity_bytes=16 * MiB, segment_bytes=8 * MiB, reinsertion_budget_fraction=1.0)
    keys = [kit.key(("small", i)) for i in range(1500)]
    values = [kit.value(("small", i), 4 * KiB) for i in range(1500)]
    for start in range(0, len(keys), 128):
        assert all(store.put_batch(keys[start:start + 128], values[start:start + 128]))
    assert all(value is not None for value in store.get_batch(keys))  # every page earns a second chance
    _fill_until_evicted(store, kit, size=256 * KiB)
    assert kit.counters(store)["reinserted_pages"] == len(keys)
    assert kit.read_all(store, keys) == [value.tobytes() for value in values]


def test_probe_located_counts_no_read_until_the_reader_reports_it(store_factory, kit):
    store = store_factory(capacity_bytes=2 * MiB)
    keys, values = _segment0_pages(store, kit)
    segments_dir, low_watermark, pointers = store.probe_located(keys + [kit.key("absent")] + keys[:1])
    assert len(pointers) == len(keys) and low_watermark == 0
    assert [(p.segment_id, p.length) for p in pointers] == [(0, 64 * KiB)] * len(keys)
    store.note_reads({0: [p.offset for p in pointers[:2]], 99: [0]})  # 99: no such segment
    _fill_until_evicted(store, kit)
    assert kit.counters(store)["reinserted_pages"] == 2
    got = kit.read_all(store, keys)
    assert [v is not None for v in got] == [True, True] + [False] * (len(keys) - 2)
    assert got[:2] == [values[0].tobytes(), values[1].tobytes()]


def test_zero_budget_reinserts_nothing(store_factory, kit):
    store = store_factory(capacity_bytes=2 * MiB, reinsertion_budget_fraction=0.0)
    keys, _ = _segment0_pages(store, kit)
    store.get_batch(keys)
    _fill_until_evicted(store, kit)
    assert kit.counters(store)["reinserted_pages"] == 0
    assert store.get_batch(keys) == [None] * len(keys)


def test_no_reinsertion_with_policy_none(store_factory, kit):
    store = store_factory(capacity_bytes=2 * MiB, reinsertion_policy="none")
    keys, _ = _segment0_pages(store, kit)
    store.get_batch(keys)
    _fill_until_evicted(store, kit)
    c = kit.counters(store)
    assert c["reinserted_pages"] == 0 and c["evicted_pages"] == len(keys)
    assert store.get_batch(keys) == [None] * len(keys) and store.probe(keys) == 0


def test_deleted_pages_are_not_resurrected_by_reinsertion(store_factory, kit):
    store = store_factory(capacity_bytes=2 * MiB)
    keys, _ = _segment0_pages(store, kit)
    store.get_batch(keys)
    store.delete_batch(keys[:7])
    _fill_until_evicted(store, kit)
    got = store.get_batch(keys)
    assert got[:7] == [None] * 7
    assert all(v is not None for v in got[7:])  # the default budget keeps every read page left
    assert kit.counters(store)["reinserted_pages"] == len(keys) - 7


def test_evicted_pages_stay_gone_after_reopen(store_factory, kit):
    store = store_factory(capacity_bytes=2 * MiB, reinsertion_policy="none")
    keys, _ = _segment0_pages(store, kit)
    _fill_until_evicted(store, kit)
    store.close()
    store = store_factory()
    assert store.get_batch(keys) == [None] * len(keys)
    assert 0 not in kit.segment_files(store.root)
    assert store.put_batch(keys[:1], [b"again"]) == [True]
    assert kit.read_all(store, keys[:1]) == [b"again"]


def test_lowering_capacity_applies_on_the_next_put(store_factory, kit):
    store = store_factory(capacity_bytes=8 * MiB)
    for i in range(0, 100, 5):
        store.put_batch(kit.keys(5, start=i), [kit.value(j, 64 * KiB) for j in range(i, i + 5)])
    assert _disk_bytes(kit, store) > 5 * MiB
    store.apply_tuning({"capacity_bytes": 2 * MiB})
    assert store.put_batch([kit.key("next")], [b"x"]) == [True]
    assert _disk_bytes(kit, store) <= 3 * MiB


def test_evicting_several_segments_at_once_reinserts_what_fits_and_accounts_for_every_page(store_factory, kit):
    store = store_factory(capacity_bytes=8 * MiB)
    keys = kit.keys(100)
    for i in range(0, 100, 5):
        store.put_batch(keys[i:i + 5], [kit.value(j, 64 * KiB) for j in range(i, i + 5)])
    assert all(v is not None for v in store.get_batch(keys))  # every page earned reinsertion
    store.apply_tuning({"capacity_bytes": 2 * MiB})
    _fill_until_evicted(store, kit, segments=1)
    c = kit.counters(store)
    assert c["evicted_segments"] >= 2
    survivors = sum(v is not None for v in store.get_batch(keys))
    assert c["reinserted_pages"] > 0
    # Every page put is either live or counted as evicted once (fillers included: a roll may free
    # a segment holding pages reinserted moments before, and the fillers written after them).
    live = store.stats()["space"]["live_pages"]
    assert c["evicted_pages"] + live == c["puts_pages"]
    assert survivors <= live


# ---- contract over every registered policy -------------------------------------------------------

def _evictions(kit, store) -> int:
    """Segments evicted, by the reclaimer or whole by a put the reclaimer left without room (under
    load it lags: counted as evicted_segments_inline only)."""
    counters = kit.counters(store)
    return counters["evicted_segments"] + counters["evicted_segments_inline"]


@pytest.mark.parametrize("reinsertion_policy", sorted(REINSERTION_POLICIES))
@pytest.mark.parametrize("admission_policy", sorted(ADMISSION_POLICIES))
def test_policy_contract(store_factory, kit, admission_policy, reinsertion_policy):
    """Whatever the policies: a put that returned True is readable until its segment is evicted,
    a hit has exactly the bytes put, and disk use stays within the budget."""
    store = store_factory(capacity_bytes=3 * MiB, admission_policy=admission_policy,
                          reinsertion_policy=reinsertion_policy, admission_ghost_entries=64)
    rng = random.Random(zlib.crc32(f"{admission_policy}|{reinsertion_policy}".encode()))
    pool = [kit.key(("pool", i)) for i in range(150)]
    size = {key: rng.randint(1, 48 * KiB) for key in pool}
    value = {key: kit.value(key, size[key]) for key in pool}
    stored_at: dict[bytes, int] = {}  # key -> eviction count when its put returned True
    for _ in range(250):
        batch = rng.sample(pool, rng.randint(1, 8))
        evictions_before = _evictions(kit, store)
        results = store.put_batch(batch, [value[k] for k in batch])
        evictions = _evictions(kit, store)
        for key, ok in zip(batch, results):
            if ok:
                stored_at.setdefault(key, evictions)
        # A page this put reported True is readable right away unless the put rolled segments and
        # evicted: then a page that was present may have gone, and so may one it wrote (a tiny store
        # whose read pages bank credits re-appends them ahead of a new page, CLOCK's order).
        must_read = [k for k, ok in zip(batch, results) if ok and evictions == evictions_before]
        assert [v.tobytes() if v is not None else None for v in store.get_batch(must_read)] == \
            [value[k].tobytes() for k in must_read], "a True put must be readable right away"
        assert _disk_bytes(kit, store) <= store.config.capacity_bytes + store.config.segment_bytes
        sample = rng.sample(pool, 10)
        evictions = _evictions(kit, store)
        got_pages = store.get_batch(sample)
        for key, got in zip(sample, got_pages):
            if got is not None:
                assert got.tobytes() == value[key].tobytes()
                stored_at[key] = evictions
            elif key in stored_at:
                # The background reclaimer may evict while the get runs, and counts the eviction
                # just after its pages are gone: the count must catch up.
                since = stored_at.pop(key)
                deadline = time.monotonic() + 10
                while _evictions(kit, store) <= since and time.monotonic() < deadline:
                    time.sleep(0.001)
                assert _evictions(kit, store) > since, "a stored page vanished without an eviction"
    c = kit.counters(store)
    assert _evictions(kit, store) > 0
    assert c["gets_miss_corrupt"] == c["gets_miss_io"] == 0
    if admission_policy == "second_touch":
        assert c["puts_rejected"] > 0


# ---- capacity means disk bytes (issue 8, section 8) ----------------------------------------------------


def _on_disk(root) -> int:
    """Every byte the store keeps under its directory, measured here (not by the store)."""
    import os

    total = 0
    for directory, _, files in os.walk(str(root)):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(directory, name))
            except FileNotFoundError:  # freed meanwhile by the background reclaimer
                continue
    return total


def test_segments_and_index_together_stay_within_the_budget_plus_one_segment(store_factory, kit):
    from raylsm.store import StoreConfig

    config = StoreConfig(capacity_bytes=3 * MiB, segment_bytes=1 * MiB, block_cache_bytes=MiB, write_buffer_bytes=MiB)
    store = store_factory(config=config)
    limit = config.capacity_bytes + config.segment_bytes
    for step in range(60):  # small pages: the index is a large part of what is on disk
        keys = [kit.key(("tiny", step, i)) for i in range(200)]
        assert all(store.put_batch(keys, [kit.value(("tiny", step, i), 512) for i in range(200)]))
        assert _on_disk(store.root) <= limit, f"step {step}"
    space = store.stats()["space"]
    assert space["index_bytes"] > 0 and space["disk_bytes"] == space["segment_bytes"] + space["index_bytes"]
    assert kit.counters(store)["evicted_segments"] > 0


def test_a_lower_budget_holds_right_after_reopen(store_factory, kit, tmp_path):
    from raylsm.store import StoreConfig

    big = StoreConfig(capacity_bytes=12 * MiB, segment_bytes=1 * MiB, block_cache_bytes=MiB, write_buffer_bytes=MiB)
    store = store_factory(config=big)
    for step in range(10):
        store.put_batch([kit.key(("reopen", step, i)) for i in range(14)],
                        [kit.value(("reopen", step, i), 64 * KiB) for i in range(14)])
    store.close()
    assert _on_disk(store.root) > 6 * MiB
    small = StoreConfig(capacity_bytes=3 * MiB, segment_bytes=1 * MiB, block_cache_bytes=MiB, write_buffer_bytes=MiB)
    store = store_factory(config=small)
    assert _on_disk(store.root) <= small.capacity_bytes + small.segment_bytes
    assert store.stats()["space"]["disk_bytes"] <= small.capacity_bytes + small.segment_bytes


def test_a_capacity_the_disk_cannot_hold_is_refused_at_open(store_factory, tmp_path):
    import shutil

    from raylsm.errors import CapacityError
    from raylsm.store import StoreConfig

    free = shutil.disk_usage(tmp_path).free
    config = StoreConfig(capacity_bytes=(free // MiB + 1024) * MiB, segment_bytes=1 * MiB)
    with pytest.raises(CapacityError, match="capacity_bytes .* is more than its disk can hold"):
        store_factory(config=config)
