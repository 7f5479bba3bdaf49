"""Workload statistics (raylsm/store/workload_stats.py): the sampled miss-ratio curve against an exact
LRU replay of the same references, ghost hits, hits by depth and age, and what a store reports."""

from __future__ import annotations

import random
from collections import OrderedDict

import numpy as np
import pytest

from raylsm.store import workload_stats
from raylsm.store.page_key import key_digest
from raylsm.store.workload_stats import DISTANCE_EDGES, WorkloadStats

KiB, MiB = 1024, 1024 * 1024


def _stream(kit, references: int, pages: int, seed: int, write_share: float = 0.3):
    """(op, key) references, Zipf-like page popularity; op "ask" or "write"."""
    rng = random.Random(seed)
    keys = [kit.key(("zipf", i)) for i in range(pages)]
    weights = [1 / (rank + 1) ** 0.9 for rank in range(pages)]
    picks = rng.choices(range(pages), weights=weights, k=references)
    return [("write" if rng.random() < write_share else "ask", keys[i]) for i in picks]


def _exact_lru_miss_ratios(stream, capacities):
    """LRU where every reference moves its page to the top (an ask that misses too: SGLang writes
    it next): the miss ratio of the asks at each capacity (pages)."""
    ratios = []
    for capacity in capacities:
        cache: OrderedDict = OrderedDict()
        asks = misses = 0
        for op, key in stream:
            if op == "ask":
                asks += 1
                misses += key not in cache
            cache[key] = None
            cache.move_to_end(key)
            if len(cache) > capacity:
                cache.popitem(last=False)
        ratios.append(misses / asks)
    return ratios


def _feed(stats, stream, page_bytes=4 * KiB):
    """Asks count in the curve; these writes are refreshes (of present pages)."""
    for op, key in stream:
        if op == "ask":
            stats.asked([key], 1)
        else:
            stats.written([key_digest(key)], [page_bytes], [False])


def _curve_at(snapshot, pages, page_bytes=4 * KiB):
    points = dict((size, ratio) for size, ratio in snapshot["mrc"])
    return [points[p * page_bytes] for p in pages]


def test_every_page_tracked_gives_the_exact_lru_curve(kit):
    stream = _stream(kit, 6000, 800, seed=1)
    stats = WorkloadStats(sample_rate=1.0)
    _feed(stats, stream)
    capacities = [1, 2, 4, 16, 64, 256, 512]
    assert all(c in DISTANCE_EDGES for c in capacities)
    got = _curve_at(stats.snapshot(), capacities)
    assert got == pytest.approx(_exact_lru_miss_ratios(stream, capacities), abs=1e-4)
    assert stats.snapshot()["references"] == sum(op == "ask" for op, _ in stream)


def test_a_sampled_curve_estimates_the_exact_one(kit):
    stream = _stream(kit, 60000, 20000, seed=2)
    stats = WorkloadStats(sample_rate=1 / 8)
    _feed(stats, stream)
    # (SHARDS is coarse below a few hundred sampled pages: at 256 pages, 32 sampled, it was 0.058 off)
    capacities = [1024, 4096, 16384]
    exact = _exact_lru_miss_ratios(stream, capacities)
    got = _curve_at(stats.snapshot(), capacities)
    assert np.abs(np.array(got) - np.array(exact)).max() < 0.03, (got, exact)
    assert stats.snapshot()["tracked_pages"] < 20000 / 4  # about an eighth of the pages


def test_forgetting_beyond_max_tracked_keeps_recent_distances_exact(kit):
    stream = _stream(kit, 6000, 800, seed=3)
    small = WorkloadStats(sample_rate=1.0, max_tracked=300)  # compacts many times
    _feed(small, stream)
    capacities = [16, 64, 256]  # below max_tracked: exact still
    assert _curve_at(small.snapshot(), capacities) == pytest.approx(_exact_lru_miss_ratios(stream, capacities),
                                                                    abs=1e-4)


def test_miss_ratio_at_capacity_reads_the_curve(kit):
    stream = _stream(kit, 6000, 800, seed=4)
    stats = WorkloadStats(sample_rate=1.0)
    _feed(stats, stream)
    snapshot = stats.snapshot(capacity_bytes=64 * 4 * KiB)
    assert snapshot["miss_ratio_at_capacity"] == pytest.approx(_curve_at(snapshot, [64])[0], abs=1e-4)
    assert max(size for size, _ in snapshot["mrc"]) <= 64 * 64 * 4 * KiB


