"""The tier on one Ray node: controller discovery and status, the TierClient data path (roundtrips,
prefix counts, parts, same-node fast path on and off), extent locality, corruption, a stopped shard,
and a shard that died for good. One real `ray.init` with three shard units for the whole module."""

from __future__ import annotations

import math
import os
import signal
import threading

import numpy as np
import pytest
import ray
from hypothesis import given, settings
from hypothesis import strategies as st

from raylsm.actors.placement import shard_name
from raylsm.status_report import format_status
from raylsm.router import page_anchors, routing_key

SHARD_UNITS = 3
EXTENT_PAGES = 4
# Plain extents of 4 pages (no shallow head) for most tests: a 24-page chain spans every shard.
PLAIN_EXTENTS = {"extent_pages": EXTENT_PAGES, "shallow_depth_pages": 0, "shallow_extent_pages": 1}


@pytest.fixture(scope="module")
def tier(local_ray, tier_factory):
    # open_retry_s is short so that the last test can make a restart fail for good quickly.
    tier = tier_factory(shard={"open_retry_s": 2.0}, client=PLAIN_EXTENTS)
    tier.wait_for_shards(SHARD_UNITS)
    return tier


@pytest.fixture(scope="module")
def client(tier):
    return tier.client()


def _routed(tier, pages, hashes, prefix):
    """The shard of every page, as the module's clients route it for the current ring."""
    return tier.router().route_pages(pages.namespace, hashes, prefix)


def _keys(tier, pages, hashes, prefix):
    return tier.router().page_keys(pages.namespace, hashes, prefix)


# ---- controller ------------------------------------------------------------------------------------


def test_controller_starts_one_shard_per_resource_unit_and_publishes_a_ring(tier, local_ray, data_dir):
    ring = tier.ring()
    expected = {shard_name(local_ray[:12], index) for index in range(SHARD_UNITS)}  # no disk label
    assert set(ring["shards"]) == expected
    assert ring["version"] >= 1
    assert all(entry["node_id"] == local_ray for entry in ring["shards"].values())

    status = tier.status()
    assert status["ring_version"] == ring["version"]
    assert {entry["shard"] for entry in status["shards"]} == expected
    for entry in status["shards"]:
        assert entry["state"] == "serving"
        assert entry["node_id"] == local_ray
        assert {"counters", "space"} <= set(entry["stats"])
        assert entry["stats"]["space"]["capacity_bytes"] == tier.config.shard.store.capacity_bytes
        # The node's shards share one disk: they pool its budget (raylsm/store/budget_pool.py).
        pool = entry["stats"]["pool"]
        assert pool["members"] == SHARD_UNITS
        assert pool["capacity_bytes"] == SHARD_UNITS * tier.config.shard.store.capacity_bytes
        assert pool["path"] == os.path.join(data_dir, f".shard-{local_ray[:12]}.pool")
        info = tier.info(entry["shard"])
        assert info["path"] == os.path.join(data_dir, entry["shard"])
        assert os.path.isdir(os.path.join(info["path"], "segments"))
    assert f"disk budget pool {pool['path']}: {SHARD_UNITS} shards" in format_status(status)
    assert status["errors"] == {}


# ---- data path -------------------------------------------------------------------------------------


def _put_in_chunks(client, pages, hashes, values, chunk):
    """Put a chain the way SGLang backs it up: chunks with the chain so far as prefix."""
    stored = []
    for start in range(0, len(hashes), chunk):
        stored += client.put(pages.namespace, hashes[start:start + chunk], hashes[:start], values[start:start + chunk])
    return stored


