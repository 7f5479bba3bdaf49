"""`raylsm bench tier --clients`: the disk ceiling it is judged against and the aggregation of calls.

The client processes themselves run in the tier benchmark (`raylsm bench tier --clients C`); here the
parts whose arithmetic decides the reported figures."""

from __future__ import annotations

import os

import pytest

from raylsm.bench import tier_clients


def test_phase_throughput_is_bytes_over_the_wall_span_of_all_clients_calls():
    # Two clients, overlapping: 3 calls of 10 MB between t=0 and t=2 s -> 15 MB/s, not 30 or 10.
    calls = [(0.0, 1.0), (1.0, 2.0), (0.5, 1.5)]
    phase = tier_clients._phase(calls, 10_000_000)
    assert phase["gb_per_s"] == pytest.approx(0.015)
    assert phase["p50_ms"] == pytest.approx(1000.0)
    assert tier_clients._phase([], 1) == {"gb_per_s": None, "p50_ms": None, "p99_ms": None}


def test_disk_ceiling_reads_the_whole_file_both_ways_and_removes_it(tmp_path):
    drops = []
    page = 64 * 1024
    result = tier_clients.disk_ceiling(str(tmp_path), 300 * page, page, threads=3, drop_caches=lambda: drops.append(1))
    assert len(result["random_gb_per_s"]) == len(result["sequential_gb_per_s"]) == 2
    assert result["disk_ceiling_gb_per_s"] == max(result["random_gb_per_s"] + result["sequential_gb_per_s"]) > 0
    assert result["ceiling_threads"] == 3
    assert len(drops) == 4  # the page cache is dropped before every pass
    assert os.listdir(tmp_path) == []
