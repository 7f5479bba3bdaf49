"""Hot-extent splitting: the router's sub-extent anchors (raylsm.router.page_anchors), the shard's
heavy-hitter sketch (raylsm.store.hot_extents) and the controller's split set (published with the
ring, expired when it cools), against a fake cluster (no Ray)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raylsm.config import TierConfig
from raylsm.controller.controller import Controller
from raylsm.controller.ray_api import ShardSlot
from raylsm.router import ExtentConfig, ExtentRouter, HashRing, page_anchors
from raylsm.store import page_key
from raylsm.store.hot_extents import HotExtents

NAMESPACE = page_key.namespace_id("split-test")
EXTENTS = ExtentConfig(extent_pages=16, shallow_depth_pages=4, shallow_extent_pages=4, split_extent_pages=4)


def chain(name: str, length: int, prefix: list[bytes] = ()) -> list[bytes]:
    pages = list(prefix)
    while len(pages) < length:
        pages.append(hashlib.sha256(f"{name}/{len(pages)}".encode() + (pages[-1] if pages else b"")).digest())
    return pages


def extent_id(page: bytes) -> bytes:
    return page[:page_key.EXTENT_ID_BYTES]


# ---- router -------------------------------------------------------------------------------------


def test_a_split_extent_anchors_each_sub_extent_on_its_own_first_page():
    full = chain("a", 40)  # head [0, 4), extents [4, 20), [20, 36), [36, 52)
    splits = frozenset({extent_id(full[4])})
    anchors = page_anchors(full, [], EXTENTS, splits)
    for depth, (got_depth, anchor) in enumerate(anchors):
        assert got_depth == depth
        if depth < 4:
            assert anchor == full[0]  # the head is never split
        elif depth < 20:
            assert anchor == full[4 + (depth - 4) // 4 * 4]  # sub-extents of 4 pages
        else:
            assert anchor == full[20 if depth < 36 else 36]  # other extents untouched


def test_continuations_of_a_shared_prefix_leave_its_shard_once_its_extent_is_split():
    shared = chain("system+tools", 9)  # ends inside the extent [4, 20)
    continuations = [chain(f"session-{i}", 20, shared) for i in range(64)]
    ring = HashRing([f"shard-{i}" for i in range(8)], 64)
    plain = ExtentRouter(ring, EXTENTS)
    split = ExtentRouter(ring, EXTENTS, {extent_id(shared[4])})

    def shards_of_new_pages(router):
        return {shard for pages in continuations for shard in router.route_pages(NAMESPACE, pages[12:], pages[:12])}

    assert len(shards_of_new_pages(plain)) == 1  # every session's own pages on the prefix's shard
    assert len(shards_of_new_pages(split)) >= 6  # spread: sub-extents past the shared pages are unique


@settings(max_examples=60, deadline=None)
@given(length=st.integers(1, 60), cut=st.integers(0, 60), step=st.integers(1, 20), which=st.integers(0, 3))
def test_split_keys_and_shards_do_not_depend_on_how_a_chain_is_batched(length, cut, step, which):
    extents = ExtentConfig(16, 4, 4, step)
    full = chain(f"c{length}", length)
    starts = [4, 20, 36, 52]
    splits = frozenset(extent_id(full[s]) for s in starts[:which + 1] if s < length)
    router = ExtentRouter(HashRing([f"s{i}" for i in range(5)], 16), extents, splits)
    cut = min(cut, length)
    head, tail = full[:cut], full[cut:]
    assert router.page_keys(NAMESPACE, head, []) + router.page_keys(NAMESPACE, tail, head) == \
        router.page_keys(NAMESPACE, full, [])
    assert router.route_pages(NAMESPACE, head, []) + router.route_pages(NAMESPACE, tail, head) == \
        router.route_pages(NAMESPACE, full, [])
    for key, shard in zip(router.page_keys(NAMESPACE, full, []), router.route_pages(NAMESPACE, full, [])):
        assert router.shard_of_key(key) == shard  # keys carry the sub-extent anchor


def test_split_extent_pages_must_be_positive():
    with pytest.raises(Exception, match="split_extent_pages"):
        ExtentConfig(16, 4, 4, 0)
    assert ExtentConfig.from_dict(ExtentConfig(16, 4, 4, 2).to_dict()) == ExtentConfig(16, 4, 4, 2)
    assert ExtentConfig.from_dict({"extent_pages": 8, "shallow_depth_pages": 0, "shallow_extent_pages": 1}) \
        .split_extent_pages == 16  # a config written before the field existed


# ---- the shard's sketch ---------------------------------------------------------------------------


def keys_under(anchor: bytes, count: int, salt: str) -> list[bytes]:
    return [page_key.encode(NAMESPACE, anchor, 4 + i, hashlib.sha256(f"{salt}{i}".encode()).digest())
            for i in range(count)]


def exact(capacity=8, window_pages=1 << 20, limit=512):
    """A sketch that keeps every fingerprint (no sampling): exact counts for small tests."""
    return HotExtents(capacity, window_pages, limit, extent_sample=1, shard_sample=1)


def test_the_sketch_reports_an_extent_that_many_chains_diverge_inside():
    sketch = exact(window_pages=802)
    hot, cold = chain("hot", 1)[0], [chain(f"cold{i}", 1)[0] for i in range(50)]
    for session in range(40):
        sketch.add(keys_under(hot, 5, f"s{session}"))  # 40 chains below one anchor
        sketch.add(keys_under(cold[session], 5, f"c{session}"))
    assert sketch.distinct_pages(extent_id(hot)) == 200
    assert sketch.hot(threshold_pages=32) == []  # the window is not half full yet (400 of 802)
    sketch.add(keys_under(cold[45], 1, "one more"))
    assert sketch.hot(threshold_pages=32) == [extent_id(hot)]
    assert sketch.hot(threshold_pages=32, min_share=0.4) == [extent_id(hot)]  # 200 of 401 distinct
    assert sketch.hot(threshold_pages=32, min_share=0.6) == []  # not a big enough share of the shard
    sketch.add([b"not a key", b""])  # skipped, not raised


def test_one_chain_stored_again_and_again_is_not_hot():
    sketch = exact(window_pages=64)
    anchor = chain("single", 1)[0]
    for _ in range(20):  # evicted and re-stored: the same 16 pages each time
        sketch.add(keys_under(anchor, 16, "same chain"))
    assert sketch.distinct_pages(extent_id(anchor)) == 16
    assert sketch.hot(threshold_pages=8) == [extent_id(anchor)]  # over a tiny threshold only
    assert sketch.hot(threshold_pages=32) == []


def test_a_full_table_keeps_the_hot_extent_and_forgets_it_once_it_cooled():
    sketch = exact(capacity=4, window_pages=100)
    hot = chain("hot", 1)[0]
    sketch.add(keys_under(hot, 60, "burst"))
    for i in range(10):  # many cold extents do not crowd it out of a full table
        sketch.add(keys_under(chain(f"cold{i}", 1)[0], 3, f"c{i}"))
    assert sketch.hot(threshold_pages=32) == [extent_id(hot)]
    for i in range(80):  # two windows of cool traffic
        sketch.add(keys_under(chain(f"other{i}", 1)[0], 3, f"o{i}"))
    assert sketch.hot(threshold_pages=32) == []


def test_sampled_counts_estimate_the_distinct_pages():
    sketch = HotExtents(window_pages=1 << 16)  # 1 in 8 per extent, 1 in 64 for the shard
    hot = chain("hot", 1)[0]
    for session in range(400):
        sketch.add(keys_under(hot, 10, f"s{session}"))  # 4,000 distinct pages
        sketch.add(keys_under(chain(f"cold{session}", 1)[0], 10, f"c{session}"))
    assert 3000 <= sketch.distinct_pages(extent_id(hot)) <= 4096
    for filler in range(400):  # to half a window: 32,800 distinct pages in all
        sketch.add(keys_under(chain(f"filler{filler}", 1)[0], 62, f"f{filler}"))
    assert sketch.hot(threshold_pages=256, min_share=0.05) == [extent_id(hot)]  # about 12%
    assert sketch.hot(threshold_pages=256, min_share=0.25) == []


# ---- the controller ------------------------------------------------------------------------------


class HotCluster:
    """Two alive nodes with one shard each; `hot` is what each shard reports, `fail` who errors."""

    def __init__(self):
        self.hot: dict[str, list[bytes]] = {}
        self.fail: set[str] = set()

    def shard_slots(self, resource_name, disk_label):
        return [ShardSlot(f"shard-n{i}-0", f"n{i}") for i in range(2)]

    def alive_node_ids(self):
        return {"n0", "n1"}

    def start_shard(self, slot, config):
        return slot.name

    def ping_all(self, handles, timeout_s):
        return {name: "ok" for name in handles}

    def kill(self, handle):
        pass

    def existing_shard(self, name):
        return None  # a fresh tier: no shard runs before the controller starts it

    def request_shards(self, count, resource_name):
        pass

    def call_all(self, handles, method, timeout_s, *args):
        if method != "hot_extents":
            return {name: {} for name in handles}
        return {name: RuntimeError("down") if name in self.fail else list(self.hot.get(name, [])) for name in handles}


def test_the_controller_publishes_reported_hot_extents_with_the_ring_and_expires_them(monkeypatch):
    cluster = HotCluster()
    config = TierConfig.from_dict({"controller": {"split_ttl_s": 60.0}})
    controller = Controller(config, api=cluster)
    assert controller.ring()["splits"] is None  # not asked the shards yet: nothing published
    controller.reconcile_once()
    controller.reconcile_once()  # shards serving
    empty = controller.ring()
    assert empty["splits"] == {"version": empty["splits"]["version"], "extents": []}
    known = empty["splits"]["version"]
    assert controller.ring(known)["splits"] is None  # nothing new: not resent

    cluster.hot = {"shard-n0-0": [b"A" * 16], "shard-n1-0": [b"B" * 16]}
    controller.reconcile_once()
    ring = controller.ring(known)
    assert ring["splits"]["extents"] == [b"A" * 16, b"B" * 16] and ring["splits"]["version"] > known
    status = controller.status()
    assert status["split_extents"] == 2

    cluster.hot, cluster.fail = {}, {"shard-n1-0"}  # cooled, and one shard errors: no stall, no loss
    controller.reconcile_once()
    assert controller.ring()["splits"]["extents"] == [b"A" * 16, b"B" * 16]
    import raylsm.controller.controller as module
    later = module.time.time() + 61
    monkeypatch.setattr(module.time, "time", lambda: later)
    controller.reconcile_once()
    assert controller.ring()["splits"]["extents"] == []


def test_the_controller_keeps_at_most_max_split_extents_the_newest_first():
    cluster = HotCluster()
    controller = Controller(TierConfig.from_dict({"controller": {"max_split_extents": 3}}), api=cluster)
    controller.reconcile_once()
    controller.reconcile_once()
    for round_ in range(3):
        cluster.hot = {"shard-n0-0": [bytes([round_ * 2]) * 16, bytes([round_ * 2 + 1]) * 16]}
        controller.reconcile_once()
    assert len(controller.ring()["splits"]["extents"]) == 3
    assert {bytes([4]) * 16, bytes([5]) * 16} <= set(controller.ring()["splits"]["extents"])
    assert controller.split_threshold_pages() == 2 * TierConfig().client.extent_pages


def test_a_restarted_controller_rebuilds_the_split_set_from_the_shards():
    cluster = HotCluster()
    cluster.hot = {"shard-n0-0": [b"A" * 16]}
    first = Controller(TierConfig(), api=cluster)
    for _ in range(3):
        first.reconcile_once()
    published = first.ring()["splits"]
    restarted = Controller(TierConfig(), api=cluster)  # its state is gone; the shards' sketches are not
    assert restarted.ring()["splits"] is None  # clients keep their set meanwhile
    for _ in range(3):
        restarted.reconcile_once()
    assert restarted.ring()["splits"]["extents"] == published["extents"] == [b"A" * 16]


class OneNodeCluster(HotCluster):
    """Two shards of one node (one disk)."""

    def shard_slots(self, resource_name, disk_label):
        return [ShardSlot(f"shard-n0-{i}", "n0") for i in range(2)]

    def alive_node_ids(self):
        return {"n0"}


@pytest.mark.parametrize("pooled", [True, False])
def test_shards_of_one_pooled_disk_are_not_split_partitioned_ones_are(pooled):
    """A disk budget pool evicts as one cache: an extent that loads one of its shards costs no hits,
    so splitting it would only re-key pages. Fixed shares (no pool) lose hits to it: split."""
    cluster = OneNodeCluster()
    cluster.hot = {"shard-n0-0": [b"A" * 16]}
    controller = Controller(TierConfig.from_dict({"shard": {"pool_disk_budget": pooled}}), api=cluster)
    for _ in range(3):
        controller.reconcile_once()
    assert controller.ring()["splits"]["extents"] == ([] if pooled else [b"A" * 16])
