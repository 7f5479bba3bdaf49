"""Elasticity without Ray (docs/elastic.md): the autoscaling policy over miss-ratio curves
(raylsm/controller/scaling.py), the drain's plan (raylsm/actors/drain.py, ShardStore.newest_pages and
handover puts on real stores), and the controller's scale steps (raylsm/controller/scale_steps.py)
behind a fake cluster API: target, drain, standby, stop after the grace, wake-up on scale-out, the
ring record the shards keep, and a restarted controller adopting it. Ray's own autoscaler and real
actors: tests/ray/test_elastic_cluster.py."""

from __future__ import annotations

import pytest

from raylsm.actors.drain import owners_of, pace_delay
from raylsm.config import TierConfig
from raylsm.controller.controller import Controller
from raylsm.controller.elastic import newest_record, pick_victim
from raylsm.controller.ray_api import ShardSlot
from raylsm.controller.scaling import Curve, ScaleParams, decide, tier_hit_ratio, window_curves
from raylsm.errors import ConfigError
from raylsm.router import HashRing, page_keys, page_anchors, ExtentConfig, routing_key
from raylsm.store.outcomes import PutOutcome

MiB = 1 << 20


# ---- the policy ----------------------------------------------------------------------------------

def _curve(capacity: float, references: float, knee: float, floor: float = 0.2) -> Curve:
    """Miss ratio 1.0 at 1 MiB falling linearly in log size to `floor` at `knee` bytes, flat after."""
    import math

    points = []
    for k in range(0, 40):
        x = MiB * 2 ** (k / 2)
        y = 1.0 if x <= MiB else max(floor, 1.0 - (1.0 - floor) * math.log(x / MiB) / math.log(knee / MiB))
        points.append((x, y))
    return Curve(tuple(points), capacity, references)


def test_the_tier_hit_ratio_reads_every_shard_at_the_scaled_capacity_weighted_by_references():
    small = _curve(64 * MiB, 1000, knee=1024 * MiB)
    flat = _curve(64 * MiB, 3000, knee=2 * MiB)  # past its knee: more capacity does nothing
    now = tier_hit_ratio([small, flat], 1.0)
    assert now == pytest.approx((1000 * (1 - small.miss_ratio(64 * MiB)) + 3000 * 0.8) / 4000)
    assert tier_hit_ratio([small, flat], 2.0) > now
    assert tier_hit_ratio([flat], 2.0) == pytest.approx(tier_hit_ratio([flat], 1.0))
    assert tier_hit_ratio([], 1.0) is None


def test_the_policy_scales_out_when_a_shard_more_pays_and_in_when_a_shard_less_costs_nothing():
    params = ScaleParams(min_shards=2, max_shards=6, scale_out_gain=0.02, scale_in_loss=0.002, min_references=100)
    growing = [_curve(64 * MiB, 1000, knee=4096 * MiB) for _ in range(4)]
    assert decide(growing, 4, params)[0] == 5
    assert decide(growing, 6, params)[0] == 6  # at the ceiling
    saturated = [_curve(64 * MiB, 1000, knee=4 * MiB) for _ in range(4)]  # every shard far past its knee
    target, reason = decide(saturated, 4, params)
    assert target == 3 and "fewer" in reason
    assert decide(saturated, 2, params)[0] == 2  # at the floor
    assert decide([_curve(64 * MiB, 10, knee=4096 * MiB)] * 4, 4, params)[0] == 4  # too few references
    assert decide(growing, 1, params)[0] == 2 and decide(growing, 9, params)[0] == 6  # bounds first


def test_busy_disks_scale_out_and_hold_a_scale_in_that_would_overload_them():
    params = ScaleParams(min_shards=1, scale_in_loss=0.5, min_references=100, disk_bytes_per_s=1e9,
                         disk_busy_fraction=0.8)
    saturated = [_curve(64 * MiB, 1000, knee=4 * MiB) for _ in range(4)]
    assert decide(saturated, 4, params, [0.9e9] * 4)[0] == 5
    assert decide(saturated, 4, params, [0.7e9] * 4)[0] == 4  # 3 shards would run at 93%
    assert decide(saturated, 4, params, [0.1e9] * 4)[0] == 3


