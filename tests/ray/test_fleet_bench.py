"""`raylsm bench fleet` end to end, small: two replica processes, two simulated Ray nodes, raylsm and
private HiCacheFile directories, with the fault schedule (kill -9 of a shard, a node removed and
back) during the raylsm run. Asserts what the benchmark exists to show and must never break: the
shared tier serves pages across replicas (private directories cannot), and faults under load reach
no caller as an exception or a wrong page."""

from __future__ import annotations

import pytest

from raylsm.bench import fleet
from raylsm.bench.trace import load_trace
from raylsm.bench.workload import WorkloadConfig, write_trace


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    trace = str(root / "multiturn.jsonl")
    write_trace(WorkloadConfig(shape="multiturn", requests=150, seed=3), trace)
    requests = load_trace(trace)
    duration = (requests[-1].timestamp_ms - requests[0].timestamp_ms) / 1000
    config = fleet.FleetConfig(trace_path=trace, replicas=2, nodes=2, speedup=duration / 8.0,
                               capacity_fraction=0.5, systems=("raylsm", "hicache_file_private"), faults=True,
                               data_dir=str(root / "data"))
    return fleet.run(config)


def _row(report, name):
    (row,) = [row for row in report["systems"] if row["system"] == name]
    return row


def test_the_shared_tier_serves_pages_one_replica_wrote_to_another(report):
    ours, private = _row(report, "raylsm"), _row(report, "hicache_file_private")
    assert ours["replica_failures"] == [] and private["replica_failures"] == []
    assert ours["requests"] == private["requests"] == report["requests"]
    assert ours["cross_replica_hit_pages"] > 0
    assert private["cross_replica_hit_pages"] == 0  # a private directory only holds what its replica wrote
    assert ours["hit_token_ratio"] > private["hit_token_ratio"]
    assert [item["replica"] for item in ours["per_replica"]] == [0, 1]


def test_faults_under_load_reach_no_caller(report):
    kinds = [event["kind"] for event in report["faults"]]
    assert kinds == ["kill_shard", "remove_node", "add_node"], report["faults"]
    killed, _removed, returned = report["faults"]
    assert killed["back_t_s"] is not None and killed["back_t_s"] >= killed["t_s"]  # Ray restarted the shard
    assert returned["back_t_s"] is not None  # the node's shard is back in the ring under its disk's name
    assert killed["hits_lost_after"] is not None  # measured against the same requests without faults
    for name in ("raylsm", "raylsm_faults", "hicache_file_private"):
        row = _row(report, name)
        assert row["errors"] == 0, row["error_samples"]
        assert row["wrong_pages"] == 0
