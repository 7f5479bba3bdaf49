"""What raylsm's metric classes export, against a fake `ray.util.metrics` (the `ray_metrics`
fixture, tests/unit/conftest.py): shard counters and gauges from a stats snapshot, the recovery a
store's open found, the disk headroom, client-side call durations, the controller's gauges."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

SHARD = {"shard": "tests-shard"}


def space(capacity=1000, disk=600, live=500):
    return {"capacity_bytes": capacity, "disk_bytes": disk, "live_bytes": live}


@pytest.fixture
def shard_metrics(ray_metrics):
    return ray_metrics.modules["raylsm.actors.metrics"].ShardMetrics("tests-shard"), ray_metrics.defined


def test_probes_export_hits_and_misses_and_same_node_reads_count_as_local_hits(shard_metrics):
    metrics, defined = shard_metrics
    metrics.sync({"seq": 1, "counters": {"probe_keys": 10, "probe_hits": 4, "gets_hit": 3, "gets_located": 5},
                  "space": space()})
    metrics.sync({"seq": 2, "counters": {"probe_keys": 16, "probe_hits": 9, "gets_hit": 3, "gets_located": 7},
                  "space": space()})
    probes = defined["raylsm_probe_pages_total"]
    assert probes.value(**SHARD, outcome="hit") == 9 and probes.value(**SHARD, outcome="miss") == 7
    gets = defined["raylsm_get_pages_total"]
    assert gets.value(**SHARD, outcome="hit") == 3 and gets.value(**SHARD, outcome="local_hit") == 7


def test_eviction_forwarding_exports_its_counters_by_outcome_and_never_counts_twice(shard_metrics):
    metrics, defined = shard_metrics
    metrics.sync_forwarding({"forwarded_pages": 10, "received_pages": 0, "forward_dropped_pages": 2,
                             "forwarded_reads": 3, "forward_target": "shard-b", "forward_pointers": 10})
    metrics.sync_forwarding({"forwarded_pages": 8, "forward_dropped_pages": 2, "forwarded_reads": 3})  # older
    metrics.sync_forwarding({"forwarded_pages": 25, "forward_dropped_pages": 2, "forwarded_reads": 7})
    forwarded = defined["raylsm_forwarded_pages_total"]
    assert forwarded.value(**SHARD, outcome="forwarded") == 25
    assert forwarded.value(**SHARD, outcome="dropped_queue_full") == 2
    assert forwarded.value(**SHARD, outcome="found_by_probe") == 7
    assert forwarded.value(**SHARD, outcome="received") is None


def test_shard_call_durations_are_exported_in_seconds(shard_metrics):
    metrics, defined = shard_metrics
    metrics.observe_call("get", 2.5)
    assert defined["raylsm_shard_call_duration_seconds"].value(**SHARD, op="get") == [0.0025]


def test_an_open_exports_its_recovery_and_the_disk_headroom_follows(shard_metrics, tmp_path):
    metrics, defined = shard_metrics
    metrics.sync({"seq": 1, "counters": {}, "space": space()})
    assert defined["raylsm_disk_headroom_bytes"].value(**SHARD) is None  # no path yet: nothing to read
    before = time.time()
    metrics.opened(str(tmp_path), SimpleNamespace(clean_shutdown=False, dropped_pointers=3, truncated_bytes=4096))
    assert defined["raylsm_recovery_clean_shutdown"].value(**SHARD) == 0
    assert defined["raylsm_recovery_dropped_pointers"].value(**SHARD) == 3
    assert defined["raylsm_recovery_truncated_bytes"].value(**SHARD) == 4096
    assert defined["raylsm_shard_start_time_seconds"].value(**SHARD) >= before

    found = os.statvfs(tmp_path)
    free = found.f_bavail * found.f_frsize
    metrics.sync({"seq": 2, "counters": {}, "space": space(capacity=1000, disk=600)})
    headroom = defined["raylsm_disk_headroom_bytes"].value(**SHARD)
    assert abs(headroom - (free - 400)) < 64 << 20, (headroom, free)  # other writers move free space a little
    # In a disk budget pool the pool's room counts: its members evict as one.
    metrics._filesystem_read_at = -1e9  # (read the file system again)
    metrics.sync({"seq": 3, "counters": {}, "space": space(capacity=1000, disk=600),
                  "pool": {"capacity_bytes": 3000, "disk_bytes": 1000}})
    assert abs(defined["raylsm_disk_headroom_bytes"].value(**SHARD) - (free - 2000)) < 64 << 20
    # A full budget leaves the free space as it is; over the budget counts as full.
    metrics.sync({"seq": 4, "counters": {}, "space": space(capacity=1000, disk=1100)})
    assert abs(defined["raylsm_disk_headroom_bytes"].value(**SHARD) - free) < 64 << 20


def test_the_file_system_is_read_at_most_once_a_period(ray_metrics, shard_metrics, tmp_path, monkeypatch):
    metrics, defined = shard_metrics
    module = ray_metrics.modules["raylsm.actors.metrics"]
    calls = []
    real = os.statvfs
    monkeypatch.setattr(module.os, "statvfs", lambda path: calls.append(path) or real(path))
    metrics.opened(str(tmp_path), SimpleNamespace(clean_shutdown=True, dropped_pointers=0, truncated_bytes=0))
    for seq in range(1, 50):
        metrics.sync({"seq": seq, "counters": {}, "space": space()})
    assert calls == [str(tmp_path)]
    assert defined["raylsm_recovery_clean_shutdown"].value(**SHARD) == 1


def test_client_metrics_time_sglang_calls_and_never_raise(ray_metrics):
    metrics = ray_metrics.modules["raylsm.actors.metrics"].ClientMetrics()
    metrics.observe_call("batch_exists", 0.004)
    metrics.observe_call("batch_exists", 0.002)
    assert ray_metrics.defined["raylsm_client_call_duration_seconds"].value(op="batch_exists") == [0.004, 0.002]
    metrics.observe_call("batch_get_v1", "not a number")  # the fake refuses it, as Ray would: not raised
    metrics.failed("s0", "probe", "timeout", 3)
    metrics.failed("s0", "probe", "timeout", 0)
    assert ray_metrics.defined["raylsm_client_failed_pages_total"].value(shard="s0", op="probe", cause="timeout") == 3


def test_the_controller_exports_shards_by_state_and_the_ring(ray_metrics):
    controller_metrics = ray_metrics.modules["raylsm.controller.metrics"]
    metrics = controller_metrics.ControllerMetrics()
    state = ray_metrics.defined["raylsm_controller_shard_state"]

    def status(**states):
        return {"ring_version": 7, "split_extents": 2, "errors": {},
                "shards": [{"shard": name, "state": value} for name, value in states.items()]}

    ring = {"version": 1_700_000_000_123, "shards": {"a": {}, "b": {}}, "splits": None}
    metrics.export(status(a="serving", b="unreachable"), ring)
    assert state.value(shard="a", state="serving") == 1 and state.value(shard="a", state="unreachable") == 0
    assert state.value(shard="b", state="unreachable") == 1
    assert {key for key, value in state.values.items() if value} == {
        (("shard", "a"), ("state", "serving")), (("shard", "b"), ("state", "unreachable"))}
    assert ray_metrics.defined["raylsm_controller_ring_version"].value() == 1_700_000_000_123
    assert ray_metrics.defined["raylsm_controller_ring_shards"].value() == 2
    assert ray_metrics.defined["raylsm_controller_split_extents"].value() == 2
    # b is forgotten (its node is gone), c reports a state this module does not list.
    metrics.export(status(a="failed", c="draining"), {**ring, "shards": {"a": {}}})
    assert all(state.value(shard="b", state=name) == 0 for name in controller_metrics.STATES)
    assert state.value(shard="a", state="failed") == 1 and state.value(shard="a", state="serving") == 0
    assert state.value(shard="c", state="draining") == 1 and state.value(shard="a", state="draining") == 0
    assert ray_metrics.defined["raylsm_controller_ring_shards"].value() == 1


def test_the_controller_counts_scale_events_once_each_across_exports(ray_metrics):
    metrics = ray_metrics.modules["raylsm.controller.metrics"].ControllerMetrics()
    ring = {"version": 3, "shards": {"a": {}}, "splits": None}

    def status(**counts):
        return {"split_extents": 0, "shards": [{"shard": "a", "state": "serving"}],
                "scale": {"target": 1, "standby": [], "event_counts": counts}}

    metrics.export(status(scale_out=1), ring)
    metrics.export(status(scale_out=1), ring)  # an export with nothing new adds nothing
    metrics.export(status(scale_out=3, scale_in=1), ring)
    events = ray_metrics.defined["raylsm_controller_scale_events_total"]
    assert events.value(kind="scale_out") == 3 and events.value(kind="scale_in") == 1