def test_a_window_curve_counts_only_the_references_since_the_last_reading():
    before = Curve(((MiB, 0.5), (4 * MiB, 0.5)), 8 * MiB, 1000)
    # 1000 more references, all misses at 1 MiB and all hits at 4 MiB.
    now = Curve(((MiB, 0.75), (4 * MiB, 0.25)), 8 * MiB, 2000)
    window = window_curves({"a": now, "b": now}, {"a": before})
    assert window["a"].references == 1000
    assert window["a"].points == ((MiB, 1.0), (4 * MiB, 0.0))
    assert window["b"] == now  # no earlier reading: its whole life
    idle = window_curves({"a": before}, {"a": before})["a"]
    assert idle.references == 0  # nothing counted since: an empty window, not the whole life


def test_the_victim_is_alone_on_its_node_then_the_smallest():
    assert pick_victim({"a": ("n1", 10), "b": ("n1", 1), "c": ("n2", 50)}) == "c"
    assert pick_victim({"a": ("n1", 10), "b": ("n2", 1), "c": ("n3", 50)}) == "b"
    assert pick_victim({"a": ("n1", 5), "c": ("n3", 5), "b": ("n2", 5)}) == "c"  # a tie: the last name
    assert pick_victim({}) is None
    assert newest_record({"a": {"version": 3, "members": ["a"]}, "b": {"version": 7, "members": ["a", "b"]},
                          "c": None, "d": RuntimeError("down"), "e": {}})["version"] == 7


# ---- the drain's plan on real stores -----------------------------------------------------------------

def test_owners_of_agrees_with_the_clients_routing_by_routing_id(kit):
    extents = ExtentConfig.plain(4)
    rank_ns, routing_id, plain_ns = b"R" * 8, b"I" * 8, b"P" * 8
    ring = HashRing(["s1", "s2", "s3"], 64)
    keys, expected = [], []
    for seq in range(40):
        chain = [kit.page_hash("c", seq, i) for i in range(9)]
        for namespace, routes_by in ((rank_ns, routing_id), (plain_ns, plain_ns)):
            keys += page_keys(namespace, chain, [], extents)
            expected += [ring.shard_for(routing_key(routes_by, anchor))
                         for _, anchor in page_anchors(chain, [], extents)]
    groups = owners_of(keys, ["s3", "s1", "s2"], 64, {rank_ns: routing_id})
    got = [None] * len(keys)
    for owner, indices in groups.items():
        for index in indices:
            got[index] = owner
    assert got == expected and len(groups) == 3


def test_newest_pages_are_the_last_written_within_the_budget(store_factory, kit):
    store = store_factory(segment_bytes=1 * MiB, capacity_bytes=64 * MiB)
    keys = kit.keys(40)
    for start in range(0, 40, 8):  # five puts, so five records in write order
        assert store.put_batch(keys[start:start + 8], [kit.value(i, 64 * 1024) for i in range(start, start + 8)])
    store.delete_batch([keys[39]])
    chosen, newest = store.newest_pages(10 * 64 * 1024)
    assert [key for key, _ in chosen] == keys[29:39][::-1]
    assert all(size == 64 * 1024 for _, size in chosen)
    assert store.newest_pages(0)[0] == []
    assert store.newest_pages(1 << 40, after=newest) == ([], newest)  # nothing written since
    more = kit.keys(3, start=100)
    assert store.put_batch(more, [kit.value(i, 64 * 1024) for i in range(3)])
    since, _ = store.newest_pages(1 << 40, after=newest)
    assert [key for key, _ in since] == more[::-1]


def test_a_handover_put_skips_admission_and_the_workload_statistics(store_factory, kit):
    store = store_factory(admission_policy="second_touch", workload_sample_rate=1.0)
    keys = kit.keys(4)
    values = [kit.value(i, 4096) for i in range(4)]
    assert store.put_batch_outcomes(keys[:2], values[:2]) == [PutOutcome.DECLINED] * 2
    assert store.put_batch_outcomes(keys[2:], values[2:], handover=True) == [PutOutcome.STORED] * 2
    assert kit.read_all(store, keys[2:]) == [bytes(value) for value in values[2:]]
    workload = store.stats()["workload"]
    assert workload["references"] == 2  # the two offers, not the handed-over pages


