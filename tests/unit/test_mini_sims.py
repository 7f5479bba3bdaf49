"""Miniature simulations (raylsm/store/mini_sims.py): each candidate's model ranks the candidates as
their caches would on streams where admission or reinsertion decides, and the model of the
configuration a real store runs predicts that store's hit ratio."""

from __future__ import annotations

import random

import numpy as np

from raylsm.store import mini_sims
from raylsm.store.mini_sims import CANDIDATES, MiniSims, candidate_of
from raylsm.store.page_key import key_digest
from raylsm.store.workload_stats import WorkloadStats

KiB = 1024
PAGE = 4 * KiB


def _sims(capacity_pages: int) -> MiniSims:
    """Models at rate 1 (every page sampled), holding `capacity_pages` pages."""
    sims = MiniSims(capacity_pages * PAGE, min_rate=1.0, ghost_entries=1 << 20)
    sims.start(PAGE)
    assert sims.rate == 1.0
    return sims


def _ratios(sims: MiniSims, digests) -> dict[str, float]:
    for digest in digests:
        sims.record([(digest, digest)])  # each page its own extent, each reference its own call
    counts = sims.drain()["candidates"]
    return {name: count["hits"] / count["references"] for name, count in counts.items()}


def test_under_a_scan_flood_the_models_prefer_second_touch_admission():
    # A hot loop of 80 pages re-referenced every 320 references, 3 one-off pages between its
    # references, 100 pages of capacity: admitting everything flushes the loop before its next turn
    # (a read page's second chance does not last 240 insertions); admitting on a second offer keeps
    # the one-off pages out.
    hot = list(range(80))
    scan = iter(range(10**6, 10**7))
    stream = []
    for _ in range(30):
        for page in hot:
            stream.append(page)
            stream.extend(next(scan) for _ in range(3))
    ratios = _ratios(_sims(100), stream)
    assert ratios["second_touch_clock1"] > 0.15
    assert max(ratios[name] for name in ("fifo", "clock1", "clock2", "clock4")) < 0.05


def test_for_pages_referenced_twice_the_models_prefer_admitting_everything():
    # Each page is referenced twice, 50 references apart (a conversation's next turn): admitting on
    # the second offer never serves the second reference.
    rng = random.Random(1)
    stream = []
    pending: list[tuple[int, int]] = []
    for step in range(6000):
        due = [page for page, at in pending if at <= step]
        pending = [(page, at) for page, at in pending if at > step]
        if due:
            stream.append(due[0])
            pending.extend((page, step) for page in due[1:])
        else:
            page = rng.randrange(1 << 40)
            stream.append(page)
            pending.append((page, step + 50))
    ratios = _ratios(_sims(200), stream)
    assert ratios["clock1"] > 0.3
    assert ratios["second_touch_clock1"] < 0.05
    assert ratios["clock1"] > ratios["second_touch_clock1"] + 0.25


def test_read_credits_keep_pages_read_often_through_turns_without_a_read():
    # 40 hot pages read in bursts of 3, then idle for 2 cache turnovers of one-off pages: a page
    # with 2 or 4 banked reads outlives the idle gap, a plain CLOCK page does not.
    hot = list(range(40))
    scan = iter(range(10**6, 10**8))
    stream = []
    for _ in range(20):
        for _ in range(3):
            stream.extend(hot)
        stream.extend(next(scan) for _ in range(130))
    ratios = _ratios(_sims(100), stream)
    assert ratios["clock4"] > ratios["clock1"] + 0.05
    assert ratios["fifo"] <= ratios["clock1"]


def test_the_rate_is_set_at_the_first_write_from_the_page_size_and_never_below_the_minimum():
    sims = MiniSims(capacity_bytes=64 * mini_sims.SIM_PAGES * PAGE, min_rate=1 / 64, ghost_entries=1024)
    assert sims.threshold == 0  # nothing sampled before the page size is known
    sims.start(PAGE)
    assert abs(sims.rate - 1 / 64) < 1e-12
    assert sims.drain()["capacity_pages"] == mini_sims.SIM_PAGES
    small = MiniSims(capacity_bytes=10 * PAGE, min_rate=1 / 64, ghost_entries=1024)
    small.start(PAGE)
    assert small.rate == 1.0 and small.drain()["capacity_pages"] == 10


def test_events_beyond_the_buffer_are_dropped_and_counted(monkeypatch):
    monkeypatch.setattr(mini_sims, "MAX_EVENTS", 10)
    sims = _sims(5)
    for page in range(15):
        sims.record([(page, page)])
    drained = sims.drain()
    assert drained["dropped"] == 5
    assert all(count["references"] == 10 for count in drained["candidates"].values())


def test_candidate_of_names_the_configuration_a_store_runs(kit):
    for name, changes in CANDIDATES.items():
        assert candidate_of(kit.config().with_changes(changes)) == name
    assert candidate_of(kit.config(reinsertion_policy="prefix_aware")) is None


