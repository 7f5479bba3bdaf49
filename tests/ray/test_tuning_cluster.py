"""The controller's store tuning through Ray on simulated nodes (`ray.cluster_utils.Cluster`): a scan
flood through the tier client moves the shards to second-touch admission, each shard acknowledges
the version and `raylsm status` shows it; a shard killed for good stalls nothing; a restarted
controller rebuilds the tunings from the shards and pushes nothing again."""

from __future__ import annotations

import itertools

import pytest
import ray

from raylsm.status_report import format_status

CLUSTER_WORKERS = 2
KiB, MiB = 1024, 1024 * 1024
EXTENTS = {"extent_pages": 1, "shallow_depth_pages": 0, "shallow_extent_pages": 1}
_ONE_OFF = itertools.count()  # one-off pages are never asked twice, across rounds too


@pytest.fixture(scope="module")
def tier(ray_cluster, tier_factory):
    tier = tier_factory(
        # 2 MiB of 16 KiB pages per shard (about 120, less its index): the miniature simulations
        # sample every page, and one round of the flood below (about 60 hot and 180 one-off pages a
        # shard) turns a shard's cache over.
        shard={"store": {"capacity_bytes": 2 * MiB, "segment_bytes": 256 * KiB}, "pool_disk_budget": False},
        client=EXTENTS,
        controller={"tuning": True, "tuning_period_s": 0.5, "tuning_min_references": 50, "reconcile_period_s": 0.5,
                    "ping_timeout_s": 2.0})
    tier.wait_for_shards(CLUSTER_WORKERS)
    return tier


def _scan_flood(client, pages, rounds: int) -> None:
    """A 120-page hot loop with 3 one-off pages between its references (exists, then get or put)."""
    value = pages.value("v")
    out = pages.buffers(1)
    hot = [pages.chain(("hot", i), 1) for i in range(120)]
    one_off = (pages.chain(("scan", i), 3) for i in _ONE_OFF)
    for _ in range(rounds):
        for chain in hot:
            if client.exists(pages.namespace, chain, []):
                client.get_into(pages.namespace, chain, [], out)
            else:
                client.put(pages.namespace, chain, [], [value])
            scan = next(one_off)
            client.exists(pages.namespace, scan, [])
            client.put(pages.namespace, scan, [], [value] * 3)


def _tunings(tier) -> dict:
    return {shard["shard"]: shard.get("tuning") for shard in tier.status()["shards"]}


def test_a_scan_flood_moves_the_shards_to_second_touch_through_ray(tier, pages, tools):
    client = tier.client()

    seen = []

    def tuned():
        _scan_flood(client, pages, 1)
        tunings = _tunings(tier)
        seen[:] = [tunings]
        done = all(t and t["choice"].startswith("second_touch") and t["version"] and t["acked_version"] == t["version"]
                   for t in tunings.values())
        return tunings if done else None
    try:
        tunings = tools.wait_until(tuned, 120, "the controller to tune every shard", interval_s=0.1)
    finally:
        print("last tunings:", seen)
    for name, tuning in tunings.items():
        window = ray.get(tier.shard(name).tuning_window.remote())
        assert window["version"] == tuning["version"] and window["choice"] == tuning["choice"]
        assert window["config"]["admission_policy"] == "second_touch"
        assert f"{name} tuning: version {tuning['version']} {tuning['choice']} (applied)" in format_status(tier.status())


def test_a_shard_killed_for_good_stalls_nothing_and_a_restarted_controller_adopts_the_tunings(tier, pages, tools):
    before = _tunings(tier)
    victim, survivor = sorted(before)
    ray.kill(tier.shard(victim), no_restart=True)
    ring_version = tier.ring()["version"]
    # The loop goes on: it keeps answering, and the survivor's tuning stays as acknowledged.
    tools.wait_until(lambda: tier.reconcile()["version"] >= ring_version, 30, "a reconcile round")
    status = tier.status()
    assert "_reconcile_tuning" not in status["errors"]
    survivor_tuning = _tunings(tier)[survivor]
    assert survivor_tuning["acked_version"] == survivor_tuning["version"] == before[survivor]["version"]

    restarts = tier.controller_entry().get("NumRestarts", 0)
    ray.kill(tier.controller, no_restart=False)  # Ray restarts the detached controller

    def adopted():
        entry = tier.controller_entry()
        if entry.get("NumRestarts", 0) <= restarts or entry.get("State") != "ALIVE":
            return None
        try:
            tuning = _tunings(tier).get(survivor)
        except ray.exceptions.RayError:
            return None
        return tuning if tuning else None
    after = tools.wait_until(adopted, 60, "the restarted controller to read the shards' tunings", interval_s=0.5)
    assert (after["version"], after["choice"]) == (before[survivor]["version"], before[survivor]["choice"])
    assert ray.get(tier.shard(survivor).tuning_window.remote())["version"] == before[survivor]["version"]