def test_tier_meta_survives_a_reopen(store_factory, tmp_path):
    store = store_factory(tmp_path / "s")
    assert store.tier_meta("ring") is None
    store.set_tier_meta("ring", b"record")
    store.close()
    assert store_factory(tmp_path / "s").tier_meta("ring") == b"record"


# ---- the controller's scale steps ------------------------------------------------------------------

class ElasticCluster:
    """Nodes with one shard slot each; shard handles are their names. Records what the controller
    asked: resource requests, drains, shutdowns, kills and the ring records each shard keeps."""

    def __init__(self, names):
        self.slots = {name: f"node-{name}" for name in names}
        self.running: set[str] = set()
        self.requests: list[int] = []
        self.drains: list[tuple] = []
        self.records: dict[str, dict] = {}
        self.stopped: list[str] = []
        self.drain_report = {"pages": 7, "bytes": 7 * 4096, "complete": True, "by_owner": {}}
        self.stats: dict[str, dict] = {}

    def shard_slots(self, resource_name, disk_label):
        return [ShardSlot(name, node) for name, node in self.slots.items()]

    def alive_node_ids(self):
        return set(self.slots.values())

    def existing_shard(self, name):
        return name if name in self.running else None

    def start_shard(self, slot, config):
        self.running.add(slot.name)
        return slot.name

    def request_shards(self, count, resource_name):
        self.requests.append(count)

    def ping_all(self, handles, timeout_s):
        return {name: "ok" if name in self.running else "silent" for name in handles}

    def kill(self, handle):
        self.running.discard(handle)
        self.stopped.append(handle)

    def call_all(self, handles, method, timeout_s, *args):
        answers = {}
        for name in handles:
            if name not in self.running:
                answers[name] = None
            elif method == "remember_ring":
                if args[0]["version"] > self.records.get(name, {}).get("version", 0):
                    self.records[name] = dict(args[0])
                answers[name] = self.records[name]["version"]
            elif method == "ring_record":
                answers[name] = dict(self.records.get(name, {}))
            elif method == "stats":
                answers[name] = self.stats.get(name, {})
            else:
                answers[name] = {}
        return answers

    def call_each(self, calls, timeout_s):
        results = {}
        for name, (handle, method, args) in calls.items():
            assert method == "drain"
            self.drains.append((name, *args))
            results[name] = dict(self.drain_report)
        return results


def _settle(controller, rounds=3):
    import time

    for _ in range(rounds):
        controller.reconcile_once()
        time.sleep(0.05)  # the drain runs in its own thread


def _elastic_config(**controller):
    return TierConfig.from_dict({"controller": {"split_extents": False, "drain_grace_s": 0.01, **controller},
                                 "client": {"virtual_nodes": 32}})


def test_scale_in_drains_the_victim_to_the_rest_then_stops_it_and_scale_out_wakes_it():
    cluster = ElasticCluster(["shard-a-0", "shard-b-0", "shard-c-0"])
    controller = Controller(_elastic_config(), api=cluster)
    _settle(controller)
    first = controller.ring()
    assert sorted(first["shards"]) == ["shard-a-0", "shard-b-0", "shard-c-0"]

    controller.scale(2)
    controller.reconcile_once()
    status = controller.scale_status()
    victim = status["draining"]
    assert victim is not None and victim in first["shards"]
    assert victim in controller.ring()["shards"]  # in the ring while it hands over
    _settle(controller)
    name, members, virtual_nodes, fraction, _timeout, only, bytes_per_s = cluster.drains[0]
    assert only is None and bytes_per_s == 256e6
    assert name == victim and sorted(members) == sorted(set(first["shards"]) - {victim})
    assert virtual_nodes == 32 and fraction == pytest.approx(2 / 3)
    ring = controller.ring()
    assert sorted(ring["shards"]) == sorted(members) and ring["version"] > first["version"]
    assert victim in cluster.stopped and victim not in cluster.running  # stopped after the grace
    assert cluster.requests[-1] == 2
    status = controller.scale_status()
    assert status["standby"] == [victim] and status["target"] == 2
    assert [event["kind"] for event in status["events"]] == ["scale", "scale_in"]
    assert status["events"][-1]["drain"]["pages"] == 7
    # Every serving shard keeps the newest record: members, standby and target.
    for member in members:
        assert cluster.records[member] == {"version": ring["version"], "members": sorted(members),
                                           "standby": [victim], "target": 2}
    _settle(controller)
    assert victim not in cluster.running  # standby: not started again while the target is met

    controller.scale(3)
    controller.reconcile_once()
    controller.reconcile_once()
    assert victim not in controller.ring()["shards"]  # warming: out of the ring until warmed
    _settle(controller)
    assert sorted(controller.ring()["shards"]) == sorted(first["shards"])
    assert cluster.requests[-1] == 3 and controller.scale_status()["standby"] == []
    # A warm join: every member handed the woken shard the pages the ring with it routes to it.
    warm = [call for call in cluster.drains[1:]]
    assert sorted(call[0] for call in warm) == sorted(members)
    assert all(sorted(call[1]) == sorted(first["shards"]) and call[3] == 1.0 and call[5] == victim for call in warm)
    assert controller.scale_status()["events"][-1]["kind"] == "warmed"


