"""The pure parts of `raylsm bench trace`: the L1/L2 simulation, the plan, the TTFT model, the
report's JSON shape and table, the host pool and page payloads, and the per-request replay loop
driven against an in-memory fake backend. No Ray, no SGLang."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from raylsm.bench import trace_replay as tr
from raylsm.bench.trace import TraceRequest
from raylsm.errors import ConfigError

# ---- L1/L2 simulation -----------------------------------------------------------------------------


def test_host_cache_counts_leading_pages_only():
    cache = tr.HostCacheSim(100)
    assert cache.access(["a", "b", "c"]) == 0
    assert cache.access(["a", "b", "c", "d"]) == 3
    assert cache.access(["x", "b", "c"]) == 0  # b and c are held, but not as a prefix


def test_host_cache_evicts_deep_pages_of_old_chains_first():
    cache = tr.HostCacheSim(4)
    cache.access(["a", "b", "c"])
    cache.access(["x", "y"])  # 5 pages: the deepest page of the older chain goes
    assert "c" not in cache and "a" in cache and "b" in cache
    assert cache.access(["a", "b", "c"]) == 2


def test_host_cache_keeps_the_prefix_of_a_chain_longer_than_capacity():
    cache = tr.HostCacheSim(2)
    cache.access(list("abcdef"))
    assert len(cache) == 2
    assert cache.access(list("abcdef")) == 2


def test_host_cache_of_zero_capacity_holds_nothing():
    cache = tr.HostCacheSim(0)
    cache.access(["a"])
    assert cache.access(["a"]) == 0
    with pytest.raises(ConfigError):
        tr.HostCacheSim(-1)


def _request(timestamp_ms, blocks, tokens=None):
    return TraceRequest(timestamp_ms, tokens if tokens is not None else 512 * len(blocks), 10, tuple(blocks))


def test_make_plan_streams_skip_the_host_hits():
    trace = [_request(1000, [0, 1]), _request(3000, [0, 1, 2]), _request(4000, [5], tokens=100)]
    plan = tr.make_plan(trace, page_tokens=256, host_cache_fraction=1.0)
    assert plan.arrival_s == [0.0, 2.0, 3.0]
    assert [len(chain) for chain in plan.chains] == [4, 6, 0]  # 100 tokens: no full page
    assert plan.distinct_pages == 6
    assert plan.host_hit_pages == [0, 4, 0]
    assert plan.asked_pages() == [4, 2, 0]
    assert plan.l3_streams()[1] == plan.chains[1][4:]


# ---- TTFT model, percentiles, sizing --------------------------------------------------------------


def test_ttft_is_prefill_of_missed_tokens_plus_load_time():
    assert tr.ttft_ms(10_000, 0, 0.0, 10_000) == pytest.approx(1000.0)
    assert tr.ttft_ms(10_000, 6_000, 25.0, 10_000) == pytest.approx(425.0)
    assert tr.ttft_ms(100, 128, 3.0, 10_000) == pytest.approx(3.0)  # never negative prefill


def test_percentile_interpolates_and_handles_empty():
    assert tr.percentile([], 50) is None
    assert tr.percentile([5.0], 99) == 5.0
    assert tr.percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert tr.percentile(list(range(101)), 99) == pytest.approx(99.0)


def test_segment_bytes_hold_two_segments_and_a_page():
    assert tr.segment_bytes_for(256 << 20, 48 << 10) == (256 << 20) // tr.SEGMENTS_PER_SHARD
    assert tr.segment_bytes_for(256 << 20, 48 << 10) == 1 << 20  # 256 segments a shard
    assert tr.segment_bytes_for(8 << 20, 48 << 10) == 256 << 10  # at least the store's minimum
    assert tr.segment_bytes_for(8 << 20, 3 << 20) % 4096 == 0
    assert tr.segment_bytes_for(8 << 20, 3 << 20) > 3 << 20  # at least a page
    with pytest.raises(ConfigError):
        tr.segment_bytes_for(256 << 10, 4096)


def test_pool_shape_scales_head_dim_or_falls_back_to_bytes():
    shape = tr.pool_shape("qwen2.5-0.5b", 64, 1 / 16)
    assert (shape.layer_num, shape.head_num, shape.head_dim, shape.dtype_name) == (24, 2, 4, "bfloat16")
    assert shape.page_bytes == 48 * 1024
    odd = tr.pool_shape("llama-3.1-8b", 64, 1 / 1000)
    assert odd.dtype_name == "uint8" and odd.page_bytes % 8 == 0 and odd.page_bytes > 0


def test_config_validation_names_the_flag():
    with pytest.raises(ConfigError, match="--systems"):
        tr.ReplayConfig(systems=("raylsm", "nope")).validate()
    with pytest.raises(ConfigError, match="--capacity-fraction"):
        tr.ReplayConfig(capacity_fraction=0).validate()
    with pytest.raises(ConfigError, match="--page-cache"):
        tr.ReplayConfig(page_cache="lukewarm").validate()


# ---- report ---------------------------------------------------------------------------------------


def _plan():
    trace = [_request(0, [0, 1]), _request(1000, [0, 1, 2])]
    return tr.make_plan(trace, page_tokens=256, host_cache_fraction=0.0)


def _runs(plan):
    raylsm = tr.SystemRun("raylsm", True, l3_hit_pages=[0, 4], load_ms=[1.0, 3.0], exists_ms=[0.5, 0.7],
                          get_ms=[2.0], put_ms=[4.0, 6.0], get_bytes=4 * 1000, shards_per_call=[1, 2])
    hicache = tr.SystemRun("hicache_file", True, l3_hit_pages=[0, 3], load_ms=[1.0, 9.0], exists_ms=[0.1],
                           get_ms=[8.0], put_ms=[3.0], get_bytes=3 * 1000)
    lru = tr.SystemRun("lru_model", False, l3_hit_pages=[0, 2])
    lru_sharded = tr.SystemRun("lru_sharded_model", False, l3_hit_pages=[0, 1])
    belady = tr.SystemRun("belady_optimal", False, l3_hit_pages=[0, 4])
    return [raylsm, hicache, lru, lru_sharded, belady]


def test_summarize_defines_hit_ratio_over_l3_asks():
    plan = _plan()
    raylsm = tr.summarize(_runs(plan)[0], plan, 10_000)
    assert raylsm["l3_asked_tokens"] == 10 * 256
    assert raylsm["hit_token_ratio"] == pytest.approx(0.4)
    assert raylsm["prompt_hit_token_ratio"] == pytest.approx(4 * 256 / (2 * 512 + 3 * 512))
    assert raylsm["get_p50_ms"] == 2.0 and raylsm["put_p99_ms"] == pytest.approx(5.98)
    expected_ttft = [1024 / 10_000 * 1e3 + 1.0, (1536 - 1024) / 10_000 * 1e3 + 3.0]
    assert raylsm["ttft_model_ms_mean"] == pytest.approx(sum(expected_ttft) / 2, abs=1e-3)
    lru = tr.summarize(_runs(plan)[2], plan, 10_000)
    assert lru["get_p50_ms"] is None and lru["read_gb_per_s"] is None and lru["measured"] is False


def test_report_has_the_issue_keys_and_ratios():
    plan = _plan()
    rows = [tr.summarize(run, plan, 10_000) for run in _runs(plan)]
    report = tr.build_report(rows, requests=len(plan), capacity_bytes=123, shards=4, balance_max_over_mean=1.05,
                             shards_per_batch_mean=1.5, details={"hit_ratio_definition": tr.HIT_RATIO_DEFINITION})
    for key in ("systems", "balance_max_over_mean", "shards_per_batch_mean", "requests", "capacity_bytes", "shards"):
        assert key in report
    assert [row["system"] for row in report["systems"]] == list(tr.SYSTEMS)
    for row in report["systems"]:
        for key in ("system", "hit_token_ratio", "get_p50_ms", "get_p99_ms", "put_p50_ms", "put_p99_ms",
                    "ttft_model_ms_mean"):
            assert key in row
    ratios = report["ratios"]
    assert ratios["raylsm_over_hicache_file_hit_token_ratio"] == pytest.approx(4 / 3, abs=1e-3)
    assert ratios["goal_hit_ratio_met"] and ratios["goal_get_p99_met"]
    assert ratios["raylsm_lru_to_belady"] == pytest.approx(1.0)
    assert ratios["hicache_file_lru_to_belady"] == pytest.approx(0.5)
    json.dumps(report)  # serialisable as it is
    text = tr.format_report(report)
    for name in tr.SYSTEMS:
        assert name in text
    assert "goal" in text and "hit ratio definition" in text


def test_rolling_ratio_and_mean():
    assert tr.rolling([1, 1, 0, 0], [1, 1, 1, 1], 2) == [1.0, 1.0, 0.5, 0.0]
    assert tr.rolling([2, 4, 6], None, 2) == [2.0, 3.0, 5.0]


def test_arguments_build_a_config():
    parser = tr.add_trace_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--quick", "--shards", "2", "--capacity-fraction", "0.05", "--payload-scale", "1/32",
                              "--systems", "raylsm,lru_model", "--raylsm-extra-config", '{"virtual_nodes": 64}'])
    config = tr.config_from_args(args).validate()
    assert config.quick and config.shards == 2 and config.capacity_fraction == 0.05
    assert config.payload_scale == pytest.approx(1 / 32)
    assert config.systems == ("raylsm", "lru_model")
    assert dict(config.raylsm_extra_config) == {"virtual_nodes": 64}
    assert config.page_cache == "cold"
    assert tr.config_from_args(parser.parse_args(["--page-cache", "warm"])).page_cache == "warm"
    with pytest.raises(SystemExit):
        parser.parse_args(["--page-cache", "lukewarm"])


def test_models_only_run_needs_no_tier(capsys, tmp_path):
    trace_path = tmp_path / "trace.jsonl"
    with open(trace_path, "w") as out:
        for index in range(6):
            out.write(json.dumps({"timestamp": index * 100, "input_length": 1024, "output_length": 1,
                                  "hash_ids": [0, index % 2]}) + "\n")
    config = tr.ReplayConfig(trace_path=str(trace_path), page_tokens=256, systems=("lru_model", "belady_optimal"),
                             capacity_fraction=1.0, host_cache_fraction=0.0, json_path=str(tmp_path / "r.json"),
                             progress=False)
    report = tr.run(config)
    assert report["requests"] == 6
    written = json.loads((tmp_path / "r.json").read_text())
    assert [row["system"] for row in written["systems"]] == ["lru_model", "belady_optimal"]
    assert written["systems"][1]["hit_token_ratio"] > 0
    assert "belady_optimal" in capsys.readouterr().out


# ---- host pool, payloads and the replay loop (torch, no SGLang) -----------------------------------

torch = pytest.importorskip("torch")
from raylsm.bench.host_pool import MiniHostKVPool, PagePattern  # noqa: E402


def _pool(pages=8, page_size=4):
    return MiniHostKVPool(pages * page_size, page_size, layer_num=2, head_num=1, head_dim=4)


def test_page_buffer_meta_matches_sglang_page_first():
    pool = _pool()
    indices = pool.host_indices([3, 0])
    pointers, sizes = pool.get_page_buffer_meta(indices)
    part = 2 * 4 * 1 * 4 * 2  # layers x page x heads x head_dim x bf16
    assert sizes == [part] * 4 and pool.part_bytes == part
    base = pool.kv_buffer.data_ptr()
    v_offset = 2 * pool.size * 1 * 4 * 2
    assert pointers == [base + 3 * 4 * 2 * 4 * 2, base + 3 * 4 * 2 * 4 * 2 + v_offset, base, base + v_offset]
    assert base % 4096 == 0
    assert pool.get_size_per_token() * pool.page_size == pool.page_bytes


def test_flat_pages_round_trip_through_the_generic_path():
    pool = _pool()
    pattern = PagePattern(pool.page_bytes)
    keys = [bytes([index]) * 32 for index in range(3)]
    pattern.fill(pool, [1, 2, 5], keys)
    flat = pool.get_data_page(5 * pool.page_size).clone()
    pattern.poison(pool, [5])
    assert pattern.wrong_pages(pool, [5], keys[2:]) == 1
    pool.set_from_flat_data_page(5 * pool.page_size, flat)
    assert pattern.wrong_pages(pool, [1, 2, 5], keys) == 0
    assert pool.get_dummy_flat_data_page().numel() == flat.numel()


def test_page_pattern_starts_with_the_key_and_differs_per_key():
    pattern = PagePattern(64)
    pages = pattern.pages([b"\x01" * 32, b"\x02" * 32])
    assert bytes(pages[0, :8]) == b"\x01" * 8
    assert (pages[0] != pages[1]).all()


class FakeBackend:
    """An in-memory L3 with the replay's system interface, recording every call."""

    name = "fake"

    def __init__(self, pool, corrupt=False, fail_set_after=None):
        self.pool = pool
        self.pages: dict[str, bytes] = {}
        self.calls: list[tuple] = []
        self.corrupt = corrupt
        self.fail_set_after = fail_set_after

    def exists(self, keys, prefix):
        self.calls.append(("exists", len(keys), len(prefix)))
        count = 0
        for key in keys:
            if key not in self.pages:
                break
            count += 1
        return count

    def get(self, keys, prefix, slots):
        self.calls.append(("get", len(keys), len(prefix)))
        for count, (key, slot) in enumerate(zip(keys, slots)):
            if key not in self.pages:
                return count
            data = bytearray(self.pages[key])
            if self.corrupt:
                data[-1] ^= 0xFF
            half = self.pool.part_bytes
            self.pool.page_parts[0, slot] = np.frombuffer(bytes(data[:half]), dtype=np.uint8)
            self.pool.page_parts[1, slot] = np.frombuffer(bytes(data[half:]), dtype=np.uint8)
        return len(keys)

    def set(self, keys, prefix, slots):
        self.calls.append(("set", len(keys), len(prefix)))
        if self.fail_set_after is not None and len(self.pages) >= self.fail_set_after:
            return False
        for key, slot in zip(keys, slots):
            self.pages[key] = bytes(self.pool.page_parts[0, slot]) + bytes(self.pool.page_parts[1, slot])
        return True


