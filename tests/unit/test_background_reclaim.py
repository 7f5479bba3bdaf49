"""Eviction off the put path (issue 13): the background reclaimer keeps a segment of room ahead of
the writer, so a put only writes into free space and never reads or re-appends kept pages itself.
Disk stays within the budget plus one segment; pages read since written survive; a writer that
outruns the reclaimer drops whole segments without reading them; kill -9 is covered in
test_crash_recovery (background_reclaim)."""

from __future__ import annotations

import threading

import pytest

from raylsm.store import segment as segment_module
from raylsm.store.outcomes import PutOutcome

KiB, MiB = 1024, 1024 * 1024


@pytest.fixture
def background_store(store_factory):
    return store_factory(capacity_bytes=12 * MiB, background_reclaim=True)


def _fill(store, kit, tag, batches, wait=True, per_batch=8, size=64 * KiB):
    keys_all = []
    for b in range(batches):
        keys = [kit.key((tag, b, i)) for i in range(per_batch)]
        assert store.put_batch(keys, [kit.value((tag, b, i), size) for i in range(per_batch)]) == [True] * per_batch
        keys_all += keys
        if wait:
            assert store.wait_reclaimed()
    return keys_all


def test_a_put_never_reads_or_evicts_when_the_reclaimer_keeps_up(background_store, kit, monkeypatch):
    store = background_store
    writer = threading.current_thread()
    reads_on_writer = []
    real_read = segment_module.Segment.read_into

    def read_into(self, offset, views, use_direct_io):
        if threading.current_thread() is writer:
            reads_on_writer.append(offset)
        return real_read(self, offset, views, use_direct_io)

    monkeypatch.setattr(segment_module.Segment, "read_into", read_into)
    read_back = _fill(store, kit, "warm", 6)
    monkeypatch.setattr(segment_module.Segment, "read_into", real_read)
    assert all(v is not None for v in store.get_batch(read_back))  # these earn reinsertion
    monkeypatch.setattr(segment_module.Segment, "read_into", read_into)
    limit = store.config.capacity_bytes + store.config.segment_bytes
    for step in range(30):
        _fill(store, kit, ("flood", step), 3)
        assert store.stats()["space"]["disk_bytes"] <= limit, f"step {step}"
    counters = kit.counters(store)
    assert counters["evicted_segments"] > 3 and counters["evicted_segments_inline"] == 0
    assert counters["reinserted_pages"] >= len(read_back)
    assert reads_on_writer == [], "a put read pages (an eviction ran on the writer's thread)"


def test_pages_read_since_written_survive_background_eviction(background_store, kit):
    store = background_store
    keys = _fill(store, kit, "hot", 2)
    values = {key: bytes(v) for key, v in zip(keys, store.get_batch(keys))}
    for step in range(40):
        _fill(store, kit, ("cold", step), 2)
        if step % 5 == 4:  # read again, as a popular prefix would be: a second chance each time
            assert all(v is not None for v in store.get_batch(keys))
    assert {key: bytes(v) for key, v in zip(keys, store.get_batch(keys))} == values
    assert kit.counters(store)["reinserted_pages"] >= len(keys)


def test_a_writer_that_outruns_the_reclaimer_drops_whole_segments_and_stays_in_budget(background_store, kit,
                                                                                      monkeypatch):
    store = background_store
    keys = _fill(store, kit, "read", 2)
    assert all(v is not None for v in store.get_batch(keys))
    store._reclaimer.stop()  # a reclaimer that never catches up
    monkeypatch.setattr(store, "_reclaimer", None)
    limit = store.config.capacity_bytes + store.config.segment_bytes
    for step in range(25):
        _fill(store, kit, ("burst", step), 3, wait=False)
        assert store.stats()["space"]["disk_bytes"] <= limit
    counters = kit.counters(store)
    assert counters["evicted_segments_inline"] > 0
    assert counters["reinserted_pages"] == 0  # nothing read or re-appended by a put


