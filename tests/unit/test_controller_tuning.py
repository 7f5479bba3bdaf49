"""The controller's tuning loop (raylsm/controller/controller.py, `_reconcile_tuning`) over real
stores behind a fake cluster API (no Ray): shards fed a scan flood are moved to second-touch
admission, with a version they acknowledge and `raylsm status` shows; a shard that does not answer
stalls nothing; a restarted controller adopts what the shards run; a restarted shard gets its tuning
pushed again. The same calls run through Ray in tests/ray/test_ray_tier_cluster.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from raylsm.actors.store_tuning import StoreTuning
from raylsm.config import TierConfig
from raylsm.controller.controller import Controller
from raylsm.controller.ray_api import ShardSlot
from raylsm.status_report import format_status
from raylsm.store.mini_sims import CANDIDATES

KiB = 1024
PAGE = 16 * KiB


class TunedCluster:
    """One node per shard; each shard a real store behind StoreTuning. `down`: shards whose calls
    time out (None), as a dead or hung actor's do."""

    def __init__(self, tuners: dict[str, StoreTuning]):
        self.tuners = tuners
        self.down: set[str] = set()
        self.pushes: list[tuple[str, dict, int]] = []

    def shard_slots(self, resource_name, disk_label):
        return [ShardSlot(name, f"node-{name}") for name in self.tuners]

    def alive_node_ids(self):
        return {f"node-{name}" for name in self.tuners}

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
        if method == "tuning_window":
            return {name: None if name in self.down else self.tuners[name].window() for name in handles}
        if method == "stats":
            return {name: {} for name in handles}
        return {name: {} for name in handles}

    def call_each(self, calls, timeout_s):
        results = {}
        for name, (handle, method, args) in calls.items():
            assert method == "apply_tuning"
            if name in self.down:
                results[name] = None
                continue
            self.pushes.append((name, *args))
            results[name] = self.tuners[name].apply(*args)
        return results


def _config(**controller):
    return TierConfig.from_dict({"controller": {"tuning": True, "tuning_period_s": 0.05, "tuning_min_references": 100,
                                                "split_extents": False, **controller}})


_one_off = itertools.count()


def _flood_through(store, hot, scan) -> None:
    """Each hot page through probe and get (or put), then 3 one-off pages from `scan`."""
    value = np.zeros(PAGE, np.uint8)
    for key in hot:
        if store.probe([key]):
            store.get_batch_into([key], [np.empty(PAGE, np.uint8)])
        else:
            store.put_batch([key], [value])
        one_off = [next(scan) for _ in range(3)]
        store.probe(one_off)
        store.put_batch(one_off, [value] * 3)


def _scan_flood(store, rounds: int, seed: int, kit) -> None:
    """A 200-page hot loop, 3 one-off pages between its references, through probe and put."""
    hot = [kit.key(("hot", seed, i)) for i in range(200)]
    scan = (kit.key(("scan", i)) for i in _one_off)
    for _ in range(rounds):
        _flood_through(store, hot, scan)


@pytest.fixture
def cluster(store_factory, tmp_path):
    tuners = {}
    for name in ("shard-a-0", "shard-b-0"):
        # 8 MiB of 16 KiB pages (about 500): the models run at rate 1.
        store = store_factory(path=tmp_path / name, capacity_bytes=8 * 1024 * KiB, segment_bytes=256 * KiB)
        tuners[name] = StoreTuning(store, name)
    return TunedCluster(tuners)


def _reconcile(controller, times=1):
    for _ in range(times):
        controller._tuned_at = -float("inf")  # the period has passed
        controller.reconcile_once()


def test_a_scan_flood_moves_shards_to_second_touch_and_they_acknowledge_the_version(cluster, kit):
    controller = Controller(_config(), api=cluster)
    _reconcile(controller, 2)  # serving; first readings
    stores = {name: tuner._store for name, tuner in cluster.tuners.items()}
    for round_ in range(6):
        for seed, store in enumerate(stores.values()):
            _scan_flood(store, 1, seed, kit)
        _reconcile(controller)
    tunings = controller.tunings()
    for name, store in stores.items():
        assert store.config.admission_policy == "second_touch", tunings[name]
        assert tunings[name]["choice"].startswith("second_touch")
        assert tunings[name]["version"] > 0
        assert tunings[name]["acked_version"] == tunings[name]["version"] == cluster.tuners[name].version
        assert "errors" not in tunings[name]
    text = format_status(controller.status())
    for name in stores:
        assert f"{name} tuning: version {tunings[name]['version']} {tunings[name]['choice']} (applied)" in text
    assert not controller.status()["errors"]