def test_ghost_hits_count_asks_for_evicted_pages(kit):
    stats = WorkloadStats(sample_rate=1.0)
    keys = kit.keys(10)
    stats.written([key_digest(key) for key in keys], [4 * KiB] * 10, [True] * 10)
    stats.evicted(keys[:4])
    stats.asked([keys[0]], 0)  # absent: it was evicted
    stats.asked([keys[5]], 0)  # absent, never evicted (e.g. deleted)
    stats.asked([keys[1], keys[2]], 0)  # only the first absent key is asked
    assert stats.snapshot()["ghost_hits_est"] == 2
    stats.asked([keys[0]], 0)  # counted once
    stats.written([key_digest(keys[1])], [4 * KiB], [True])  # stored again: no longer a ghost
    stats.asked([keys[1]], 0)
    assert stats.snapshot()["ghost_hits_est"] == 2


def test_hits_by_depth_and_age(kit, monkeypatch):
    stats = WorkloadStats(sample_rate=1.0)
    chain = kit.chain("conversation", 20)
    clock = [1000.0]
    monkeypatch.setattr(workload_stats.time, "time", lambda: clock[0])
    stats.written([key_digest(key) for key in chain], [4 * KiB] * len(chain), [True] * len(chain))
    clock[0] += 30
    stats.asked(chain[:12], 10)  # depths 0..9 present, 10 the first miss
    snapshot = stats.snapshot()
    assert snapshot["hits_by_depth_pages"] == {"0-1": 1, "1-2": 1, "2-4": 2, "4-8": 4, "8-16": 2, "16-32": 0,
                                               "32-64": 0, "64-128": 0, "128-256": 0, "256-512": 0,
                                               "512-1024": 0, "1024+": 0}
    assert snapshot["hits_by_age_s"]["10-60"] == 10 and sum(snapshot["hits_by_age_s"].values()) == 10
    assert snapshot["hit_ratio"] == pytest.approx(10 / (20 + 11), abs=1e-4)  # 20 writes, 11 asks


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="sample_rate"):
        WorkloadStats(sample_rate=0)
    with pytest.raises(ValueError, match="max_tracked"):
        WorkloadStats(max_tracked=0)


def test_a_store_reports_its_workload(store_factory, kit):
    store = store_factory(capacity_bytes=4 * MiB, workload_sample_rate=1.0)
    chain = kit.chain("store", 40)
    assert store.probe(chain) == 0
    store.put_batch(chain, [kit.value(key, 64 * KiB) for key in chain])  # 2.5 MiB
    assert store.probe(chain) == len(chain)
    for step in range(6):  # 6 MiB more: the chain's segments are evicted
        keys = [kit.key(("filler", step, i)) for i in range(16)]
        store.put_batch(keys, [kit.value(key, 64 * KiB) for key in keys])
    assert store.probe(chain) == 0
    workload = store.stats()["workload"]
    # asks: chain[0] (absent), 40 present, chain[0] (evicted); writes of absent pages: the chain's
    # 39 others (chain[0] was the probe's first miss: counted once) and 96 fillers
    assert workload["references"] == (1 + len(chain) + 1) + (len(chain) - 1) + 6 * 16
    assert workload["ghost_hits_est"] == 1
    assert workload["mean_page_bytes"] == 64 * KiB
    assert workload["miss_ratio_at_capacity"] is not None


def test_a_store_without_workload_statistics(store_factory, tmp_path):
    store = store_factory(tmp_path / "quiet", workload_sample_rate=0)
    assert "workload" not in store.stats()


def test_a_snapshot_is_reused_only_within_its_max_age(kit):
    """The shard actor exports stats after every call: the curve is recomputed at most once a second
    there, and always for a caller that asks for it fresh."""
    stats = WorkloadStats(sample_rate=1.0)
    keys = kit.keys(8)
    stats.asked(keys, 0)
    first = stats.snapshot(1 << 20, max_age_s=60)
    stats.asked(keys, 0)
    assert stats.snapshot(1 << 20, max_age_s=60)["references"] == first["references"] == 1
    assert stats.snapshot(2 << 20, max_age_s=60)["references"] == 2  # another capacity: recomputed
    stats.asked(keys, 0)
    assert stats.snapshot(2 << 20)["references"] == 3  # fresh