def test_a_writer_ahead_of_the_reclaimer_waits_for_room_rather_than_dropping(background_store, kit):
    store = background_store
    keys = _fill(store, kit, "read", 2)
    assert all(v is not None for v in store.get_batch(keys))
    for step in range(25):  # back to back: no pause lets the reclaimer catch up between puts
        _fill(store, kit, ("burst", step), 3, wait=False)
    counters = kit.counters(store)
    assert counters["evicted_segments"] > 5 and counters["evicted_segments_inline"] == 0
    assert counters["reinserted_pages"] >= len(keys)


def test_a_kept_page_is_never_absent_while_its_segment_is_freed(background_store, kit, monkeypatch):
    """The reclaimer re-appends a segment's kept pages before it deletes the segment's pointers, so
    a probe at any moment finds them (before, they were misses until the re-append)."""
    from raylsm.store import segment_reclaimer

    store = background_store
    keys = _fill(store, kit, "hot", 4)
    assert all(v is not None for v in store.get_batch(keys))  # every one earns its re-append
    missing_after_commits = []
    real_commit = segment_reclaimer._commit

    def commit_then_probe(store_, segment, segment_id, plan):
        kept = real_commit(store_, segment, segment_id, plan)
        missing_after_commits.append(len(keys) - sum(store_._present_flags(keys)))
        return kept

    monkeypatch.setattr(segment_reclaimer, "_commit", commit_then_probe)
    for step in range(12):
        _fill(store, kit, ("cold", step), 2)
    assert len(missing_after_commits) >= 4  # the hot pages' segments were freed
    assert missing_after_commits == [0] * len(missing_after_commits)
    assert kit.counters(store)["evicted_segments_inline"] == 0


