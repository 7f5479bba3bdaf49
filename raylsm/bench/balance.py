"""Balance of stored bytes across shards, and fan-out per request, for an extent routing scheme.

Owns the offline simulation behind DESIGN's "locality fights balance" figures: route every distinct
page of a trace once (the bytes each shard stores) and count the shards each request's prompt touches.
Called by benchmarks, the `raylsm` command and tests; pure Python over the router, no Ray, no store.
Single-threaded; every call builds its own state.

Measured on the packaged conversation trace (12,031 requests), 8 shards x 128 virtual nodes, 64-token
pages (`python -m raylsm.bench.balance`; design figures, another hash, in brackets):

    scheme                                  stored max/mean      shards per request
    plain extents of   512 tokens            1.10  [1.07]          5.85  [5.9]
    plain extents of  1024 tokens            1.23  [1.32]          4.72  [4.8]
    plain extents of  2048 tokens            1.69  [1.78]          3.55  [3.6]
    plain extents of  8192 tokens            3.87  [4.01]          1.76  [1.8]
    whole prompt by its first page           8.00  [8.00]          1.00  [1.0]
    512-token head + 2048-token extents      1.09                  4.02
    512-token head + 4096-token extents      1.09                  3.17
    512-token head + 8192-token extents      1.06                  2.52   (router default)
    512-token head + 16384-token extents     1.06                  2.13
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from raylsm.bench.trace import PageKeyCache, TraceRequest, load_trace
from raylsm.router import ExtentConfig, HashRing, routing_key
from raylsm.store.page_key import namespace_id as make_namespace_id


@dataclass(frozen=True)
class BalanceResult:
    max_over_mean_stored_bytes: float  # the fullest shard's stored bytes / the mean over shards
    mean_shards_per_request: float  # distinct shards a request's full prompt pages route to
    stored_pages_per_shard: dict[str, int]
    distinct_pages: int


def default_shards(count: int) -> list[str]:
    return [f"shard-{index}" for index in range(count)]


def simulate_balance_result(
    trace: Sequence[TraceRequest],
    shards: int | Sequence[str] = 8,
    virtual_nodes: int = 128,
    extent_pages: int | ExtentConfig | None = None,
    page_tokens: int = 64,
    namespace: str = "bench",
    page_cache: PageKeyCache | None = None,
) -> BalanceResult:
    """Route every distinct page of `trace` once; count stored pages per shard and shards per request.

    `extent_pages`: an ExtentConfig, an int for plain extents of that many pages, or None for the
    router's default ExtentConfig. All pages have the same size, so stored bytes are proportional to
    stored pages. `page_cache` (for `page_tokens`) may be shared between calls to hash the trace once.
    """
    if extent_pages is None:
        extents = ExtentConfig()
    elif isinstance(extent_pages, ExtentConfig):
        extents = extent_pages
    else:
        extents = ExtentConfig.plain(extent_pages)
    shard_names = default_shards(shards) if isinstance(shards, int) else list(shards)
    ring = HashRing(shard_names, virtual_nodes)
    namespace_id = make_namespace_id(namespace)
    if page_cache is None or page_cache.page_tokens != page_tokens:
        page_cache = PageKeyCache(page_tokens)

    shard_of_anchor: dict[bytes, str] = {}
    shard_of_page: dict[bytes, str] = {}
    touched_total = 0
    anchor_depth = extents.anchor_depth
    for request in trace:
        chain = page_cache.pages(request)
        touched: set[str] = set()
        for depth, page in enumerate(chain):
            shard = shard_of_page.get(page)
            if shard is None:
                anchor = chain[anchor_depth(depth)]
                shard = shard_of_anchor.get(anchor)
                if shard is None:
                    shard = shard_of_anchor[anchor] = ring.shard_for(routing_key(namespace_id, anchor))
                shard_of_page[page] = shard
            touched.add(shard)
        touched_total += len(touched)

    per_shard = Counter({name: 0 for name in shard_names})
    per_shard.update(shard_of_page.values())
    mean = sum(per_shard.values()) / len(shard_names)
    return BalanceResult(
        max_over_mean_stored_bytes=max(per_shard.values()) / mean if mean else 0.0,
        mean_shards_per_request=touched_total / len(trace) if trace else 0.0,
        stored_pages_per_shard=dict(per_shard),
        distinct_pages=len(shard_of_page),
    )


def simulate_balance(
    trace: Sequence[TraceRequest],
    shards: int | Sequence[str] = 8,
    virtual_nodes: int = 128,
    extent_pages: int | ExtentConfig | None = None,
    page_tokens: int = 64,
    **options,
) -> tuple[float, float]:
    """(max/mean stored bytes, mean shards touched per request); see `simulate_balance_result`."""
    result = simulate_balance_result(trace, shards, virtual_nodes, extent_pages, page_tokens, **options)
    return result.max_over_mean_stored_bytes, result.mean_shards_per_request


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page-tokens", type=int, default=64)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--virtual-nodes", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    trace = load_trace(limit=args.limit)
    cache = PageKeyCache(args.page_tokens)
    per_block = 512 // args.page_tokens
    schemes: list[tuple[str, ExtentConfig]] = []
    for extent_tokens in (512, 1024, 2048, 8192):
        pages = max(1, extent_tokens // args.page_tokens)
        schemes.append((f"plain E={extent_tokens} tokens", ExtentConfig.plain(pages)))
    for extent_tokens in (2048, 4096, 8192, 16384):
        pages = max(1, extent_tokens // args.page_tokens)
        schemes.append(
            (f"head 512 + E={extent_tokens} tokens", ExtentConfig(pages, per_block, per_block))
        )
    schemes.append(("whole prompt by its first page", ExtentConfig.plain(1 << 20)))
    schemes.append(("router default (from_tokens)", ExtentConfig.from_tokens(args.page_tokens)))
    print(f"{'scheme':40s} {'max/mean':>9s} {'shards/req':>10s}")
    for name, extents in schemes:
        balance, fanout = simulate_balance(
            trace, args.shards, args.virtual_nodes, extents, args.page_tokens, page_cache=cache
        )
        print(f"{name:40s} {balance:9.2f} {fanout:10.2f}")


if __name__ == "__main__":
    main()
