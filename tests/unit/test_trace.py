"""Trace loading (packaged file, slices, gzip, bad input) and the chained page keys of a request."""

from __future__ import annotations

import gzip
import json

import pytest

from raylsm.bench.trace import (
    MODEL_PROFILES,
    PageKeyCache,
    TraceRequest,
    load_trace,
    packaged_trace_path,
    page_bytes,
    request_blocks,
    request_page_count,
    request_pages,
)
from raylsm.errors import ConfigError


@pytest.fixture(scope="module")
def trace():
    return load_trace()


def test_packaged_trace_matches_its_published_facts(trace):
    assert packaged_trace_path().name.startswith("conversation_trace.jsonl")
    assert len(trace) == 12_031
    assert sum(len(request.hash_ids) for request in trace) == 288_500
    assert len({block for request in trace for block in request.hash_ids}) == 182_790
    assert all(request.hash_ids[0] == 0 for request in trace)
    assert trace[0] == TraceRequest(0, 6758, 500, tuple(range(14)))
    assert request_blocks(trace[0]) == list(range(14))


def test_limit_and_time_window(trace):
    assert load_trace(limit=10) == trace[:10]
    assert load_trace(limit=0) == []
    window = load_trace(time_window_s=60)
    assert window == trace[: len(window)]
    assert all(request.timestamp_ms <= 60_000 for request in window)
    assert trace[len(window)].timestamp_ms > 60_000
    assert load_trace(limit=5, time_window_s=3600) == trace[:5]
    with pytest.raises(ConfigError):
        load_trace(limit=-1)


def test_reads_gzip_and_reports_bad_lines(tmp_path):
    records = [
        {"timestamp": 5, "input_length": 1000, "output_length": 7, "hash_ids": [0, 1]},
        {"timestamp": 9, "input_length": 600, "output_length": 3, "hash_ids": [0, 2]},
    ]
    path = tmp_path / "t.jsonl.gz"
    with gzip.open(path, "wt") as out:
        out.write("\n".join(json.dumps(record) for record in records) + "\n\n")
    assert load_trace(path) == [TraceRequest(5, 1000, 7, (0, 1)), TraceRequest(9, 600, 3, (0, 2))]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(records[0]) + "\n" + '{"timestamp": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_trace(bad)


def test_request_pages_count_only_full_pages():
    request = TraceRequest(0, 1100, 1, (0, 1, 2))
    assert request_page_count(request, 64) == 17
    assert request_page_count(request, 512) == 2
    pages = request_pages(request, 64)
    assert len(pages) == 17 and all(len(page) == 32 for page in pages)
    assert len(set(pages)) == 17
    assert len(pages[0].hex()) == 64
    # Capped by the blocks when input_length claims more tokens than the blocks hold.
    assert request_page_count(TraceRequest(0, 5000, 1, (0,)), 64) == 8
    with pytest.raises(ConfigError):
        request_pages(request, 100)


def test_shared_block_prefix_means_shared_page_keys_and_then_divergence():
    first = request_pages(TraceRequest(0, 2048, 1, (0, 1, 2, 3)), 128)
    second = request_pages(TraceRequest(0, 2048, 1, (0, 1, 9, 3)), 128)
    assert first[:8] == second[:8]  # blocks 0 and 1: 2 x 4 pages
    assert not set(first[8:]) & set(second[8:])  # chained: block 3 after a different block differs
    # The same block id at another position (after another prefix) gives other keys.
    moved = request_pages(TraceRequest(0, 512, 1, (3,)), 128)
    assert not set(moved) & set(first)


def test_page_key_cache_matches_request_pages(trace):
    cache = PageKeyCache(64)
    for request in trace[:200]:
        assert cache.pages(request) == request_pages(request, 64)


def test_model_profiles_and_page_bytes():
    assert MODEL_PROFILES["llama-3.1-8b"].kv_bytes_per_token == 131072
    assert MODEL_PROFILES["qwen2.5-0.5b"].kv_bytes_per_token == 12288
    assert page_bytes("qwen2.5-0.5b", 64) == 64 * 12288
    assert page_bytes("llama-3.1-8b", 64, scale=1 / 64) == 131072
    with pytest.raises(ConfigError):
        page_bytes("no-such-model", 64)
    with pytest.raises(ConfigError):
        page_bytes("qwen2.5-0.5b", 64, scale=0)
