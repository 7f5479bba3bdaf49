"""Scale-in with drain, scale-out from standby, and a controller that dies, through Ray on simulated
nodes (`ray.cluster_utils.Cluster`; docs/elastic.md). Pages are routed by a routing id other than
their namespace (as the SGLang adapter routes every rank's pages), so the drain must learn it from
the puts. Reads run all through each move and are checked byte for byte. Ray's own autoscaler:
tests/ray/test_autoscaling.py."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import ray

from raylsm.router import ExtentRouter, HashRing

CLUSTER_WORKERS = 3
EXTENT = {"extent_pages": 4, "shallow_depth_pages": 0, "shallow_extent_pages": 1}
ROUTING_ID = b"rank-free"[:8]
CHAINS = 90  # of 4 pages: one extent each


@pytest.fixture(scope="module")
def tier(ray_cluster, tier_factory):
    # A grace long enough to read from a leaving shard: it is listed until a ring refresh and a call
    # (0.5 + 2 s here) before it stops.
    tier = tier_factory(client={**EXTENT, "call_timeout_s": 2.0},
                        controller={"reconcile_period_s": 0.5, "drain_grace_s": 10.0, "ping_timeout_s": 5.0})
    tier.wait_for_shards(CLUSTER_WORKERS)
    return tier


class Reader:
    """Reads every chain again and again in a thread, checking bytes; counts hits, misses, wrong pages
    and the client's failed calls."""

    def __init__(self, client, pages, chains):
        self.client, self.pages, self.chains = client, pages, chains
        self.wrong = self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for chain in self.chains:
                out = self.pages.buffers(len(chain))
                hits = self.client.get_into(self.pages.namespace, chain, [], out)
                for hit, page, buffer in zip(hits, chain, out):
                    if hit and not np.array_equal(buffer, self.pages.value(page)):
                        self.wrong += 1
                self.reads += 1

    def stop(self):
        self._stop.set()
        self._thread.join(60)


def _hits(client, pages, chains) -> list[bool]:
    hits = []
    for chain in chains:
        out = pages.buffers(len(chain))
        got = client.get_into(pages.namespace, chain, [], out)
        hits.extend(hit and np.array_equal(buffer, pages.value(page)) for hit, page, buffer in zip(got, chain, out))
    return hits


def _owner(tier, ring: dict, chain) -> str:
    router = ExtentRouter(HashRing(sorted(ring["shards"]), tier.config.client.virtual_nodes),
                          tier.config.client.extent_pages)
    return router.route_pages(ROUTING_ID, chain, [])[0]


def _client_with_chains(tier, pages, name: str, count: int):
    """A client routing by ROUTING_ID, and `count` chains of 4 pages it stored (one extent each)."""
    client = tier.client()
    client.route_namespace_as(pages.namespace, ROUTING_ID)
    chains = [pages.chain((name, i), 4) for i in range(count)]
    for chain in chains:
        assert all(client.put(pages.namespace, chain, [], pages.values(chain)))
    return client, chains


def _failed_calls(client) -> int:
    return sum(value for key, value in client.stats()["counters"].items() if "failed" in key)