def test_roundtrip_of_chains_across_shards_with_fast_path_on_and_off(tier, client, pages):
    spans = lambda shards: len(set(shards)) == SHARD_UNITS  # noqa: E731
    single = tier.chain_where(pages, "single-buffer chain", 24, spans)
    split = tier.chain_where(pages, "split K/V chain", 24, spans)
    single_values = pages.values(single)
    split_values = pages.values(split)
    assert all(_put_in_chunks(client, pages, single, single_values, chunk=8))
    halves = [[value[: value.nbytes // 2], value[value.nbytes // 2:]] for value in split_values]
    assert all(_put_in_chunks(client, pages, split, halves, chunk=5))

    assert client.exists(pages.namespace, single, []) == 24
    assert client.exists(pages.namespace, split[10:], split[:10]) == 14

    fast = tier.client(same_node_fast_path=True)
    slow = tier.client(same_node_fast_path=False)
    chunked = tier.client(same_node_fast_path=False, object_chunk_bytes=64 * 1024)  # 4 pages per call
    for reader in (fast, slow, chunked):
        # One buffer per page, read in one batch.
        out = pages.buffers(24)
        assert reader.get_into(pages.namespace, single, [], out) == [True] * 24
        assert all(np.array_equal(o, v) for o, v in zip(out, single_values))
        # Pages stored as [K, V] parts read into single buffers, and single pages into parts.
        out = pages.buffers(24)
        assert reader.get_into(pages.namespace, split, [], out) == [True] * 24
        assert all(np.array_equal(o, v) for o, v in zip(out, split_values))
        parts = [[np.zeros(pages.value(0).nbytes // 2, np.uint8) for _ in range(2)] for _ in range(12)]
        assert reader.get_into(pages.namespace, single[12:], single[:12], parts) == [True] * 12
        for (k, v), value in zip(parts, single_values[12:]):
            assert np.array_equal(np.concatenate([k, v]), value)
    assert fast.stats()["counters"].get("local_read_pages", 0) > 0
    assert slow.stats()["counters"].get("local_read_pages", 0) == 0


def test_status_shows_each_shards_workload_statistics(tier, client, pages):
    """Asks reach the shards' workload statistics (raylsm/store/workload_stats.py) and `raylsm
    status` prints them (the default tracks 1 page in 64: these pages' keys decide which count)."""
    def references():
        return {entry["shard"]: (entry["stats"].get("workload") or {}).get("references", 0)
                for entry in tier.status()["shards"]}

    before = references()
    chain = pages.chain("asked chain", 32)
    assert all(client.put(pages.namespace, chain, [], pages.values(chain)))  # 32 written, absent before
    assert client.exists(pages.namespace, chain, []) == 32  # 32 asked, present
    after = references()
    assert sum(after.values()) - sum(before.values()) == 64
    table = format_status(tier.status())
    assert sum(f"{name} workload: {count} page references" in table for name, count in after.items() if count) >= 1


def test_exists_counts_leading_present_pages_and_get_reports_each_page(tier, client, pages):
    chain = pages.chain("chain with a hole", 20)
    values = pages.values(chain)
    assert all(client.put(pages.namespace, chain[:10], [], values[:10]))
    assert all(client.put(pages.namespace, chain[12:], chain[:12], values[12:]))

    assert client.exists(pages.namespace, chain, []) == 10
    assert client.exists(pages.namespace, chain[12:], chain[:12]) == 8
    assert client.exists(pages.namespace, chain[10:], chain[:10]) == 0

    for reader in (client, tier.client(same_node_fast_path=False),
                   tier.client(same_node_fast_path=False, object_chunk_bytes=64 * 1024)):
        out = pages.buffers(20)
        assert reader.get_into(pages.namespace, chain, [], out) == [True] * 10 + [False] * 2 + [True] * 8
        for index in list(range(10)) + list(range(12, 20)):
            assert np.array_equal(out[index], values[index])


def test_empty_batches_and_bad_input_are_misses_not_exceptions(tier, client, pages):
    assert client.exists(pages.namespace, [], []) == 0
    assert client.get_into(pages.namespace, [], [], []) == []
    assert client.put(pages.namespace, [], [], []) == []

    short_hash = [b"\x01" * 31]
    assert client.exists(pages.namespace, short_hash, []) == 0
    assert client.get_into(pages.namespace, short_hash, [], pages.buffers(1)) == [False]
    assert client.put(pages.namespace, short_hash, [], [pages.value(1)]) == [False]
    # Fewer values than pages.
    chain = pages.chain("fewer values", 3)
    assert client.put(pages.namespace, chain, [], [pages.value(1)]) == [False] * 3


def test_output_buffer_of_the_wrong_size_is_a_miss(tier, client, pages):
    chain = pages.chain("wrong-size buffers", 4)
    values = pages.values(chain)
    assert all(client.put(pages.namespace, chain, [], values))
    for reader in (client, tier.client(same_node_fast_path=False),
                   tier.client(same_node_fast_path=False, object_chunk_bytes=64 * 1024)):
        out = pages.buffers(4)
        out[1] = np.full(values[1].nbytes // 2, 0xA5, np.uint8)
        assert reader.get_into(pages.namespace, chain, [], out) == [True, False, True, True]
        assert (out[1] == 0xA5).all(), "a page that does not fit must not be written partially"
        assert np.array_equal(out[3], values[3])


def test_one_client_used_from_several_threads(tier, client, pages):
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            chain = pages.chain(("thread", name), 16)
            values = pages.values(chain)
            for start in range(0, 16, 4):
                assert all(client.put(pages.namespace, chain[start:start + 4], chain[:start], values[start:start + 4]))
                assert client.exists(pages.namespace, chain, []) == start + 4
                out = pages.buffers(start + 4)
                assert client.get_into(pages.namespace, chain[:start + 4], [], out) == [True] * (start + 4)
                assert all(np.array_equal(o, v) for o, v in zip(out, values))
        except BaseException as error:  # noqa: BLE001 (reported by the main thread)
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(name,)) for name in "abc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors


# ---- locality --------------------------------------------------------------------------------------


@pytest.mark.parametrize("extents", ["plain 32-page extents", "default extents"])
@pytest.mark.parametrize("prefix_pages", [0, 64])
def test_a_128_page_batch_touches_about_pages_over_E_shards(tier, pages, tools, prefix_pages, extents):
    from raylsm.config import ClientConfig

    defaults = ClientConfig()
    overrides = ({"extent_pages": 32, "shallow_depth_pages": 0, "shallow_extent_pages": 1}
                 if extents.startswith("plain") else
                 {name: getattr(defaults, name) for name in PLAIN_EXTENTS})
    client = tier.client(**overrides)
    extent_rule = tools.extent_config(tier.client_config(**overrides).client)
    chain = pages.chain(("locality", prefix_pages, extents), prefix_pages + 128)
    prefix, batch = chain[:prefix_pages], chain[prefix_pages:]
    router = tier.router(**overrides)
    groups = router.route_batch(pages.namespace, batch, prefix)
    anchors = {extent_rule.anchor_depth(depth) for depth in range(prefix_pages, prefix_pages + 128)}
    # About ceil(pages / E) extents (one more where the batch crosses the shallow head's end).
    assert len(anchors) <= math.ceil(128 / extent_rule.extent_pages) + (1 if extent_rule.shallow_depth_pages else 0)
    assert len(groups) <= len(anchors)

    values = pages.values(batch)
    assert all(client.put(pages.namespace, batch, prefix, values))
    # Every page sits on the shard the router names, under the key the router encodes.
    keys = router.page_keys(pages.namespace, batch, prefix)
    for shard, slots in groups:
        assert ray.get(tier.shard(shard).probe.remote([keys[s] for s in slots])) == len(slots)

    # One probe call per touched shard, and none on the others.
    before = {name: tier.shard_counters(name)["probe_calls"] for name in tier.ring()["shards"]}
    assert client.exists(pages.namespace, batch, prefix) == 128
    after = {name: tier.shard_counters(name)["probe_calls"] for name in before}
    touched = {name for name in before if after[name] > before[name]}
    assert touched == {shard for shard, _ in groups}
    assert all(after[name] - before[name] == 1 for name in touched)

    # Without prefix keys every page anchors its own extent: the batch spreads over every shard.
    assert len(router.route_batch(pages.namespace, batch, None)) == SHARD_UNITS


# ---- faults ----------------------------------------------------------------------------------------


def test_corrupt_segment_bytes_are_a_miss_never_wrong_bytes(tier, client, pages, tools):
    chain = pages.chain("to corrupt", EXTENT_PAGES)  # one extent: one shard
    values = pages.values(chain)
    assert all(client.put(pages.namespace, chain, [], values))
    (shard, _), = tier.router().route_batch(pages.namespace, chain, [])
    keys = _keys(tier, pages, chain, [])
    segments_dir, _, pointers = ray.get(tier.shard(shard).locate_batch.remote(keys))
    tools.flip_segment_byte(segments_dir, pointers[2], at=pointers[2].length // 2)
    expected = [True, True, False, True]

    # Same-node fast path: the client reads the segment itself and verifies the checksum.
    fast = tier.client(same_node_fast_path=True)
    out = pages.buffers(len(chain))
    assert fast.get_into(pages.namespace, chain, [], out) == expected
    assert (out[2] == 0).all() or (out[2] == 0xA5).all(), "a corrupt page must not leave its bytes behind"
    assert np.array_equal(out[3], values[3])

    # The fast path told the shard, which read the page again and dropped it: absent for everyone,
    # counted once as corrupt, and a client going through the shard actor misses it too.
    slow = tier.client(same_node_fast_path=False)
    assert slow.exists(pages.namespace, chain, []) == 2
    assert tier.shard_counters(shard)["gets_miss_corrupt"] == 1
    out = pages.buffers(len(chain))
    assert slow.get_into(pages.namespace, chain, [], out) == expected
    assert (out[2] == 0xA5).all()
    assert np.array_equal(out[1], values[1])
    # Healed by a re-put of the right bytes.
    assert all(slow.put(pages.namespace, chain, [], values))
    assert fast.get_into(pages.namespace, chain, [], out) == [True] * 4 and np.array_equal(out[2], values[2])


def test_corrupt_page_on_the_fast_path_is_counted(tier, pages, tools):
    client = tier.client(same_node_fast_path=True)
    chain = pages.chain("to corrupt, counted", EXTENT_PAGES)
    assert all(client.put(pages.namespace, chain, [], pages.values(chain)))
    (shard, _), = tier.router().route_batch(pages.namespace, chain, [])
    keys = _keys(tier, pages, chain, [])
    segments_dir, _, pointers = ray.get(tier.shard(shard).locate_batch.remote(keys))
    tools.flip_segment_byte(segments_dir, pointers[0], at=0)
    assert client.get_into(pages.namespace, chain, [], pages.buffers(len(chain))) == [False, True, True, True]
    counters = client.stats()["counters"]
    assert any("corrupt" in name and count >= 1 for name, count in counters.items()), counters


def _shards_located(tier) -> int:
    return sum(ray.get(tier.shard(name).stats.remote())["counters"].get("gets_located", 0)
               for name in tier.router().ring.shards)


def test_fast_path_reads_ride_on_the_next_put_to_their_shard(tier, pages, monkeypatch):
    """A put to a shard carries the reads not yet reported to it, counted before the put can roll
    a segment (whose eviction may free the very pages just read)."""
    from raylsm import client_ring as client_module

    monkeypatch.setattr(client_module, "READ_REPORT_S", 3600.0)  # no flush by the reporter
    client = tier.client(same_node_fast_path=True, ring_refresh_s=3600)
    chain = pages.chain("read, then put again", 3 * EXTENT_PAGES)
    values = pages.values(chain)
    assert all(client.put(pages.namespace, chain, [], values))
    tier.report_reads()
    located_before = _shards_located(tier)
    assert client.exists(pages.namespace, chain, []) == len(chain)
    assert client.get_into(pages.namespace, chain, [], pages.buffers(len(chain))) == [True] * len(chain)
    assert _shards_located(tier) == located_before  # not reported yet
    assert all(client.put(pages.namespace, chain, [], values))  # present: each shard gets a put call
    assert _shards_located(tier) - located_before == len(chain)


def test_a_get_after_exists_reads_the_located_pages_without_a_shard_call(tier, pages, tools):
    # No ring refresh in the test's time: only the client's read reporter can tell the shards.
    client = tier.client(same_node_fast_path=True, ring_refresh_s=3600)
    chain = pages.chain("probed, then read", 3 * EXTENT_PAGES)
    values = pages.values(chain)
    assert all(client.put(pages.namespace, chain, [], values))
    tier.report_reads()  # so that only this test's reads arrive from now on
    located_before = _shards_located(tier)

    assert client.exists(pages.namespace, chain, []) == len(chain)
    out = pages.buffers(len(chain))
    assert client.get_into(pages.namespace, chain, [], out) == [True] * len(chain)
    assert all(np.array_equal(o, v) for o, v in zip(out, values))
    assert client.stats()["counters"]["local_reads_without_call"] == len(chain)
    # The shards learn of those reads without another call of this client (the reporter flushes
    # them within READ_REPORT_S), so the pages earn reinsertion before their segment is evicted.
    tools.wait_until(lambda: _shards_located(tier) - located_before == len(chain), 30, "note_reads to arrive")

    # The pointers were used up: the next get asks the shards again, with the same result.
    out = pages.buffers(len(chain))
    assert client.get_into(pages.namespace, chain, [], out) == [True] * len(chain)
    assert all(np.array_equal(o, v) for o, v in zip(out, values))
    assert client.stats()["counters"]["local_reads_without_call"] == len(chain)

    # Bytes corrupted between exists and get: a miss, never wrong bytes.
    assert client.exists(pages.namespace, chain, []) == len(chain)
    shard = _routed(tier, pages, chain, [])[0]
    segments_dir, _, pointers = ray.get(tier.shard(shard).locate_batch.remote(_keys(tier, pages, chain[:1], [])))
    tools.flip_segment_byte(segments_dir, pointers[0], at=0)
    out = pages.buffers(len(chain))
    assert client.get_into(pages.namespace, chain, [], out) == [False] + [True] * (len(chain) - 1)
    assert not out[0].any() or (out[0] == 0xA5).all(), "a corrupt page leaves no bytes in the caller's buffer"
    assert client.stats()["counters"]["local_reads_without_call"] == 2 * len(chain)


def test_located_pointers_off_and_buffered_local_reads(tier, pages):
    client = tier.client(same_node_fast_path=True, located_pointer_ttl_s=0, local_read_direct_io=False)
    chain = pages.chain("probed, not cached", EXTENT_PAGES)
    values = pages.values(chain)
    assert all(client.put(pages.namespace, chain, [], values))
    assert client.exists(pages.namespace, chain, []) == EXTENT_PAGES
    out = pages.buffers(EXTENT_PAGES)
    assert client.get_into(pages.namespace, chain, [], out) == [True] * EXTENT_PAGES
    assert all(np.array_equal(o, v) for o, v in zip(out, values))
    counters = client.stats()["counters"]
    assert counters.get("local_reads_without_call", 0) == 0 and counters["local_read_pages"] == EXTENT_PAGES


def test_a_stopped_shard_times_out_as_misses_and_serves_again(tier, pages, tools):
    client = tier.client(call_timeout_s=1.0, put_timeout_s=1.5)
    chain = tier.chain_where(pages, "stopped shard", 24, lambda shards: len(set(shards)) >= 2)
    values = pages.values(chain)
    assert all(client.put(pages.namespace, chain, [], values))
    routed = _routed(tier, pages, chain, [])
    victim = routed[0]
    on_victim = [shard == victim for shard in routed]
    pid = tier.info(victim)["pid"]

    os.kill(pid, signal.SIGSTOP)  # the shard neither dies nor answers: a busy or hung shard
    try:
        out = pages.buffers(24)
        assert client.get_into(pages.namespace, chain, [], out) == [not hit for hit in on_victim]
        for index, hit in enumerate(on_victim):
            if not hit:
                assert np.array_equal(out[index], values[index])
        assert client.exists(pages.namespace, chain, []) == 0  # page 0 is on the stopped shard
        fresh = pages.chain("stopped shard, new pages", 24)
        fresh_routed = _routed(tier, pages, fresh, [])
        # The victim's put times out (a late read fails only reads fast); under prefix semantics
        # only the pages before its first page count as stored, and nothing behind it stays stored.
        first = fresh_routed.index(victim) if victim in fresh_routed else 24
        assert client.put(pages.namespace, fresh, [], pages.values(fresh)) == [i < first for i in range(24)]
        assert client.stats()["counters"].get("timeouts", 0) >= 1
    finally:
        os.kill(pid, signal.SIGCONT)

    tools.wait_until(lambda: client.get_into(pages.namespace, chain, [], pages.buffers(24)) == [True] * 24,
                     30, "the resumed shard to serve again")
    assert client.exists(pages.namespace, chain, []) == 24


@ray.remote(num_cpus=0)
class FixedRing:
    """A stand-in controller that publishes a fixed ring (only `ring()` is what clients call)."""

    def __init__(self, ring: dict):
        self._ring = ring

    def ring(self, splits_version: int = -1) -> dict:
        return self._ring


def test_a_ring_member_without_an_actor_does_not_fail_the_other_shards(tier, pages, tools):
    ring = tier.ring()
    gone = "shard-000000000000-9"  # e.g. a shard that died for good; its name is free again
    stale = {"version": ring["version"] + 100, "namespace": ring["namespace"],
             "shards": {**ring["shards"], gone: {"node_id": "0" * 56}}}
    client = tier.client(controller=FixedRing.remote(stale), same_node_fast_path=False)
    extents = tools.extent_config(tier.config.client)

    def routed(chain):
        return [client._ring.shard_for(routing_key(pages.namespace, anchor))
                for _, anchor in page_anchors(chain, [], extents)]
    for attempt in range(200):
        chain = pages.chain(("ring with a dead member", attempt), 32)
        alive = [shard != gone for shard in routed(chain)]
        if any(alive) and not all(alive):
            break
    values = pages.values(chain)

    # The dead member's pages fail; pages behind the first of them are unreachable under prefix
    # semantics, so they are not kept (put reports False, a get misses them).
    prefix = [i < alive.index(False) for i in range(32)]
    assert client.put(pages.namespace, chain, [], values) == prefix
    out = pages.buffers(32)
    assert client.get_into(pages.namespace, chain, [], out) == prefix


def test_a_shard_that_died_for_good_is_recreated_or_dropped(tier, client, pages, tools, index_lock):
    # Last in this module: with the bug, one shard stays dead.
    chain = pages.chain("shard dies for good", 24)
    values = pages.values(chain)
    assert all(client.put(pages.namespace, chain, [], values))
    victim = _routed(tier, pages, chain, [])[0]
    info = tier.info(victim)
    lock = index_lock(info["path"], info["pid"])

    def died_for_good():
        try:
            tier.info(victim, timeout_s=5)
        except (ray.exceptions.ActorDiedError, ValueError):  # ValueError: the dead actor's name is free
            return True
        except (ray.exceptions.RayError, TimeoutError):
            return False
        return False
    tools.wait_until(died_for_good, 60, "the restart to give up on the locked directory", interval_s=0.5)
    lock.release()

    def recovered():
        tier.reconcile()
        states = {entry["shard"]: entry["state"] for entry in tier.status()["shards"]}
        return victim not in tier.ring()["shards"] or states.get(victim) == "serving"
    tools.wait_until(recovered, 20, f"the controller to re-create or drop {victim}", interval_s=1.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 5000), max_size=40), st.integers(1, 12000))
def test_object_path_chunks_cover_every_slot_once_within_the_byte_limit(sizes, limit):
    from raylsm.client import _chunked

    slots = list(range(0, 2 * len(sizes), 2))  # a shard's slots need not be contiguous
    page_bytes = {slot: size for slot, size in zip(slots, sizes)}
    chunks = _chunked(slots, page_bytes, limit)
    assert [slot for _, chunk in chunks for slot in chunk] == slots
    for start, chunk in chunks:
        assert chunk == slots[start:start + len(chunk)]
        assert len(chunk) == 1 or sum(page_bytes[s] for s in chunk) <= limit
    for (_, chunk), (_, following) in zip(chunks, chunks[1:]):
        assert sum(page_bytes[s] for s in chunk) + page_bytes[following[0]] > limit  # chunks are full
