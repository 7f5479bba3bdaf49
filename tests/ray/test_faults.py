"""Faults operators hit in production, through the TierClient on a real two-shard tier (issue 8):
one bad page never fails its neighbours and input errors are never "shard down"; a failed prefix
leaves no unreachable pages and a late put is undone; admission refusals do not cut a backup short;
clear reaches every shard or says it did not; a hung shard costs one timeout, not one per call; a
same-node read never outlives its deadline nor writes late into the caller's memory; exported
metrics count each event once."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import ray

from raylsm.store.outcomes import PutOutcome
from raylsm.store.page_key import namespace_id

SHARD_UNITS = 2
EXTENT_PAGES = 4
PLAIN_EXTENTS = {"extent_pages": EXTENT_PAGES, "shallow_depth_pages": 0, "shallow_extent_pages": 1}
KiB, MiB = 1024, 1024 * 1024


@pytest.fixture(scope="module")
def tier(local_ray, tier_factory):
    tier = tier_factory(shard={"store": {"capacity_bytes": 64 * MiB, "segment_bytes": 4 * MiB,
                                         "block_cache_bytes": MiB, "write_buffer_bytes": MiB}},
                        client=PLAIN_EXTENTS)
    tier.wait_for_shards(SHARD_UNITS)
    return tier


def _split_chain(tier, pages, name, length=8, namespace=None):
    """A chain whose first extent is on one shard and whose second is on the other (in `namespace`,
    default the tests' own)."""
    router = tier.router()
    for attempt in range(200):
        chain = pages.chain((name, attempt), length)
        shards = router.route_pages(namespace or pages.namespace, chain, [])
        if shards[0] != shards[-1]:
            return chain
    pytest.fail("no chain splits across the two shards")


def _keys(tier, pages, chain, namespace=None):
    return tier.router().page_keys(namespace or pages.namespace, chain, [])


def _fresh_namespace(name: str) -> bytes:
    """A namespace of its own for a test that clears it (a clear moves its keys to a new generation)."""
    return namespace_id(f"tests/faults/{name}")


def _probe(tier, shard, keys) -> int:
    return ray.get(tier.shard(shard).probe.remote(keys), timeout=30)


# ---- 3. one bad page never fails its neighbours -------------------------------------------------------


@pytest.mark.parametrize("big_at", [1, 3])
def test_a_page_too_large_fails_alone_and_is_counted_as_input_not_shard_down(tier, pages, big_at):
    """The pages before it are stored; under prefix semantics the ones behind it would be
    unreachable, so they are not kept (ShardStore alone stores them: tests/unit/test_bad_input.py)."""
    client = tier.client(same_node_fast_path=False)
    chain = pages.chain(("too large", big_at), EXTENT_PAGES)  # one extent: one shard
    values = [pages.value((i, big_at), 4 * KiB) for i in range(3)]
    values.insert(big_at, np.zeros(4 * MiB, np.uint8))
    expected = [slot < big_at for slot in range(4)]
    assert client.put(pages.namespace, chain, [], values) == expected
    counters = client.stats()["counters"]
    assert counters.get("put_too_large") == 1
    assert "shard_down" not in counters and "call_errors" not in counters and "bad_input" not in counters
    (shard, _), = tier.router().route_batch(pages.namespace, chain, [])
    assert tier.shard_counters(shard)["puts_too_large"] >= 1
    out = [np.zeros(v.nbytes, np.uint8) for v in values]
    assert client.get_into(pages.namespace, chain, [], out) == expected
    assert all(np.array_equal(o, v) for o, v, ok in zip(out, values, expected) if ok)


def test_a_malformed_page_key_fails_its_page_and_the_ones_behind_it_only(tier, pages):
    client = tier.client()
    chain = pages.chain("malformed", 6)
    values = pages.values(chain)
    bad = list(chain)
    bad[3] = chain[3][:31]  # SGLang handed a key that is not 64 hex digits
    prefix = [True, True, True, False, False, False]
    assert client.put(pages.namespace, bad, [], values) == prefix
    assert client.exists(pages.namespace, bad, []) == 3
    assert client.get_into(pages.namespace, chain, [], pages.buffers(6)) == prefix  # nothing kept behind it
    counters = client.stats()["counters"]
    assert counters["bad_keys"] == 2 and "shard_down" not in counters and "miss_error" not in counters


# ---- 4. partial failures leave no useless pages and no silent losses ------------------------------------


def test_a_put_whose_first_extent_times_out_stores_nothing_behind_it(tier, pages, tools):
    client = tier.client(call_timeout_s=1.0, put_timeout_s=1.0, same_node_fast_path=False)
    chain = _split_chain(tier, pages, "failed prefix")
    routed = tier.router().route_pages(pages.namespace, chain, [])
    first, second = routed[0], routed[-1]
    keys = _keys(tier, pages, chain)
    pid = tier.info(first)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        assert client.put(pages.namespace, chain, [], pages.values(chain)) == [False] * 8
        # The second shard stored its extent, which is unreachable behind the failed first one:
        # it is deleted again.
        tools.wait_until(lambda: _probe(tier, second, keys[EXTENT_PAGES:]) == 0, 30, "orphans deleted")
    finally:
        os.kill(pid, signal.SIGCONT)
    # The first shard's call lands late: past its deadline it is not written (or, if it was being
    # written, what it stored is deleted once it lands). The tier agrees with the client's False.
    time.sleep(1.5)
    tools.wait_until(lambda: _probe(tier, first, keys[:EXTENT_PAGES]) == 0, 30, "the late put undone")
    assert tier.shard_counters(first)["puts_expired"] + client.stats()["counters"].get("put_late_deleted", 0) >= 1
    # Once the shard answers again, the same put stores the whole chain.
    tools.wait_until(lambda: all(client.put(pages.namespace, chain, [], pages.values(chain))), 30, "a healed put")
    assert client.exists(pages.namespace, chain, []) == 8


@pytest.fixture
def second_touch(tier):
    shards = list(tier.ring()["shards"])
    ray.get([tier.shard(name).apply_tuning.remote({"admission_policy": "second_touch"}) for name in shards])
    yield
    ray.get([tier.shard(name).apply_tuning.remote({"admission_policy": "admit_all"}) for name in shards])


def test_an_admission_refusal_does_not_cut_the_backup_short(tier, pages, second_touch):
    client = tier.client()
    chain = pages.chain("second touch", 256)
    values = pages.values(chain)
    # SGLang backs a sequence up in 128-page batches and stops at the first batch that is not all True.
    for start in (0, 128):
        assert all(client.put(pages.namespace, chain[start:start + 128], chain[:start], values[start:start + 128]))
    assert client.exists(pages.namespace, chain[:128], []) == 0  # first offer: remembered, not stored
    assert client.stats()["counters"]["put_declined"] == 256
    for start in (0, 128):  # the second time the sequence is computed, every page is stored
        assert all(client.put(pages.namespace, chain[start:start + 128], chain[:start], values[start:start + 128]))
    assert client.exists(pages.namespace, chain[:128], []) == 128
    assert client.exists(pages.namespace, chain[128:], chain[:128]) == 128


# ---- 5. clear tells the truth and reaches everything ------------------------------------------------------


def test_clear_reaches_every_process_including_its_fast_path_pointers(tier, pages):
    ns = _fresh_namespace("every process")
    writer = tier.client()
    other = tier.client(same_node_fast_path=True)  # another SGLang process of the same namespace
    chain = _split_chain(tier, pages, "cleared", namespace=ns)
    values = pages.values(chain)
    assert all(writer.put(ns, chain, [], values))
    assert other.exists(ns, chain, []) == 8  # keeps pointers for the get that follows
    assert writer.clear_namespace(ns) is True
    out = pages.buffers(8)
    assert other.get_into(ns, chain, [], out) == [False] * 8
    assert all((o == 0xA5).all() for o in out)
    assert other.exists(ns, chain, []) == 0 and writer.exists(ns, chain, []) == 0
    old_keys = _keys(tier, pages, chain, ns)
    assert sum(_probe(tier, shard, old_keys) for shard in tier.ring()["shards"]) == 0
    # The namespace lives on in its next generation.
    assert all(other.put(ns, chain, [], values))
    assert writer.exists(ns, chain, []) == 8


def test_clear_with_a_stuck_shard_reports_failure_and_the_shard_catches_up(tier, pages, tools):
    ns = _fresh_namespace("stuck shard")
    writer = tier.client(call_timeout_s=1.0)
    chain = _split_chain(tier, pages, "cleared, stuck shard", namespace=ns)
    assert all(writer.put(ns, chain, [], pages.values(chain)))
    old_keys = _keys(tier, pages, chain, ns)
    stuck = tier.router().route_pages(ns, chain, [])[0]
    assert _probe(tier, stuck, old_keys[:EXTENT_PAGES]) == EXTENT_PAGES
    pid = tier.info(stuck)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        assert writer.clear_namespace(ns) is False  # the stuck shard cannot vouch
    finally:
        os.kill(pid, signal.SIGCONT)
    # The controller pushes the table once the shard answers: its old pages go, and every client,
    # with the new generation, misses them.
    tools.wait_until(lambda: _probe(tier, stuck, old_keys[:EXTENT_PAGES]) == 0, 30, "the stuck shard to catch up")
    assert writer.exists(ns, chain, []) == 0


def test_a_shard_down_during_clear_serves_none_of_the_old_pages_when_it_returns(tier, pages, tools, index_lock):
    ns = _fresh_namespace("shard down")
    writer = tier.client(call_timeout_s=2.0, same_node_fast_path=False)
    chain = _split_chain(tier, pages, "cleared, shard down", namespace=ns)
    values = pages.values(chain)
    assert all(writer.put(ns, chain, [], values))
    old_keys = _keys(tier, pages, chain, ns)
    down = tier.router().route_pages(ns, chain, [])[0]
    assert _probe(tier, down, old_keys[:EXTENT_PAGES]) == EXTENT_PAGES
    info = tier.info(down)
    lock = index_lock(info["path"], info["pid"])  # killed, and its restart held until released
    assert writer.clear_namespace(ns) is False
    lock.release()
    tools.wait_for_new_incarnation(tier, down, info["pid"])
    # Reads of the restarted shard are fenced until it has the table; then the old pages are gone,
    # and a stale writer of the old generation is refused.
    tools.wait_until(lambda: ray.get(tier.shard(down).namespace_status.remote())["synced"], 30, "the shard to sync")
    assert _probe(tier, down, old_keys[:EXTENT_PAGES]) == 0
    assert ray.get(tier.shard(down).put_batch.remote(old_keys[:1], values[:1]))[0] == PutOutcome.RETIRED


# ---- 6. liveness -----------------------------------------------------------------------------------------


def test_a_hung_shard_costs_one_timeout_then_fails_fast_until_it_answers(tier, pages, tools):
    """One read timeout fails its reads fast; its puts, whose deadline is longer, still try it, and
    one put timeout fails those fast too (raylsm.shard_health)."""
    client = tier.client(call_timeout_s=1.0, put_timeout_s=1.5, same_node_fast_path=False)
    chain = _split_chain(tier, pages, "hung shard")
    assert all(client.put(pages.namespace, chain, [], pages.values(chain)))
    routed = tier.router().route_pages(pages.namespace, chain, [])
    hung, healthy = routed[0], routed[-1]
    other = tier.chain_where(pages, "healthy only", EXTENT_PAGES, lambda shards: shards[0] == healthy)
    assert all(client.put(pages.namespace, other, [], pages.values(other)))
    pid = tier.info(hung)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        answers = [client.exists(pages.namespace, chain, []) for _ in range(20)]
        assert answers == [0] * 20
        counters = client.stats()["counters"]
        assert counters["timeouts"] == 1 and counters["stalled_calls"] == 19
        assert client.exists(pages.namespace, other, []) == EXTENT_PAGES  # batches not touching it
        assert hung in client.stats()["stalled_shards"]
        fresh = tier.chain_where(pages, "hung shard, new pages", EXTENT_PAGES, lambda shards: shards[0] == hung)
        for _ in range(3):
            assert client.put(pages.namespace, fresh, [], pages.values(fresh)) == [False] * EXTENT_PAGES
        counters = client.stats()["counters"]
        assert counters["timeouts"] == 2 and counters["stalled_calls"] == 21
        assert client.stats()["breaker"]["write_trips"] == 1
        assert all(client.put(pages.namespace, other, [], pages.values(other)))  # still stored elsewhere
    finally:
        os.kill(pid, signal.SIGCONT)
    tools.wait_until(lambda: client.exists(pages.namespace, chain, []) == 8, 30, "the shard to be used again")


def test_a_same_node_read_past_its_deadline_is_a_miss_and_never_lands_in_the_callers_buffer(tier, pages, tools,
                                                                                          monkeypatch):
    from raylsm.store import segment

    client = tier.client(call_timeout_s=1.0, same_node_fast_path=True)
    chain = pages.chain("hung local read", EXTENT_PAGES)
    values = pages.values(chain)
    assert all(client.put(pages.namespace, chain, [], values))
    real_read = segment.Segment.read_into
    finished = []

    def hung_read(self, offset, views, use_direct_io):  # this process's reads only, not the shards'
        time.sleep(3.0)
        real_read(self, offset, views, use_direct_io)
        finished.append(True)

    monkeypatch.setattr(segment.Segment, "read_into", hung_read)
    out = pages.buffers(EXTENT_PAGES)
    assert client.get_into(pages.namespace, chain, [], out) == [False] * EXTENT_PAGES
    assert client.stats()["counters"]["local_read_timeouts"] == 1
    # A late read fails the shard's reads fast, not its puts: they still store while the read hangs.
    assert client.exists(pages.namespace, chain, []) == 0 and client.stats()["counters"]["stalled_calls"] == 1
    more = pages.chain("stored while a local read hangs", EXTENT_PAGES)
    assert all(client.put(pages.namespace, more, [], pages.values(more)))
    tools.wait_until(lambda: finished, 30, "the hung read to finish")
    time.sleep(0.2)
    assert all((o == 0xA5).all() for o in out), "a read that passed its deadline wrote into the caller's buffer"
    monkeypatch.setattr(segment.Segment, "read_into", real_read)
    tools.wait_until(lambda: client.get_into(pages.namespace, chain, [], out) == [True] * EXTENT_PAGES, 30,
                     "fast-path reads again")
    assert all(np.array_equal(o, v) for o, v in zip(out, values))


# ---- 7. numbers operators can trust ------------------------------------------------------------------------


def test_out_of_order_snapshots_export_the_stores_totals(local_ray):
    from raylsm.actors.metrics import ShardMetrics

    class Recorder:
        def __init__(self):
            self.total = 0

        def inc(self, value, tags=None):
            self.total += value

    metrics = ShardMetrics("tests-metrics")
    metrics._pages["get"] = recorder = Recorder()
    space = {"capacity_bytes": 1, "disk_bytes": 1, "live_bytes": 1}
    for seq, hits in ((2, 20), (1, 10), (3, 30)):  # snapshots of three threads, synced out of order
        metrics.sync({"seq": seq, "counters": {"gets_hit": hits}, "space": space})
    assert recorder.total == 30


def test_workload_statistics_export_as_metrics(local_ray):
    """Ghost hits and hits by depth become counter increments up to the newest totals; the miss-ratio
    curve's points become gauges per multiple of the budget."""
    from raylsm.actors.metrics import ShardMetrics

    class Recorder:
        def __init__(self):
            self.values = {}

        def inc(self, value, tags=None):
            key = tuple(sorted((tags or {}).items()))
            self.values[key] = self.values.get(key, 0) + value

        def set(self, value, tags=None):
            self.values[tuple(sorted((tags or {}).items()))] = value

    metrics = ShardMetrics("tests-workload")
    metrics._ghost_hits, metrics._hits_by_depth, metrics._miss_ratio = Recorder(), Recorder(), Recorder()
    metrics._hits_by_age = Recorder()
    space = {"capacity_bytes": 1, "disk_bytes": 1, "live_bytes": 1}

    def workload(ghosts, shallow, ratio):
        return {"ghost_hits_est": ghosts, "hits_by_depth_pages": {"0-1": shallow, "1-2": 0}, "hits_by_age_s": {},
                "miss_ratio_by_capacity_multiple": {"1": ratio, "2": ratio / 2}}

    for seq, (ghosts, shallow, ratio) in enumerate(((64, 128, 0.5), (128, 192, 0.4)), start=1):
        metrics.sync({"seq": seq, "counters": {}, "space": space, "workload": workload(ghosts, shallow, ratio)})
    assert sum(metrics._ghost_hits.values.values()) == 128
    assert metrics._hits_by_depth.values[(("depth_pages", "0-1"), ("shard", "tests-workload"))] == 192
    gauges = metrics._miss_ratio.values
    assert gauges[(("capacity_multiple", "2"), ("shard", "tests-workload"))] == 0.2