def test_a_silent_shard_stalls_nothing_and_gets_its_tuning_when_it_answers(cluster, kit):
    controller = Controller(_config(), api=cluster)
    _reconcile(controller, 2)
    stores = [tuner._store for tuner in cluster.tuners.values()]
    for round_ in range(4):
        for seed, store in enumerate(stores):
            _scan_flood(store, 1, seed, kit)
        _reconcile(controller)
    cluster.down.add("shard-b-0")
    # Shard b restarts while silent: a new incarnation runs its configured default, version 0.
    b = cluster.tuners["shard-b-0"]
    b._store.apply_tuning(CANDIDATES["clock2"])
    b.version = 0
    _reconcile(controller, 3)  # b silent: no push reaches it, the loop goes on
    assert controller.tunings()["shard-a-0"]["acked_version"] == controller.tunings()["shard-a-0"]["version"]
    assert b._store.config.admission_policy == "admit_all"
    cluster.down.clear()
    _reconcile(controller)
    assert b._store.config.admission_policy == "second_touch"
    assert b.version == controller.tunings()["shard-b-0"]["version"]


def test_a_restarted_controller_adopts_what_the_shards_run(cluster, kit):
    first = Controller(_config(), api=cluster)
    _reconcile(first, 2)
    for round_ in range(5):
        for seed, tuner in enumerate(cluster.tuners.values()):
            _scan_flood(tuner._store, 1, seed, kit)
        _reconcile(first)
    before = first.tunings()
    assert all(tuning["version"] > 0 for tuning in before.values())
    pushes = len(cluster.pushes)
    second = Controller(_config(), api=cluster)  # the actor restarted: state from the shards
    _reconcile(second, 2)
    after = second.tunings()
    assert {name: (t["version"], t["choice"]) for name, t in after.items()} == \
        {name: (t["version"], t["choice"]) for name, t in before.items()}
    assert len(cluster.pushes) == pushes  # nothing pushed again
    # A push older than what a shard runs (a late one from the replaced controller) is ignored.
    tuner = cluster.tuners["shard-a-0"]
    ack = tuner.apply(CANDIDATES["fifo"], version=tuner.version - 1)
    assert ack["version"] == tuner.version and tuner._store.config.admission_policy == "second_touch"


def test_tuning_off_pushes_nothing(cluster, kit):
    controller = Controller(_config(tuning=False), api=cluster)
    _reconcile(controller, 2)
    for seed, tuner in enumerate(cluster.tuners.values()):
        _scan_flood(tuner._store, 5, seed, kit)
    _reconcile(controller, 3)
    assert controller.tunings() == {} and cluster.pushes == []


def test_a_shard_configured_with_none_of_the_candidates_is_not_tuned(store_factory, tmp_path, kit):
    store = store_factory(path=tmp_path / "p", capacity_bytes=8 * 1024 * KiB, segment_bytes=256 * KiB,
                          reinsertion_policy="prefix_aware")
    cluster = TunedCluster({"shard-p-0": StoreTuning(store, "shard-p-0")})
    controller = Controller(_config(), api=cluster)
    _reconcile(controller, 2)
    _scan_flood(store, 5, 0, kit)
    _reconcile(controller, 3)
    assert controller.tunings() == {} and store.config.reinsertion_policy == "prefix_aware"


def test_windows_too_small_to_judge_add_up_until_they_are_not(cluster, kit):
    """A shard whose models sample fewer references per period than tuning_min_references is tuned
    once its windows add up to enough; it used to be judged on none of them."""
    controller = Controller(_config(tuning_min_references=400), api=cluster)
    _reconcile(controller, 2)
    scan = (kit.key(("slow scan", i)) for i in _one_off)
    for seed, tuner in enumerate(cluster.tuners.values()):
        hot = [kit.key(("slow hot", seed, i)) for i in range(200)]
        for round_ in range(5):
            for start in range(0, len(hot), 20):  # about 80 sampled references per period
                _flood_through(tuner._store, hot[start:start + 20], scan)
                _reconcile(controller)
    tunings = controller.tunings()
    for name, tuner in cluster.tuners.items():
        assert tuner._store.config.admission_policy == "second_touch", tunings[name]
        assert tunings[name]["version"] == tuner.version > 0