@pytest.mark.parametrize("credits", [1, 3])
def test_a_page_read_often_banks_reads_for_later_evictions(store_factory, kit, credits):
    """StoreConfig.reinsertion_read_credits: read n times, a page outlives min(n, credits) evictions
    of its segment without another read; with 1 it gets one second chance."""
    store = store_factory(capacity_bytes=12 * MiB, background_reclaim=True, reinsertion_read_credits=credits)
    keys = _fill(store, kit, "hot", 1)
    for _ in range(3):
        assert all(v is not None for v in store.get_batch(keys))  # three reads each
    survived = 0
    for step in range(120):  # 60 MiB through a 12 MiB store, never reading the hot pages again
        _fill(store, kit, ("cold", step), 1)
        survived = max(survived, kit.counters(store)["reinserted_pages"] // len(keys))
    assert store.probe(keys) == 0  # in the end every one went, at its last turn
    assert survived == credits


@pytest.mark.parametrize("background", [True, False])
def test_a_segment_full_of_read_pages_keeps_every_one(store_factory, kit, background):
    """Kept pages are charged what re-appending them costs (their aligned bytes and one record
    header), so a segment whose pages were all read keeps all of them: a page dropped from a read
    chain cuts the chain there (before, 14 of these 15 were kept)."""
    from raylsm.store import format as fmt

    pages = 15
    size = (MiB - fmt.header_bytes_for(pages)) // pages  # 15 pages fill a 1 MiB segment exactly
    assert size % fmt.BLOCK_BYTES == 0
    store = store_factory(capacity_bytes=6 * MiB, background_reclaim=background)
    chain = kit.chain("read chain", pages)
    assert store.put_batch(chain, [kit.value(key, size) for key in chain]) == [True] * pages
    assert all(v is not None for v in store.get_batch(chain))
    evicted = kit.counters(store)["evicted_segments"]
    step = 0
    while kit.counters(store)["evicted_segments"] < evicted + 2:  # its segment and the next
        keys = [kit.key(("filler", step, i)) for i in range(4)]
        store.put_batch(keys, [kit.value(key, 64 * KiB) for key in keys])
        if background:
            assert store.wait_reclaimed()
        step += 1
    assert kit.counters(store)["reinserted_pages"] == pages
    assert store.probe(chain) == pages


@pytest.mark.parametrize("reopen", [False, True])
def test_a_reinserted_page_evicted_later_is_absent_and_can_be_stored_again(store_factory, kit, reopen):
    """A page re-appended by reinsertion and evicted afterwards must leave the resident set: before
    the fix a probe still answered it present, its get missed and its re-put was skipped as present."""
    store = store_factory(capacity_bytes=12 * MiB, background_reclaim=True)
    hot = _fill(store, kit, "hot", 2)
    if reopen:  # the clean close's snapshot loads the digests into the set's sorted base
        store.close()
        store = store_factory(capacity_bytes=12 * MiB, background_reclaim=True)
    else:
        store._resident.merge()
    assert all(v is not None for v in store.get_batch(hot))  # earn one reinsertion
    step = 0
    while kit.counters(store)["reinserted_pages"] < len(hot):
        _fill(store, kit, ("flood", step), 2)
        step += 1
        assert step < 60, "the hot pages were never reinserted"
    for more in range(40):  # not read again: they are evicted for good
        _fill(store, kit, ("more", more), 2)
    gone = [key for key, value in zip(hot, store.get_batch(hot)) if value is None]
    assert gone, "no reinserted page was evicted"
    assert [store.probe([key]) for key in gone] == [0] * len(gone)
    again = store.put_batch_outcomes(gone, [kit.value(("again", key), 64 * KiB) for key in gone])
    assert set(again) == {PutOutcome.STORED}


@pytest.mark.parametrize("capacity_segments, room", [(136, 3), (40, 2), (12, 1)])
def test_the_reclaimer_keeps_more_free_segments_where_the_budget_can_spare_them(store_factory, kit,
                                                                                capacity_segments, room):
    """A budget of 32 segments or more keeps two segments free (the reclaimer has a whole segment's
    writes to free the next before a roll waits), one of 128 or more three; a small one keeps one
    (it keeps its capacity)."""
    store = store_factory(capacity_bytes=capacity_segments * MiB, background_reclaim=True)
    for step in range(capacity_segments + 8):
        _fill(store, kit, ("fill", step), 1, per_batch=16)  # a segment's worth per step
    space = store.stats()["space"]
    segment = store.config.segment_bytes
    assert space["disk_bytes"] + room * segment <= space["capacity_bytes"]
    assert space["disk_bytes"] + (room + 1) * segment > space["capacity_bytes"], "it freed more than its room"
    assert kit.counters(store)["evicted_segments_inline"] == 0


def test_a_roll_counts_the_room_an_eviction_in_progress_will_free(background_store, kit, monkeypatch):
    """Between an eviction's plan and its commit the room it frees (its segment less the kept pages
    it re-appends) is already counted: a put that rolls then neither waits for the commit nor drops
    a segment whole, and disk use stays within the budget plus one segment."""
    from raylsm.store import segment_reclaimer

    store = background_store
    segment = store.config.segment_bytes
    limit = store.config.capacity_bytes + segment
    store.apply_tuning({"roll_wait_s": 0.3})
    real_commit = segment_reclaimer._commit
    during, inside = [], []

    def put_then_commit(store_, segment_, segment_id, plan):
        if len(during) < 3 and not inside:  # a put that rolls while this eviction is in progress
            inside.append(True)
            before = kit.counters(store_)
            big = kit.key(("during", len(during)))
            assert store_.put_batch([big], [kit.value(("during", len(during)), segment - 64 * KiB)]) == [True]
            after = kit.counters(store_)
            during.append((after["rolls_waited"] - before["rolls_waited"],
                           after["evicted_segments_inline"] - before["evicted_segments_inline"],
                           store_.stats()["space"]["disk_bytes"]))
            inside.clear()
        return real_commit(store_, segment_, segment_id, plan)

    monkeypatch.setattr(segment_reclaimer, "_commit", put_then_commit)
    for step in range(16):
        _fill(store, kit, ("cold", step), 2)
        assert store.stats()["space"]["disk_bytes"] <= limit, f"step {step}"
    assert len(during) == 3
    assert [(waited, inline) for waited, inline, _ in during] == [(0, 0)] * 3
    assert all(disk <= limit for _, _, disk in during), during
