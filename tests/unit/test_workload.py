"""The workload generator writes Mooncake-format traces the replay reads, deterministic per seed,
with the reuse each shape promises."""

from __future__ import annotations

import pytest

from raylsm.bench import workload
from raylsm.bench.trace import load_trace
from raylsm.errors import ConfigError


def _requests(shape: str, count: int = 1500, seed: int = 0) -> list[dict]:
    return list(workload.generate(workload.WorkloadConfig(shape=shape, requests=count, seed=seed)))


def _reused_block_fraction(requests: list[dict]) -> float:
    seen, reused, total = set(), 0, 0
    for request in requests:
        for depth in range(len(request["hash_ids"])):
            prefix = tuple(request["hash_ids"][:depth + 1])
            reused += prefix in seen
            seen.add(prefix)
            total += 1
    return reused / total


@pytest.mark.parametrize("shape", workload.SHAPES)
def test_every_shape_writes_a_trace_the_replay_reads(tmp_path, shape):
    path = tmp_path / f"{shape}.jsonl"
    assert workload.write_trace(workload.WorkloadConfig(shape=shape, requests=300, seed=3), str(path)) == 300
    trace = load_trace(str(path))
    assert len(trace) == 300
    assert all(request.hash_ids[0] == 0 for request in trace)  # the shared system prompt
    assert [r.timestamp_ms for r in trace] == sorted(r.timestamp_ms for r in trace)
    assert all((len(r.hash_ids) - 1) * 512 < r.input_length <= len(r.hash_ids) * 512 for r in trace)


def test_the_same_seed_gives_the_same_trace_and_another_seed_another():
    assert _requests("mixed", 400, seed=7) == _requests("mixed", 400, seed=7)
    assert _requests("mixed", 400, seed=7) != _requests("mixed", 400, seed=8)


def test_each_shape_has_the_reuse_it_promises():
    agentic, docqa, scan, chat = (_reused_block_fraction(_requests(shape)) for shape in
                                  ("agentic", "docqa", "scan", "multiturn"))
    assert scan < 0.05  # one-off prompts: only the system block is reused
    assert agentic > 0.7 and docqa > 0.8  # long shared prefixes and documents
    assert 0.2 < chat < 0.8


def test_agentic_prefixes_are_zipf_popular():
    counts: dict[int, int] = {}
    for request in _requests("agentic", 3000):
        counts[request["hash_ids"][1]] = counts.get(request["hash_ids"][1], 0) + 1
    ranked = sorted(counts.values(), reverse=True)
    assert ranked[0] > 2 * ranked[len(ranked) // 2]  # one prefix is far hotter than the median


def test_multiturn_sessions_go_on_more_often_the_longer_they_are():
    config = workload.WorkloadConfig(shape="multiturn")
    import random

    rng = random.Random(0)
    session = workload._Session("multiturn", [0], 0)
    rates = {}
    for turn in (1, 10):
        session.turn = turn
        rates[turn] = sum(workload._continues(session, rng) for _ in range(4000)) / 4000
    assert 0.25 < rates[1] < 0.37 and 0.72 < rates[10] < 0.86
    assert config.validate() is config


def test_bad_configs_are_refused():
    with pytest.raises(ConfigError, match="shape"):
        workload.WorkloadConfig(shape="nope").validate()
    with pytest.raises(ConfigError, match="requests"):
        workload.WorkloadConfig(requests=0).validate()