def _chain(pages):
    return [bytes([index % 256, index // 256]) * 16 for index in range(pages)]


def _replay_setup(chain_pages, **backend_options):
    """A 256-slot pool, its pattern and slot picker, a fake backend, a chain (bytes and hex), a run."""
    pool = _pool(pages=256, page_size=1)
    chain = _chain(chain_pages)
    return (pool, PagePattern(pool.page_bytes), tr.SlotPicker(pool.page_slots, 0),
            FakeBackend(pool, **backend_options), chain, [page.hex() for page in chain], tr.SystemRun("fake", True))


def test_replay_request_chunks_like_hicache_and_verifies():
    pool, pattern, picker, backend, chain, chain_hex, run = _replay_setup(300)
    tr.replay_request(backend, run, chain, chain_hex, 10, pattern, picker)  # cold: all misses
    assert run.l3_hit_pages == [0]
    assert [call for call in backend.calls if call[0] == "set"] == [("set", 128, 10), ("set", 128, 138),
                                                                      ("set", 34, 266)]
    backend.calls.clear()
    tr.replay_request(backend, run, chain, chain_hex, 10, pattern, picker)  # warm: all hits, verified
    assert run.l3_hit_pages == [0, 290] and run.wrong_pages == 0
    assert [call for call in backend.calls if call[0] == "exists"] == [("exists", 128, 10), ("exists", 128, 138),
                                                                        ("exists", 34, 266)]
    assert [call for call in backend.calls if call[0] == "get"] == [("get", 128, 10), ("get", 128, 138),
                                                                     ("get", 34, 266)]
    assert not [call for call in backend.calls if call[0] == "set"]
    assert run.get_bytes == 290 * pool.page_bytes and len(run.load_ms) == 2


def test_replay_request_stops_exists_at_a_short_chunk_and_backs_up_the_rest():
    pool, pattern, picker, backend, chain, chain_hex, run = _replay_setup(300)
    tr.replay_request(backend, run, chain[:50], chain_hex[:50], 0, pattern, picker)
    backend.calls.clear()
    tr.replay_request(backend, run, chain, chain_hex, 0, pattern, picker)
    assert run.l3_hit_pages[-1] == 50
    assert [call[0] for call in backend.calls] == ["exists", "get", "set", "set"]
    assert backend.calls[2] == ("set", 128, 50)


def test_replay_request_counts_wrong_bytes_and_failed_backups():
    pool, pattern, picker, backend, chain, chain_hex, run = _replay_setup(200, fail_set_after=128)
    tr.replay_request(backend, run, chain, chain_hex, 0, pattern, picker)
    assert run.failed_put_chunks == 1 and len(backend.pages) == 128
    backend.corrupt = True
    tr.replay_request(backend, run, chain, chain_hex, 0, pattern, picker)
    assert run.l3_hit_pages[-1] == 128 and run.wrong_pages == 128


def test_conversation_sample_keeps_whole_conversations():
    trace = [_request(index, [0, conversation, turn]) for index, (conversation, turn) in
             enumerate((c, t) for t in range(3) for c in range(400))]
    assert tr.sample_conversations(trace, 1.0) == trace
    kept = tr.sample_conversations(trace, 0.25)
    conversations = {tr.conversation_of(request) for request in kept}
    assert len(kept) == 3 * len(conversations)  # every turn of a kept conversation
    assert 50 < len(conversations) < 150
    assert kept == tr.sample_conversations(trace, 0.25)  # deterministic
    assert kept != tr.sample_conversations(trace, 0.25, salt=1)
    assert tr.conversation_of(_request(0, [7])) == 7