def test_the_first_shards_of_a_tier_join_without_a_warm_up():
    cluster = ElasticCluster(["shard-a-0", "shard-b-0"])
    controller = Controller(_elastic_config(), api=cluster)
    _settle(controller)
    assert len(controller.ring()["shards"]) == 2 and cluster.drains == []


def test_scale_in_without_drain_leaves_at_once():
    cluster = ElasticCluster(["shard-a-0", "shard-b-0"])
    controller = Controller(_elastic_config(), api=cluster)
    _settle(controller)
    controller.scale(1, drain=False)
    controller.reconcile_once()
    assert len(controller.ring()["shards"]) == 1 and cluster.drains == []
    assert controller.scale_status()["events"][-1]["drained"] is False


def test_a_restarted_controller_adopts_the_ring_the_shards_keep():
    cluster = ElasticCluster(["shard-a-0", "shard-b-0", "shard-c-0"])
    controller = Controller(_elastic_config(), api=cluster)
    _settle(controller)
    controller.scale(2)
    _settle(controller, 5)
    before = controller.ring()
    standby = controller.scale_status()["standby"]

    restarted = Controller(_elastic_config(), api=cluster)
    restarted.reconcile_once()  # (the actor runs one round before it answers any call)
    after = restarted.ring()
    assert sorted(after["shards"]) == sorted(before["shards"])  # no key remapped
    assert after["version"] > before["version"]
    assert restarted.scale_status()["standby"] == standby and restarted.scale_status()["target"] == 2
    _settle(restarted)
    assert standby[0] not in cluster.running


def test_a_member_that_does_not_answer_a_restarted_controller_stays_in_the_ring():
    cluster = ElasticCluster(["shard-a-0", "shard-b-0"])
    controller = Controller(_elastic_config(), api=cluster)
    _settle(controller)
    before = controller.ring()

    real_ping = cluster.ping_all
    cluster.ping_all = lambda handles, timeout_s: {name: "silent" if name == "shard-b-0" else answer
                                                   for name, answer in real_ping(handles, timeout_s).items()}
    restarted = Controller(_elastic_config(), api=cluster)
    restarted.reconcile_once()
    assert sorted(restarted.ring()["shards"]) == sorted(before["shards"])


def test_scale_refuses_bad_counts_and_counts_outside_the_autoscaling_bounds():
    controller = Controller(_elastic_config(autoscale=True, min_shards=2, max_shards=4),
                            api=ElasticCluster(["shard-a-0"]))
    for bad in (0, -1, 1.5, "3", True):
        with pytest.raises(ConfigError, match="shards"):
            controller.scale(bad)
    with pytest.raises(ConfigError, match="bounds"):
        controller.scale(5)
    with pytest.raises(ConfigError, match="max_shards"):
        _elastic_config(min_shards=3, max_shards=2)


def test_status_shows_the_target_the_standby_shards_and_the_last_events():
    from raylsm.status_report import format_status

    cluster = ElasticCluster(["shard-a-0", "shard-b-0"])
    controller = Controller(_elastic_config(), api=cluster)
    _settle(controller)
    assert "scale:" not in format_status(controller.status())  # nothing asked: no scale lines
    controller.scale(1)
    _settle(controller, 5)
    text = format_status(controller.status())
    standby = controller.scale_status()["standby"][0]
    assert f"scale: target 1 shards, 1 in the ring; standby {standby}; Ray's autoscaler asked for 1" in text
    assert "scale_in: shard " + standby in text and "drained True" in text


