"""The tier on several simulated Ray nodes (`ray.cluster_utils.Cluster`, one machine): one shard per
worker node, kill -9 of a shard process during traffic, corrupt bytes read through a remote shard,
a node that dies, a node that joins, and a node that restarts with its labelled disk. The driver sits on the head node (no shard resource), so
every read goes through a shard actor, never the same-node fast path. One cluster for the module;
the tests run in file order and the last ones change its membership."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import ray

from raylsm.actors.placement import shard_name

CLUSTER_WORKERS = 3
PLAIN_EXTENTS = {"extent_pages": 4, "shallow_depth_pages": 0, "shallow_extent_pages": 1}


@pytest.fixture(scope="module")
def tier(ray_cluster, tier_factory):
    tier = tier_factory(client=PLAIN_EXTENTS, controller={"ping_timeout_s": 2.0})
    tier.wait_for_shards(CLUSTER_WORKERS)
    return tier


@pytest.fixture(scope="module")
def client(tier):
    return tier.client()


@pytest.fixture(scope="module")
def first_ring_client(tier):
    """A client that saw the first ring and never refreshes by itself."""
    return tier.client(ring_refresh_s=3600.0)


@pytest.fixture(scope="module")
def stored(tier, client, pages):
    """A 48-page chain stored once for the module (12 extents, on every shard)."""
    chain = tier.chain_where(pages, "cluster chain", 48, lambda shards: len(set(shards)) == CLUSTER_WORKERS)
    values = pages.values(chain)
    assert all(client.put(pages.namespace, chain, [], values))
    return chain, values


def _routed(tier, pages, hashes):
    return tier.router().route_pages(pages.namespace, hashes, [])


def _read(client, pages, chain):
    out = pages.buffers(len(chain))
    return client.get_into(pages.namespace, chain, [], out), out


def test_one_shard_per_worker_node_pinned_to_its_node(tier, ray_cluster, data_dir, first_ring_client):
    ring = tier.ring()
    assert first_ring_client.ring_version == ring["version"]
    workers = {node.node_id for node in ray_cluster.workers}
    assert set(ring["shards"]) == {shard_name(node_id[:12], 0) for node_id in workers}  # no disk labels
    head = ray_cluster.cluster.head_node.node_id
    for name, entry in ring["shards"].items():
        info = tier.info(name)
        assert info["node_id"] == entry["node_id"] != head
        assert info["path"] == os.path.join(data_dir, name)
    assert len({tier.info(name)["path"] for name in ring["shards"]}) == CLUSTER_WORKERS
    status = tier.status()
    assert [entry["state"] for entry in status["shards"]] == ["serving"] * CLUSTER_WORKERS


def test_roundtrip_through_remote_shards(tier, client, pages, stored):
    chain, values = stored
    assert len(set(_routed(tier, pages, chain))) == CLUSTER_WORKERS
    assert client.exists(pages.namespace, chain, []) == 48
    hits, out = _read(client, pages, chain)
    assert hits == [True] * 48
    assert all(np.array_equal(o, v) for o, v in zip(out, values))
    assert client.stats()["counters"].get("local_read_pages", 0) == 0


def test_kill_9_during_traffic_then_the_restarted_shard_serves_its_data(tier, client, pages, stored, tools,
                                                                         index_lock):
    chain, values = stored
    routed = _routed(tier, pages, chain)
    victim = routed[0]
    on_victim = [shard == victim for shard in routed]

    # A stream of puts and gets on its own client, like SGLang's backup and prefetch threads.
    stream_client = tier.client(call_timeout_s=2.0)
    stop = threading.Event()
    errors: list[BaseException] = []
    written: list[tuple[list[bytes], list[np.ndarray], list[bool]]] = []
    reads: list[list[bool]] = []

    def stream() -> None:
        round_number = 0
        while not stop.is_set():
            try:
                new = pages.chain(("stream", round_number), 4)
                new_values = pages.values(new)
                written.append((new, new_values, stream_client.put(pages.namespace, new, [], new_values)))
                hits, out = _read(stream_client, pages, chain)
                reads.append(hits)
                for hit, got, value in zip(hits, out, values):
                    assert not hit or np.array_equal(got, value), "a hit must carry the stored bytes"
                stream_client.exists(pages.namespace, chain, [])
            except BaseException as error:  # noqa: BLE001 (reported by the test thread)
                errors.append(error)
                return
            round_number += 1

    worker = threading.Thread(target=stream, daemon=True)
    worker.start()
    try:
        tools.wait_until(lambda: len(reads) >= 2, 60, "the stream to run")
        info = tier.info(victim)
        lock = index_lock(info["path"], info["pid"])  # kill -9, then keep the restart from opening

        # While it restarts, its pages are misses and every other shard keeps serving.
        probe_client = tier.client(call_timeout_s=2.0)
        hits, out = _read(probe_client, pages, chain)
        assert hits == [not mine for mine in on_victim]
        assert all(np.array_equal(out[i], values[i]) for i, hit in enumerate(hits) if hit)
        assert probe_client.exists(pages.namespace, chain, []) == 0  # page 0 is on the victim
        reads_during = len(reads)
        tools.wait_until(lambda: len(reads) > reads_during, 60, "the stream to go on during the restart")

        # The controller reports it unreachable and keeps it in the ring (its data comes back).
        def state_of_victim():
            states = {entry["shard"]: entry["state"] for entry in tier.status()["shards"]}
            return states.get(victim) == "unreachable"
        tools.wait_until(state_of_victim, 60, "the controller to see the shard unreachable", interval_s=0.5)
        assert victim in tier.ring()["shards"]

        lock.release()
        restarted = tools.wait_for_new_incarnation(tier, victim, info["pid"])
        assert restarted["restarted"] is True
        assert restarted["path"] == info["path"]
    finally:
        stop.set()
        worker.join(timeout=60)
    assert not errors, errors
    assert any(not all(hits) for hits in reads), "the stream should have seen the outage"

    # Everything stored before the crash is served again, byte for byte.
    tools.wait_until(lambda: _read(client, pages, chain)[0] == [True] * 48, 30, "the pre-crash pages")
    hits, out = _read(client, pages, chain)
    assert all(np.array_equal(o, v) for o, v in zip(out, values))
    assert client.exists(pages.namespace, chain, []) == 48
    tools.wait_until(lambda: {e["shard"]: e["state"] for e in tier.status()["shards"]}.get(victim) == "serving",
                     30, "the controller to see the shard serving again")
    # And so is every stream page whose put said True.
    for new, new_values, ok in written:
        hits, out = _read(client, pages, new)
        for stored_ok, hit, got, value in zip(ok, hits, out, new_values):
            if stored_ok:
                assert hit and np.array_equal(got, value)


def test_corrupt_bytes_on_a_remote_shard_are_a_counted_miss(tier, client, pages, tools):
    chain = pages.chain("remote corruption", 4)  # one extent: one shard
    values = pages.values(chain)
    assert all(client.put(pages.namespace, chain, [], values))
    (shard, _), = tier.router().route_batch(pages.namespace, chain, [])
    keys = tier.router().page_keys(pages.namespace, chain, [])
    segments_dir, _, pointers = ray.get(tier.shard(shard).locate_batch.remote(keys))
    tools.flip_segment_byte(segments_dir, pointers[1], at=pointers[1].length - 1)

    before = tier.shard_counters(shard)["gets_miss_corrupt"]
    hits, out = _read(client, pages, chain)
    assert hits == [True, False, True, True]
    assert (out[1] == 0xA5).all(), "the caller's buffer of a corrupt page is left alone"
    assert np.array_equal(out[0], values[0]) and np.array_equal(out[2], values[2])
    assert tier.shard_counters(shard)["gets_miss_corrupt"] == before + 1
    # The failed read healed the page: absent for every client, and a re-put stores it again.
    assert client.exists(pages.namespace, chain, []) == 1
    assert all(client.put(pages.namespace, chain, [], values))
    hits, out = _read(client, pages, chain)
    assert hits == [True] * 4 and np.array_equal(out[1], values[1])


def test_a_removed_node_drops_its_shard_and_the_others_keep_serving(tier, client, pages, stored, tools,
                                                                    ray_cluster):
    chain, values = stored
    routed = _routed(tier, pages, chain)
    ring = tier.ring()
    # The controller (num_cpus=0, not pinned) may run on any node; remove one it does not run on.
    controller_node = tier.controller_node_id()
    first = next(i for i, shard in enumerate(routed) if ring["shards"][shard]["node_id"] != controller_node)
    victim = routed[first]
    on_victim = [shard == victim for shard in routed]
    version_before = ring["version"]
    reader = tier.client(call_timeout_s=2.0)
    assert _read(reader, pages, chain)[0] == [True] * 48

    ray_cluster.remove_worker(ray_cluster.worker_of(tier.ring()["shards"][victim]["node_id"]))

    # Before Ray declares the node dead (~15-17 s) its actor may still answer or not, and the first
    # calls after the loss may time out while Ray sorts itself out: nothing raises, a hit carries the
    # stored bytes, and the other shards serve again within seconds.
    def others_serve():
        hits, out = _read(reader, pages, chain)
        assert all(np.array_equal(out[i], values[i]) for i, hit in enumerate(hits) if hit)
        return all(hit for hit, mine in zip(hits, on_victim) if not mine)
    tools.wait_until(others_serve, 30, "the other shards to serve", interval_s=0.5)
    assert reader.exists(pages.namespace, chain, []) in (first, 48)
    fresh = pages.chain("written while the node is dying", 24)
    reader.put(pages.namespace, fresh, [], pages.values(fresh))  # must not raise

    def dropped():
        ring = tier.reconcile_or_none()
        return ring if ring is not None and victim not in ring["shards"] else None
    ring = tools.wait_until(dropped, 90, f"the controller to drop {victim}", interval_s=1.0)
    assert ring["version"] > version_before
    assert len(ring["shards"]) == CLUSTER_WORKERS - 1
    status = tier.status()
    assert victim not in {entry["shard"] for entry in status["shards"]}
    assert all(entry["state"] == "serving" for entry in status["shards"])

    tools.wait_until(lambda: reader.ring_version >= ring["version"], 30, "the client to see the new ring")
    # Consistent hashing: only the victim's pages moved; the survivors' pages are still hits.
    hits, out = _read(reader, pages, chain)
    assert hits == [not mine for mine in on_victim]
    assert all(np.array_equal(out[i], values[i]) for i, hit in enumerate(hits) if hit)
    assert all(new != victim for new in _routed(tier, pages, chain))
    # Its pages can be stored again, on the surviving shards.
    lost = [i for i, mine in enumerate(on_victim) if mine]
    assert all(reader.put(pages.namespace, [chain[i]], chain[:i], [values[i]])[0] for i in lost)
    hits, out = _read(reader, pages, chain)
    assert hits == [True] * 48
    assert all(np.array_equal(o, v) for o, v in zip(out, values))


def test_a_joining_node_gets_a_shard_and_a_new_ring(tier, client, pages, tools, ray_cluster, data_dir):
    client.refresh_ring()  # the ring without the node the previous test removed (else a put may go there)
    chain = pages.chain("before the join", 48)
    values = pages.values(chain)
    assert all(client.put(pages.namespace, chain, [], values))
    before = tier.ring()
    owners_before = _routed(tier, pages, chain)

    node = ray_cluster.add_worker()
    new_shard = shard_name(node.node_id[:12], 0)

    def joined():
        ring = tier.reconcile_or_none()
        return ring if ring is not None and new_shard in ring["shards"] else None
    ring = tools.wait_until(joined, 90, f"the controller to add {new_shard}", interval_s=1.0)
    assert ring["version"] > before["version"]
    assert set(ring["shards"]) == set(before["shards"]) | {new_shard}
    assert tier.info(new_shard)["path"] == os.path.join(data_dir, new_shard)

    tools.wait_until(lambda: client.ring_version >= ring["version"], 30, "the client to see the new ring")
    owners_after = _routed(tier, pages, chain)
    moved = [old != new for old, new in zip(owners_before, owners_after)]
    assert all(new == new_shard for new, was_moved in zip(owners_after, moved) if was_moved)
    # A warm join (docs/elastic.md): before it joined, the members handed the new shard the pages
    # the new ring routes to it, so the moved pages are hits there, not misses.
    assert any(moved)
    keys = tier.router().page_keys(pages.namespace, chain, [])
    moved_keys = [key for key, was_moved in zip(keys, moved) if was_moved]
    assert ray.get(tier.shard(new_shard).probe.remote(moved_keys), timeout=30) == len(moved_keys)
    hits, out = _read(client, pages, chain)
    assert hits == [True] * len(chain)
    assert all(np.array_equal(o, v) for o, v in zip(out, values))


def test_the_ring_version_keeps_increasing_across_a_controller_restart(tier, pages, tools, first_ring_client):
    before = tier.ring()
    assert before["version"] >= 3  # the removal and the join above moved it on

    restarts = tier.controller_entry().get("NumRestarts", 0)
    ray.kill(tier.controller, no_restart=False)  # Ray restarts the detached controller

    def answered():
        entry = tier.controller_entry()
        if entry.get("NumRestarts", 0) <= restarts or entry.get("State") != "ALIVE":
            return None  # still the old incarnation (ray.kill is asynchronous) or not up yet
        try:
            ring = tier.ring()
        except ray.exceptions.RayError:
            return None
        return ring if set(ring["shards"]) == set(before["shards"]) else None
    after = tools.wait_until(answered, 60, "the restarted controller to publish its ring", interval_s=0.5)
    assert after["version"] > before["version"]

    # Why it matters: a client that last saw the first ring (say its refreshes failed while the
    # controller was away) must adopt the new one, whatever version number it holds.
    chain = pages.chain("after the controller restart", 24)
    values = pages.values(chain)
    assert all(tier.client().put(pages.namespace, chain, [], values))
    first_ring_client.refresh_ring()
    assert first_ring_client.ring_version == after["version"]
    out = pages.buffers(24)
    assert first_ring_client.get_into(pages.namespace, chain, [], out) == [True] * 24


def test_a_node_that_restarts_with_its_disk_gets_its_shard_and_pages_back(tier, client, pages, tools,
                                                                          ray_cluster, data_dir):
    """A restarted Ray node has a new node id; labelled with its disk, its shard keeps its name, its
    ring place and its directory, so the pages it held are hits again once it is back."""
    shard = shard_name("disk-a", 0)
    node = ray_cluster.add_worker(labels={"raylsm-disk": "disk-a"})

    def placed_on(node_id):
        def check():
            ring = tier.reconcile_or_none()
            return ring if ring is not None and ring["shards"].get(shard, {}).get("node_id") == node_id else None
        return check
    ring = tools.wait_until(placed_on(node.node_id), 90, f"the controller to add {shard}", interval_s=1.0)
    tools.wait_until(lambda: client.ring_version >= ring["version"], 30, "the client to see the new ring")
    chain = tier.chain_where(pages, "on the labelled disk", 24, lambda shards: shards.count(shard) >= 4)
    values = pages.values(chain)
    assert all(client.put(pages.namespace, chain, [], values))
    on_disk = [owner == shard for owner in _routed(tier, pages, chain)]

    ray_cluster.remove_worker(node)
    reborn = ray_cluster.add_worker(labels={"raylsm-disk": "disk-a"})
    assert reborn.node_id != node.node_id
    # Ray declares the old node dead after its health checks fail (~15-30 s); until then both claim
    # the disk and the shard stays put. Then it moves, under the same name.
    ring = tools.wait_until(placed_on(reborn.node_id), 120, f"{shard} to move to the new node", interval_s=1.0)
    assert shard in ring["shards"]
    def serving_on_reborn():
        try:
            info = tier.info(shard, timeout_s=5)
        except (ray.exceptions.RayError, ValueError):  # restarting, or not created yet
            return None
        return info if info["node_id"] == reborn.node_id else None
    info = tools.wait_until(serving_on_reborn, 90, f"{shard} to serve from the new node", interval_s=1.0)
    assert info["path"] == os.path.join(data_dir, shard)

    def back():
        hits, out = _read(client, pages, chain)
        assert all(np.array_equal(out[i], values[i]) for i, hit in enumerate(hits) if hit)
        return all(hits) or None
    tools.wait_until(back, 60, "the pages on the labelled disk to be hits again", interval_s=1.0)
    assert any(on_disk)
