"""Hit-ratio models of an L3 page cache at a fixed capacity: LRU and the offline optimum (Belady).

Owns the reference curves every hit-rate claim is measured against (DESIGN "Measuring"): replay a
trace's requests, each a list of page ids in chain order, through a cache of `capacity_pages` pages,
with prefix semantics: a page counts as a hit only if every earlier page of the request hit too, as
SGLang counts a prefix hit (it stops loading at the first missing page).

- LRU, write-all admission: a request reads its hit prefix (each hit becomes most recent), then every
  page from the first miss on is written after the request, in chain order, like SGLang's write-through
  backup; pages already stored are refreshed, the least recent pages are evicted.
- Belady: after each request keep the pages whose next use is soonest; the page evicted is the one used
  farthest in the future (never again = infinitely far), ties broken by evicting the deeper page first
  (under prefix semantics a deeper page is worthless without its shallower ones). A page is admitted
  only if it beats the farthest page held (bypass). Max-heap with lazy deletion: O(refs log capacity).

Called by benchmarks, the `raylsm` command and tests. Pure functions; each call builds its own state,
so calls are thread-safe. Page ids are any hashable values (block ids, 32-byte page hashes).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Sequence

from raylsm.errors import ConfigError

RequestPages = Sequence[Hashable]


@dataclass(frozen=True)
class ModelResult:
    policy: str
    capacity_pages: int
    hit_pages: int  # prefix-hit pages over the whole replay
    total_pages: int  # pages requested over the whole replay
    per_request_hits: tuple[int, ...]  # prefix-hit pages of each request, in trace order

    @property
    def hit_ratio(self) -> float:
        return self.hit_pages / self.total_pages if self.total_pages else 0.0


def distinct_pages(requests_pages: Sequence[RequestPages]) -> int:
    return len({page for pages in requests_pages for page in pages})


def capacity_for_fraction(requests_pages: Sequence[RequestPages], fraction: float) -> int:
    """Capacity (pages) holding `fraction` of the trace's distinct pages, rounded to nearest."""
    if not 0 < fraction:
        raise ConfigError(f"fraction must be > 0, got {fraction}")
    return max(1, round(fraction * distinct_pages(requests_pages)))


def best_possible_hit_ratio(requests_pages: Sequence[RequestPages]) -> float:
    """Hit ratio of an unbounded cache with prefix semantics (every re-use that stays a prefix hits)."""
    seen: set[Hashable] = set()
    hits = total = 0
    for pages in requests_pages:
        prefix = True
        for page in pages:
            if prefix and page in seen:
                hits += 1
            else:
                prefix = False
            seen.add(page)
        total += len(pages)
    return hits / total if total else 0.0


def _check_capacity(capacity_pages: int) -> None:
    if not isinstance(capacity_pages, int) or capacity_pages < 0:
        raise ConfigError(f"capacity_pages must be an int >= 0, got {capacity_pages!r}")


def simulate_lru(requests_pages: Sequence[RequestPages], capacity_pages: int) -> ModelResult:
    """LRU with write-all admission and prefix semantics (see the module docstring)."""
    _check_capacity(capacity_pages)
    cache: OrderedDict[Hashable, None] = OrderedDict()
    per_request: list[int] = []
    hit_pages = total_pages = 0
    for pages in requests_pages:
        hits = 0
        for page in pages:
            if page not in cache:
                break
            cache.move_to_end(page)
            hits += 1
        for page in pages[hits:]:
            if page in cache:
                cache.move_to_end(page)
            elif capacity_pages:
                cache[page] = None
                if len(cache) > capacity_pages:
                    cache.popitem(last=False)
        per_request.append(hits)
        hit_pages += hits
        total_pages += len(pages)
    return ModelResult("lru", capacity_pages, hit_pages, total_pages, tuple(per_request))