def _stats(references: int, knee_mib: float) -> dict:
    """A shard's stats() with a miss-ratio curve (see `_curve`) and a 64 MiB budget."""
    curve = _curve(64 * MiB, references, knee=knee_mib * MiB)
    return {"space": {"capacity_bytes": 64 * MiB}, "counters": {},
            "workload": {"references": references, "mrc": [list(point) for point in curve.points]}}


def test_windows_too_thin_to_judge_add_up_until_the_policy_can_decide():
    """References that trickle in below scale_min_references per period still move the target once
    they add up; each period's window used to be judged alone, and dropped."""
    import time

    cluster = ElasticCluster(["shard-a-0"])
    controller = Controller(_elastic_config(autoscale=True, min_shards=1, max_shards=3, autoscale_period_s=0.05,
                                            scale_cooldown_s=0.0, scale_min_references=100, scale_out_gain=0.01),
                            api=cluster)
    references = 1000
    for _ in range(6):  # the first reading spans the ring's first version; then 40 references a period
        cluster.stats["shard-a-0"] = _stats(references, knee_mib=4096)
        controller.reconcile_once()
        time.sleep(0.06)
        references += 40
    status = controller.scale_status()
    assert status["target"] == 2 and cluster.requests[-1] == 2, status["decision"]


def test_the_policy_holds_a_scale_out_while_its_node_is_coming_and_decides_again_once_it_serves():
    import time

    cluster = ElasticCluster(["shard-a-0"])
    controller = Controller(_elastic_config(autoscale=True, min_shards=1, max_shards=3, autoscale_period_s=0.05,
                                            scale_cooldown_s=0.0, scale_min_references=100, scale_out_gain=0.01),
                            api=cluster)
    references = 1000
    cluster.stats["shard-a-0"] = _stats(references, knee_mib=4096)
    for _ in range(3):  # the first reading spans the ring's first version; the next decides
        references += 1000
        cluster.stats["shard-a-0"] = _stats(references, knee_mib=4096)
        controller.reconcile_once()
        time.sleep(0.06)
    status = controller.scale_status()
    assert status["target"] == 2 and cluster.requests[-1] == 2
    # No node comes for a while, and the window is quiet: the target holds (it is not the ring's 1).
    for _ in range(5):
        controller.reconcile_once()
        time.sleep(0.06)
    status = controller.scale_status()
    assert status["target"] == 2 and status["decision"]["reason"] == "moving to 2 shards"
    assert [event["target"] for event in status["events"] if event["kind"] == "autoscale"] == [2]
    cluster.slots["shard-b-0"] = "node-shard-b-0"  # the autoscaler's node arrives
    cluster.stats["shard-b-0"] = _stats(0, knee_mib=4096)
    _settle(controller, 4)
    assert len(controller.ring()["shards"]) == 2


def test_a_hand_over_is_paced_to_its_byte_rate():
    assert pace_delay(1.0, 100, 0.0) == 0.0  # no cap
    assert pace_delay(1.0, 512 * MiB, 256 * MiB) == pytest.approx(1.0)  # two seconds' worth after one
    assert pace_delay(3.0, 512 * MiB, 256 * MiB) == 0.0  # behind the cap: no wait


def test_a_shard_that_was_warming_when_the_controller_died_is_warmed_by_the_next_one():
    cluster = ElasticCluster(["shard-a-0", "shard-b-0"])
    controller = Controller(_elastic_config(), api=cluster)
    _settle(controller)
    cluster.slots["shard-c-0"] = "node-shard-c-0"  # a node joins; the controller dies before it warms
    restarted = Controller(_elastic_config(), api=cluster)
    restarted.reconcile_once()
    assert sorted(restarted.ring()["shards"]) == ["shard-a-0", "shard-b-0"]  # not in the ring cold
    _settle(restarted)
    assert "shard-c-0" in restarted.ring()["shards"]
    assert sorted(call[0] for call in cluster.drains) == ["shard-a-0", "shard-b-0"]
    assert all(call[5] == "shard-c-0" for call in cluster.drains)
