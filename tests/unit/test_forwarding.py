"""Eviction forwarding without Ray (raylsm.actors.forwarding, docs/placement.md): the reclaimer
hands a forwarder exactly the verified pages its eviction dropped, and nothing it should not; the
forwarder picks its target from the frontier reports, applies the slack, and continues a probe's
leading run through the pages it forwarded. Sending between shards is tested in
tests/ray/test_forwarding_tier.py."""

from __future__ import annotations

import time

import numpy as np
import pytest

from raylsm.actors.forwarding import Forwarding

KiB, MiB = 1024, 1024 * 1024


class Recorder:
    """A forwarder that takes every segment offered and keeps what it was handed."""

    def __init__(self, wants: bool = True):
        self._wants = wants
        self.asked = 0
        self.pages = []

    def wants(self, sealed_at):
        self.asked += 1
        return self._wants

    def forward(self, pages, sealed_at):
        self.pages.extend(pages)


def _fill(store, kit, tag, batches, per_batch=8, size=64 * KiB):
    keys = []
    for b in range(batches):
        batch = [kit.key((tag, b, i)) for i in range(per_batch)]
        assert store.put_batch(batch, [kit.value((tag, b, i), size) for i in range(per_batch)]) == [True] * per_batch
        assert store.wait_reclaimed()
        keys += batch
    return keys


def test_the_reclaimer_forwards_exactly_the_verified_pages_its_eviction_dropped(store_factory, kit):
    store = store_factory(capacity_bytes=12 * MiB, background_reclaim=True)
    recorder = Recorder()
    store.forwarder = recorder
    first = _fill(store, kit, "first", 4)
    deleted = first[:4]
    assert store.delete_batch(deleted) == len(deleted)
    kept = first[8:16]
    assert all(value is not None for value in store.get_batch(kept))  # read: reinserted, not evicted
    written_in = {key: pointer.segment_id for key, pointer in zip(kept, store.locate_batch(kept)[2])}
    _fill(store, kit, "flood", 40)
    assert recorder.pages, "nothing was forwarded"
    forwarded = {page.key: page for page in recorder.pages}
    assert not set(deleted) & set(forwarded), "a deleted page was forwarded (a delete undone elsewhere)"
    for key in set(kept) & set(forwarded):  # (evicted again later, unread, from where it was re-appended)
        assert forwarded[key].origin[0] > written_in[key], "a reinserted page was forwarded while kept"
    assert len(forwarded) == len(recorder.pages)
    values = {kit.key(("first", b, i)): kit.value(("first", b, i), 64 * KiB) for b in range(4) for i in range(8)}
    for key, page in forwarded.items():
        assert store.get_batch([key]) == [None]  # evicted here
        if key in values:
            assert np.array_equal(page.value, values[key])
    assert set(first) - set(deleted) - set(kept) <= set(forwarded)  # every dropped page of the first batches
    assert kit.counters(store)["evicted_pages"] >= len(forwarded)


def test_a_forwarder_that_does_not_want_a_segment_gets_nothing(store_factory, kit):
    store = store_factory(capacity_bytes=12 * MiB, background_reclaim=True)
    recorder = Recorder(wants=False)
    store.forwarder = recorder
    _fill(store, kit, "flood", 30)
    assert recorder.asked > 0 and recorder.pages == []


def _forwarding(name="a", disk="disk-a", slack=0.25, max_pointers=8):
    return Forwarding(name, disk, lambda shard: pytest.fail("no sends in unit tests"), slack, max_pointers,
                      lambda: {"oldest_sealed_at": None, "full": False})


def test_the_targets_are_shards_of_other_disks_with_room_or_older_pages_by_the_slack():
    forwarding = _forwarding()
    try:
        now = time.time()
        full = {"full": True}
        forwarding.update({"a": {"disk": "disk-a", "full": False},
                           "a2": {"disk": "disk-a", "full": False},  # same disk budget: never
                           "b": {"disk": "disk-b", "oldest_sealed_at": now - 100, **full},
                           "c": {"disk": "disk-c", "oldest_sealed_at": now - 400, **full}})
        assert forwarding.targets(now - 10) == ["b", "c"]
        assert forwarding.targets(now - 290) == ["c"]  # older than 0.75 x b's oldest age
        assert forwarding.targets(now - 310) == [] and not forwarding.wants(now - 310)  # and c's
        forwarding.update({"b": {"disk": "disk-b", "oldest_sealed_at": now - 100, **full},
                           "d": {"disk": "disk-d", "oldest_sealed_at": None, "full": False}})
        assert forwarding.targets(now - 10_000) == ["d"]  # room: any age
        forwarding.update({"a2": {"disk": "disk-a", "full": False}, "e": None})
        assert forwarding.targets(now) == [] and not forwarding.wants(now)
    finally:
        forwarding.close()


def test_a_shard_that_received_forwarded_pages_forwards_nothing_for_two_rounds():
    forwarding = _forwarding()
    try:
        reports = {"b": {"disk": "disk-b", "oldest_sealed_at": None, "full": False}}
        forwarding.update(reports)
        assert forwarding.wants(time.time())
        forwarding.received([b"k" * 8])
        assert not forwarding.wants(time.time())  # its evictions are the tier's oldest now
        forwarding._received_at -= 2 * forwarding._round_s + 0.01  # two rounds later
        assert forwarding.wants(time.time())
    finally:
        forwarding.close()


def test_a_probe_continues_its_leading_run_through_forwarded_pages():
    forwarding = _forwarding()
    keys = [bytes([i]) * 4 for i in range(8)]
    here = {keys[0], keys[1], keys[4], keys[5]}
    forwarding._pointers.update({keys[2]: "b", keys[3]: "c", keys[7]: "b"})

    def probe(rest):
        run = 0
        while run < len(rest) and rest[run] in here:
            run += 1
        return [True] * run

    try:
        items, where = forwarding.probe_through(keys, probe, probe(keys))
        assert items == [True, True, None, None, True, True] and where == {2: "b", 3: "c"}  # key 6 is nowhere
        items, where = forwarding.probe_through(keys[6:], probe, probe(keys[6:]))
        assert items == [] and where == {}
        assert forwarding.stats()["forwarded_reads"] == 2
    finally:
        forwarding.close()