def _next_uses(requests_pages: Sequence[RequestPages]) -> tuple[list[list[int]], int]:
    """For every reference, the priority of the page's next use: request index * stride + position,
    or `never` (larger than any) if the page is not requested again."""
    stride = max((len(pages) for pages in requests_pages), default=0) + 1
    never = len(requests_pages) * stride + stride
    next_seen: dict[Hashable, int] = {}
    next_uses: list[list[int]] = [[]] * len(requests_pages)
    for index in range(len(requests_pages) - 1, -1, -1):
        pages = requests_pages[index]
        uses = [never] * len(pages)
        base = index * stride
        for position, page in enumerate(pages):
            uses[position] = next_seen.get(page, never)
        # A page listed twice in one request: the earlier listing's next use is this request.
        for position in range(len(pages) - 1, -1, -1):
            next_seen[pages[position]] = base + position
        next_uses[index] = uses
    return next_uses, never


def simulate_belady(requests_pages: Sequence[RequestPages], capacity_pages: int) -> ModelResult:
    """Offline optimum (farthest next use evicted, with bypass) under prefix semantics."""
    _check_capacity(capacity_pages)
    next_uses, never = _next_uses(requests_pages)
    priority: dict[Hashable, int] = {}  # cached page -> next use (the heap entry that is live)
    heap: list[tuple[int, Hashable]] = []  # (-next use, page); stale entries skipped when popped
    per_request: list[int] = []
    hit_pages = total_pages = 0
    for pages, uses in zip(requests_pages, next_uses):
        hits = 0
        for page in pages:
            if page not in priority:
                break
            hits += 1
        for page, use in zip(pages, uses):
            if page in priority:
                if use == never:
                    del priority[page]  # its heap entry goes stale: never used again, free the slot
                else:
                    priority[page] = use
                    heapq.heappush(heap, (-use, page))
                continue
            if use == never or not capacity_pages:
                continue  # bypass: a page never used again is farther than anything held
            if len(priority) >= capacity_pages:
                # Evict the farthest next use if it is farther than this page's, else bypass.
                while True:
                    farthest, victim = heap[0]
                    if priority.get(victim) == -farthest:
                        break
                    heapq.heappop(heap)
                if -farthest <= use:
                    continue
                heapq.heappop(heap)
                del priority[victim]
            priority[page] = use
            heapq.heappush(heap, (-use, page))
        # Keep the heap from growing without bound with stale entries.
        if len(heap) > 4 * capacity_pages + 1024:
            heap = [(-use, page) for page, use in priority.items()]
            heapq.heapify(heap)
        per_request.append(hits)
        hit_pages += hits
        total_pages += len(pages)
    return ModelResult("belady", capacity_pages, hit_pages, total_pages, tuple(per_request))


MODELS = {"lru": simulate_lru, "belady": simulate_belady}


def main(argv: Sequence[str] | None = None) -> None:
    """Print LRU and Belady hit ratios on the packaged trace at a few capacity fractions."""
    import argparse

    from raylsm.bench.trace import PageKeyCache, load_trace, request_blocks

    parser = argparse.ArgumentParser(description="LRU vs Belady hit ratios (prefix semantics)")
    parser.add_argument(
        "--page-tokens", type=int, default=None, help="full pages of this size (default: block ids)"
    )
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.10, 0.25])
    args = parser.parse_args(argv)
    trace = load_trace(limit=args.limit)
    if args.page_tokens is None:
        requests_pages = [request_blocks(request) for request in trace]
    else:
        requests_pages = PageKeyCache(args.page_tokens).all_pages(trace)
    print(f"best possible {best_possible_hit_ratio(requests_pages):.3f}")
    print(f"{'capacity':>10s} {'pages':>9s} {'lru':>6s} {'belady':>7s}")
    for fraction in args.fractions:
        capacity = capacity_for_fraction(requests_pages, fraction)
        lru = simulate_lru(requests_pages, capacity).hit_ratio
        belady = simulate_belady(requests_pages, capacity).hit_ratio
        print(f"{fraction:10.0%} {capacity:9d} {lru:6.3f} {belady:7.3f}")


if __name__ == "__main__":
    main()
