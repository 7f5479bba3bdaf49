"""LRU and Belady hit-ratio models: prefix semantics, optimality on small cases, the design's figures."""

from __future__ import annotations

import random

import pytest

from raylsm.bench.cache_models import (
    MODELS,
    best_possible_hit_ratio,
    capacity_for_fraction,
    distinct_pages,
    simulate_belady,
    simulate_lru,
)
from raylsm.bench.trace import load_trace, request_blocks
from raylsm.errors import ConfigError


@pytest.mark.parametrize("model", sorted(MODELS))
def test_prefix_semantics(model):
    simulate = MODELS[model]
    # "b" is stored by the first request, but the second misses "a" first: no prefix hit.
    result = simulate([["b"], ["a", "b"], ["a", "b", "c"]], capacity_pages=10)
    assert result.per_request_hits == (0, 0, 2)
    assert result.hit_pages == 2 and result.total_pages == 6
    assert result.hit_ratio == pytest.approx(2 / 6)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_zero_capacity_and_empty_trace(model):
    simulate = MODELS[model]
    assert simulate([["a"], ["a"]], 0).hit_pages == 0
    empty = simulate([], 5)
    assert empty.hit_ratio == 0.0 and empty.per_request_hits == ()
    with pytest.raises(ConfigError):
        simulate([["a"]], -1)


def test_lru_evicts_least_recent():
    requests = [["a"], ["b"], ["a"], ["c"], ["b"], ["a"]]
    # capacity 2: after c, LRU holds {a, c} (b was least recent), so b misses and evicts a.
    assert simulate_lru(requests, 2).per_request_hits == (0, 0, 1, 0, 0, 0)


def _optimal_hits(requests: list[str], capacity: int) -> int:
    """Exhaustive optimum for one page per request, with bypass: DP over cache contents."""
    states = {frozenset(): 0}
    for page in requests:
        following: dict[frozenset, int] = {}
        for cache, hits in states.items():
            if page in cache:
                options = [(cache, hits + 1)]
            else:
                options = [(cache, hits)]
                if len(cache) < capacity:
                    options.append((cache | {page}, hits))
                else:
                    options.extend(((cache - {victim}) | {page}, hits) for victim in cache)
            for state, value in options:
                if following.get(state, -1) < value:
                    following[state] = value
        states = following
    return max(states.values())


def test_belady_is_optimal_for_single_page_requests():
    rng = random.Random(7)
    for _ in range(150):
        capacity = rng.randint(1, 3)
        requests = [rng.choice("abcdef") for _ in range(rng.randint(1, 14))]
        belady = simulate_belady([[page] for page in requests], capacity)
        assert belady.hit_pages == _optimal_hits(requests, capacity), (requests, capacity)


def test_belady_bounds_on_random_prefix_traces():
    rng = random.Random(11)
    requests = []
    for _ in range(300):
        root = rng.randint(0, 20)
        requests.append([(root, depth) for depth in range(rng.randint(1, 6))])
    best = best_possible_hit_ratio(requests)
    for capacity in (5, 20, 60):
        belady = simulate_belady(requests, capacity)
        lru = simulate_lru(requests, capacity)
        assert lru.hit_ratio <= belady.hit_ratio <= best
        assert sum(belady.per_request_hits) == belady.hit_pages
    assert simulate_belady(requests, distinct_pages(requests)).hit_ratio == pytest.approx(best)
    assert simulate_lru(requests, distinct_pages(requests)).hit_ratio == pytest.approx(best)


@pytest.fixture(scope="module")
def blocks():
    return [request_blocks(request) for request in load_trace()]


def test_design_figures_at_block_level(blocks):
    """DESIGN.md, Measuring: best 0.366; LRU 0.195 / 0.278 / 0.353 and Belady 0.366 at 5 / 10 / 25 %."""
    assert distinct_pages(blocks) == 182_790
    assert best_possible_hit_ratio(blocks) == pytest.approx(0.366, abs=0.001)
    expected = {0.05: 0.195, 0.10: 0.278, 0.25: 0.353}
    for fraction, lru_ratio in expected.items():
        capacity = capacity_for_fraction(blocks, fraction)
        lru = simulate_lru(blocks, capacity)
        belady = simulate_belady(blocks, capacity)
        assert lru.hit_ratio == pytest.approx(lru_ratio, abs=0.01)
        assert belady.hit_ratio == pytest.approx(0.366, abs=0.01)
        assert len(lru.per_request_hits) == len(blocks) and lru.total_pages == 288_500