def test_the_model_of_the_running_configuration_predicts_the_store(store_factory, kit, tmp_path):
    """A real store (256 KiB segments, 8 MiB) fed chains that are re-asked at random later, through
    probe, get and put as SGLang drives it: its model's hit ratio is within a few points of the
    store's own, for FIFO and for the default CLOCK."""
    rng = random.Random(7)
    value = np.zeros(16 * KiB, np.uint8)
    for name in ("fifo", "clock2"):
        # 256 KiB segments (32 in the budget): the store's segment FIFO is close to the models'
        # page FIFO (with 1 MiB segments it evicts an eighth of its pages at a time, and FIFO's
        # model said 0.524 where the store hit 0.463).
        store = store_factory(path=tmp_path / name, segment_bytes=256 * KiB, **CANDIDATES[name])
        assert candidate_of(store.config) == name
        chains = []
        hits = asked = 0
        for request in range(3000):
            if chains and rng.random() < 0.6:
                keys = chains[min(int(rng.expovariate(1 / 40)), len(chains) - 1)]
            else:
                keys = kit.chain(("c", name, request), 6)
                chains.insert(0, keys)
            present = store.probe(keys)
            if present:
                store.get_batch_into(keys[:present], [np.empty(16 * KiB, np.uint8) for _ in range(present)])
            store.put_batch(keys[present:], [value] * (len(keys) - present))
            hits += present
            asked += len(keys)
        counts = store.drain_sims()["candidates"][name]
        predicted = counts["hits"] / counts["references"]
        actual = hits / asked
        assert 0.2 < actual < 0.9
        assert abs(predicted - actual) < 0.06, (name, predicted, actual)


def test_workload_statistics_feed_the_models_every_page_sglang_asks_or_writes_once(kit):
    stats = WorkloadStats(sample_rate=1.0, sims=MiniSims(1000 * PAGE, 1.0, 1 << 20))
    keys = kit.keys(4)
    digests = [key_digest(key) for key in keys]
    stats.asked(keys, 0, digests)  # before the first write the rate is unknown: not recorded
    stats.written(digests, [PAGE] * 4, [True] * 4, keys)  # 4 writes no probe asked since the rate was known
    stats.asked(keys, 1, digests)  # 4 asks, the whole batch, though this store lacks pages 2-4
    stats.written(digests[1:], [PAGE] * 3, [True] * 3, keys[1:])  # their write follows that ask: no second reference
    stats.written(digests[:1], [PAGE], [False], keys[:1])  # page 1 again, not just asked: a reference
    counts = stats.sims.drain()["candidates"]
    assert {count["references"] for count in counts.values()} == {9}
    # The admit-all models hold all four from the first write: the 4 asks and the last write hit.
    # Second-touch admits each page at its second offer (the asks, which miss): only the last write hits.
    assert counts["clock1"]["hits"] == 5 and counts["second_touch_clock1"]["hits"] == 1


def test_the_models_see_one_stream_whatever_the_running_store_holds(kit):
    # SGLang asks a chain whole and writes back what it did not load: the models must see the same
    # references from a store that holds the chain (answers all present) and from one that lacks its
    # first page (answers 0; the put then writes the chain), so that a policy other than the running
    # one is judged on the stream it would have seen. Here the models hold the chain's pages 2-4 but
    # not its first: asked whole, the chain misses at its first page, and the pages behind it are no
    # hits (before, the store that lacked page 1 showed the models only that page's ask, and the
    # put's pages 2-4 as three hits of their own call).
    chain = kit.chain("chat", 4)
    digests = [key_digest(key) for key in chain]

    def replay(present: int) -> dict:
        stats = WorkloadStats(sample_rate=1.0, sims=MiniSims(4 * PAGE, 1.0, 1 << 20))
        stats.written(digests[1:], [PAGE] * 3, [True] * 3, chain[1:])
        stats.asked(chain, present, digests)
        if present < 4:
            stats.written(digests[present:], [PAGE] * (4 - present), [True] * (4 - present), chain[present:])
        return stats.sims.drain()["candidates"]

    held, lost = replay(4), replay(0)
    assert held == lost
    assert held["fifo"] == {"references": 7, "hits": 0}


def test_a_chain_stops_at_its_first_miss_in_the_models_as_sglang_stops():
    # One extent of 4 pages, asked in one call; a one-off page pushes its first page out of the
    # FIFO model: the next ask of the chain misses that page, and its 3 held pages count as misses
    # too (SGLang loads a prefix only).
    sims = _sims(4)
    chain = [(7, page) for page in range(4)]
    sims.record(chain)  # 4 misses, offered
    sims.record([(8, 100)])  # evicts page 0 from the FIFO model
    sims.record(chain)
    fifo = sims.drain()["candidates"]["fifo"]
    assert fifo == {"references": 9, "hits": 0}
    sims.record([(7, 1), (7, 2)])  # the chain's held pages from a later depth: hits
    assert sims.drain()["candidates"]["fifo"]["hits"] == 2
