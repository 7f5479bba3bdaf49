"""The elastic tier on Ray's own autoscaler (`ray.cluster_utils.AutoscalingCluster`, fake nodes on this
machine; tests/ray/autoscaling_cluster.py): the controller asks for nodes with `request_resources`,
its autoscaling policy scales out when the shards' miss-ratio curves say one more shard pays, and a
scale-in drains a shard, stops it and Ray's autoscaler removes the idle node (docs/elastic.md)."""

from __future__ import annotations

import itertools
import os

import pytest
import ray

from autoscaling_cluster import LocalAutoscalingCluster, shard_nodes, wait_for_nodes
from raylsm.config import RAY_NAMESPACE

KiB, MiB = 1024, 1024 * 1024
PAGE = 16 * KiB
LOOP_PAGES = 200  # 3.2 MB of pages looped over: more than one shard's 2 MiB, less than two


@pytest.fixture(scope="module")
def autoscaling():
    cluster = LocalAutoscalingCluster(
        head_resources={"CPU": 1, "object_store_memory": 100 * MiB},
        worker_node_types={"kv": {"resources": {"CPU": 1, "raylsm_shard": 1, "object_store_memory": 100 * MiB},
                                  "labels": {"raylsm-disk": "auto-{node}"}, "node_config": {},
                                  "min_workers": 0, "max_workers": 2}},
        idle_timeout_minutes=0.05, upscaling_speed=1.0)
    auth_mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # as the cluster runs (autoscaling_cluster.py); restored below
    cluster.start()
    try:
        ray._private.ray_constants.AUTOSCALER_EVENTS = 0  # no "(autoscaler +Ns)" lines in the driver
        ray.init(address=cluster.address, namespace=RAY_NAMESPACE, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth_mode


@pytest.fixture(scope="module")
def tier(autoscaling, tier_factory):
    return tier_factory(
        shard={"store": {"capacity_bytes": 2 * MiB, "segment_bytes": 256 * KiB, "workload_sample_rate": 1.0,
                         "block_cache_bytes": 1 * MiB, "write_buffer_bytes": 1 * MiB},
               "pool_disk_budget": False},
        client={"extent_pages": 1, "shallow_depth_pages": 0, "shallow_extent_pages": 1},
        controller={"autoscale": True, "min_shards": 1, "max_shards": 2, "autoscale_period_s": 1.0,
                    "scale_cooldown_s": 0.0, "scale_min_references": 100, "scale_out_gain": 0.05,
                    "scale_in_loss": 0.0, "reconcile_period_s": 0.5, "drain_grace_s": 1.0})


def test_the_policy_asks_the_autoscaler_for_a_first_node_then_scales_out_when_more_capacity_pays(tier, pages, tools):
    ring = tier.wait_for_shards(1, timeout_s=120)  # no node at start: min_shards 1 asks for one
    assert len(shard_nodes()) == 1 and len(ring["shards"]) == 1
    client = tier.client()
    loop = [pages.chain(("loop", i), 1) for i in range(LOOP_PAGES)]
    value, out = pages.value("v"), pages.buffers(1)
    rounds = itertools.count()

    def grown():
        next(rounds)
        for chain in loop:  # as SGLang does: ask, then load a hit or write a miss back
            if client.exists(pages.namespace, chain, []):
                client.get_into(pages.namespace, chain, [], out)
            else:
                client.put(pages.namespace, chain, [], [value])
        return len(tier.ring()["shards"]) == 2

    tools.wait_until(grown, 240, "the autoscaling policy to add a shard", interval_s=0)
    status = ray.get(tier.controller.scale_status.remote())
    autoscale = [event for event in status["events"] if event["kind"] == "autoscale"]
    assert [event["target"] for event in autoscale] == [1, 2], [(e["kind"], e.get("target"), e.get("shards"),
                                                                 e.get("reason")) for e in status["events"]]
    assert "one more shard" in autoscale[-1]["reason"]
    assert status["requested"] == 2 and len(shard_nodes()) == 2


def test_scale_in_drains_a_shard_and_the_autoscaler_removes_its_idle_node(tier, pages, tools):
    client = tier.client()
    chains = [pages.chain(("kept", i), 1) for i in range(40)]
    for chain in chains:
        assert all(client.put(pages.namespace, chain, [], pages.values(chain)))
    ray.get(tier.controller.scale.remote(1))
    try:
        tools.wait_until(lambda: len(shard_nodes()) == 1, 120, "Ray's autoscaler to remove the drained shard's node")
    finally:
        print("scale status:", ray.get(tier.controller.scale_status.remote()))
        print("nodes:", [(n["NodeID"][-5:], n["Labels"], n["Resources"], n["Alive"]) for n in ray.nodes()])
    status = tools.wait_until(lambda: (s := ray.get(tier.controller.scale_status.remote()))["members"] == 1
                              and not s["standby"] and s, 60, "the controller to forget the standby shard")
    drain = [event for event in status["events"] if event["kind"] == "scale_in"][-1]["drain"]
    assert drain["complete"] and drain["failed"] == 0 and drain["pages"] > 0
    assert status["requested"] == 1 and len(tier.ring()["shards"]) == 1
    hits = 0
    for chain in chains:
        out = pages.buffers(1)
        if client.get_into(pages.namespace, chain, [], out)[0]:
            assert (out[0] == pages.value(chain[0])).all()
            hits += 1
    assert hits > 0
    wait_for_nodes(1, 10)
