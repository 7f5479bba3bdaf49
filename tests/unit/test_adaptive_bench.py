"""`raylsm bench adaptive` without Ray: its four-phase workload, its configurations, the goals it
checks and the report it prints (the runs themselves are Ray tiers; see docs/controller.md)."""

from __future__ import annotations

import pytest

from raylsm.bench import adaptive
from raylsm.bench.adaptive import AdaptiveConfig, build_workload, config_names, tier_settings
from raylsm.bench.adaptive_report import PHASES, format_report, goals
from raylsm.bench.replay import make_plan
from raylsm.errors import ConfigError
from raylsm.store.mini_sims import CANDIDATES


@pytest.fixture(scope="module")
def workload():
    config = AdaptiveConfig(sample_rate=1 / 64)
    requests, phases = build_workload(config)
    return config, requests, phases


def test_the_phases_come_in_order_with_their_own_blocks(workload):
    config, requests, phases = workload
    assert phases == sorted(phases) and set(phases) == set(range(len(PHASES)))
    assert [r.timestamp_ms for r in requests] == sorted(r.timestamp_ms for r in requests)
    scan_blocks = {b for r, p in zip(requests, phases) if p == 1 for b in r.hash_ids if b >= adaptive.SCAN_IDS}
    agent_blocks = {b for r, p in zip(requests, phases) if p == 2 for b in r.hash_ids}
    chat_blocks = {b for r, p in zip(requests, phases) if p in (0, 3) for b in r.hash_ids}
    assert scan_blocks and all(adaptive.SCAN_IDS <= b < 2 * adaptive.SCAN_IDS for b in scan_blocks)
    assert all(b >= 2 * adaptive.SCAN_IDS for b in agent_blocks)
    assert all(b < adaptive.SCAN_IDS for b in chat_blocks)


def test_the_scan_writes_several_times_what_chat_writes_and_is_never_asked_again(workload):
    config, requests, phases = workload
    plan = make_plan(requests, config.page_tokens, 0.0)
    seen: set = set()
    written = {"chat": 0, "scan": 0}
    for request, chain, phase in zip(requests, plan.chains, phases):
        is_scan = request.hash_ids[0] >= adaptive.SCAN_IDS
        for page in chain:
            if page not in seen:
                seen.add(page)
                if phase == 1:
                    written["scan" if is_scan else "chat"] += 1
    assert written["scan"] >= 2 * config.scan_ratio / 3 * written["chat"]
    # A scan prompt shares only its first block (a system prompt) with the others.
    scans = [r for r, p in zip(requests, phases) if p == 1 and r.hash_ids[0] >= adaptive.SCAN_IDS]
    tails = [set(r.hash_ids[1:]) for r in scans]
    assert all(not (a & b) for i, a in enumerate(tails) for b in tails[i + 1:])


def test_every_candidate_runs_as_a_static_configuration_and_the_controller_tunes():
    names = config_names()
    assert names[:2] == ["controller", "static_default"]
    static = {name.removeprefix("static_") for name in names[2:]}
    assert static | {"clock2"} == set(CANDIDATES)  # clock2 is the default's
    store, controller = tier_settings("controller", 2.0)
    assert store == {} and controller == {"tuning": True, "tuning_period_s": 2.0}
    store, controller = tier_settings("static_second_touch_clock1", 2.0)
    assert store == CANDIDATES["second_touch_clock1"] and controller == {"tuning": False}
    with pytest.raises(ConfigError, match="unknown"):
        AdaptiveConfig(configs=("static_lru",)).validate()


def _run(name, phase_hits, ttft, balance=1.2):
    figures = [{"hit_token_ratio": hit, "ttft_model_ms_mean": ttft, "get_p99_ms": 1.0,
                "balance_max_over_mean": balance} for hit in phase_hits]
    return {"config": name, "per_phase": figures,
            "overall": {"hit_token_ratio": sum(phase_hits) / len(phase_hits), "ttft_model_ms_mean": ttft,
                        "get_p99_ms": 1.0, "balance_max_over_mean": balance}}


def test_goals_compare_the_controller_with_the_best_static_configuration_per_phase_and_overall():
    report = {"phases": list(PHASES), "runs": [
        _run("controller", [0.20, 0.10, 0.30, 0.20], 90.0),
        _run("static_default", [0.20, 0.02, 0.30, 0.18], 100.0),
        _run("static_second_touch_clock1", [0.10, 0.11, 0.20, 0.15], 105.0, balance=2.0)]}
    result = goals(report)
    assert result["overall_hit_vs_best_static"]["met"]
    assert [item["met"] for item in result["per_phase_within_5pct_of_best_static"]] == [True, False, True, True]
    assert result["ttft_10pct_below_static_default"]["met"] and result["ttft_10pct_below_static_default"]["ratio"] == 0.9
    assert result["agents_balance_at_most_1.5"]["met"]
    report["runs"][0] = _run("controller", [0.19, 0.12, 0.29, 0.20], 95.0, balance=1.6)
    result = goals(report)
    assert not result["ttft_10pct_below_static_default"]["met"]
    assert not result["agents_balance_at_most_1.5"]["met"]
    text = format_report({**report, "goals": result, "models": []})
    assert text.splitlines()[2].startswith("controller") and '"met": false' in text