def test_scale_in_drains_the_leaving_shard_and_its_pages_hit_on_their_new_owners(tier, pages, tools):
    client, chains = _client_with_chains(tier, pages, "elastic", CHAINS)
    before = tier.ring()
    assert all(_hits(client, pages, chains))
    reader = Reader(client, pages, chains)
    failed_before = _failed_calls(client)

    ray.get(tier.controller.scale.remote(2))
    scale = tools.wait_until(lambda: (s := ray.get(tier.controller.scale_status.remote()))["standby"]
                             and not s["leaving"] and s, 120, "the drained shard to stop")
    reader.stop()
    victim = scale["standby"][0]
    after = tier.ring()
    assert sorted(after["shards"]) == sorted(set(before["shards"]) - {victim})
    event = [e for e in scale["events"] if e["kind"] == "scale_in"][-1]
    assert event["drained"] and event["drain"]["complete"] and event["drain"]["failed"] == 0

    hits = _hits(client, pages, chains)
    on_victim = [i for i, chain in enumerate(chains) if _owner(tier, before, chain) == victim]
    assert on_victim, "no chain was on the drained shard"
    # Every page that stayed put still hits; of the leaving shard's pages, its newest 2/3 by bytes
    # were handed over and hit on their new owners (whole chains, oldest first dropped).
    kept = [hits[4 * i: 4 * i + 4] for i in range(CHAINS) if i not in on_victim]
    moved = [hits[4 * i: 4 * i + 4] for i in on_victim]
    assert all(all(chain) for chain in kept)
    moved_pages = sum(map(sum, moved))
    assert moved_pages >= int(2 / 3 * 4 * len(on_victim)) - 1 and moved_pages == event["drain"]["pages"]
    assert all(all(chain) for chain in moved[-len(moved) * 2 // 3 + 1:])  # the newest chains moved
    assert reader.wrong == 0 and reader.reads > 0
    assert _failed_calls(client) == failed_before  # no call failed during the move
    with pytest.raises(ValueError):  # the standby shard's actor is stopped: its name is free
        tier.shard(victim)


def test_a_killed_controller_comes_back_with_the_same_ring_and_standby_and_nothing_remapped(tier, pages, tools):
    client, chains = _client_with_chains(tier, pages, "survive", 30)
    before = tier.ring()
    scale_before = ray.get(tier.controller.scale_status.remote())
    reader = Reader(client, pages, chains)
    pid = tier.controller_entry()["Pid"]
    ray.kill(tier.controller, no_restart=False)  # Ray restarts it (max_restarts=-1)
    tools.wait_until(lambda: tier.controller_entry().get("Pid") not in (None, pid)
                     and tier.reconcile_or_none(), 120, "the controller to restart")
    reader.stop()
    after = tier.ring()
    assert sorted(after["shards"]) == sorted(before["shards"]) and after["version"] > before["version"]
    scale_after = ray.get(tier.controller.scale_status.remote())
    assert scale_after["standby"] == scale_before["standby"] and scale_after["target"] == scale_before["target"]
    assert reader.wrong == 0 and all(_hits(client, pages, chains))
    assert client.ring_version >= before["version"]


def test_scale_out_wakes_the_standby_shard_into_the_ring(tier, pages, tools):
    ray.get(tier.controller.scale.remote(3))
    ring = tier.wait_for_shards(3, timeout_s=120)
    assert len(ring["shards"]) == 3
    status = ray.get(tier.controller.scale_status.remote())
    assert status["standby"] == [] and status["target"] == 3
    assert any(event["kind"] == "scale_out" for event in status["events"])


def test_scale_in_without_drain_still_reads_the_leaving_shards_pages_until_it_stops(tier, pages, tools):
    client, chains = _client_with_chains(tier, pages, "no-drain", CHAINS)
    before = tier.ring()
    failed_before = _failed_calls(client)
    ray.get(tier.controller.scale.remote(2, False))

    def switched():
        client.refresh_ring()
        ring = tier.ring()
        return len(ring["shards"]) == 2 and client.ring_version == ring["version"]
    tools.wait_until(switched, 60, "the client to have the ring of 2")
    victim = (set(before["shards"]) - set(tier.ring()["shards"])).pop()
    assert tier.ring()["leaving"] == [victim]
    # Its pages were not handed over, yet they are hits: read where they were while it is leaving.
    assert all(_hits(client, pages, chains))
    assert client.stats()["counters"].get("get_handoff_reads", 0) > 0
    assert client.stats()["counters"].get("exists_handoff_probes", 0) == 0  # (no exists here)
    assert sum(client.exists(pages.namespace, chain, []) for chain in chains) == 4 * CHAINS
    assert client.stats()["counters"]["exists_handoff_probes"] > 0
    tools.wait_until(lambda: not ray.get(tier.controller.scale_status.remote())["leaving"], 60,
                     "the leaving shard to stop")
    client.refresh_ring()
    on_victim = [chain for chain in chains if _owner(tier, before, chain) == victim]
    assert on_victim and not any(_hits(client, pages, on_victim))  # gone with it: no drain
    assert _failed_calls(client) == failed_before  # and no call went to the stopped shard
    ray.get(tier.controller.scale.remote(3))
    tier.wait_for_shards(3, timeout_s=120)
