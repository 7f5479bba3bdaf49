"""The `raylsm` command (console script `raylsm = raylsm.cli:main`).

Owns argument parsing and dispatch only: each subcommand is registered by a small `_add_*`
function that declares its arguments and a handler, and the handler imports the module that does
the work lazily, so `raylsm --help` and light commands never pay for numpy, rocksdict or torch.
Called from the shell (and `make demo` / `make bench`). Commands today:

    raylsm up [--address ADDR] [--shards N] [--data-dir DIR] [--capacity-gb G] [--config FILE]
    raylsm status
    raylsm down
    raylsm bench store [--quick] [--json PATH] [--dir PATH] [--pages-64k N] [--pages-1m N] ...

To add one (`up`, `down`, `status`, `bench trace`): write `_add_<name>(subparsers)` that calls
`subparsers.add_parser(...)`, adds its arguments and `set_defaults(handler=...)`, and call it from
`build_parser` (bench subcommands from `_add_bench`). A handler takes the parsed args and returns
the exit status.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raylsm", description="raylsm: a distributed KV-cache storage tier.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    _add_up(subparsers)
    _add_status(subparsers)
    _add_down(subparsers)
    _add_bench(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ---- raylsm up / status / down -----------------------------------------------------------------


def _add_up(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "up", help="join or start Ray, start the controller and the shards",
        description="Join the Ray cluster at --address (or a running local Ray, or start an embedded local head "
                    "offering --shards units of the raylsm_shard resource), start the raylsm controller, and wait "
                    "until every shard is serving.")
    parser.add_argument("--address", help="Ray address to join (default: a running local Ray, else start one)")
    parser.add_argument("--shards", type=positive_int, default=1,
                        help="shard units of an embedded local Ray head (default 1)")
    parser.add_argument("--data-dir", help="node-local directory holding the shard directories "
                                           "(default ./.raylsm/data)")
    parser.add_argument("--capacity-gb", type=float, help="disk budget per shard in GB (default 64 GiB)")
    parser.add_argument("--segment-mb", type=positive_int, help="segment file size in MiB (default 256)")
    parser.add_argument("--config", metavar="FILE", help="a JSON file holding a TierConfig as nested dicts")
    parser.add_argument("--no-wait", action="store_true",
                        help="return once the controller runs (shards join as nodes offering the resource come up)")
    parser.set_defaults(handler=_run_up)


def tier_config_from_args(args: argparse.Namespace):
    """The TierConfig a command line asks for: --config file, then the flags on top."""
    import json

    from raylsm.config import TierConfig

    raw: dict = {}
    if getattr(args, "config", None):
        with open(args.config) as handle:
            raw = json.load(handle)
    shard = raw.setdefault("shard", {})
    if getattr(args, "address", None):
        raw["ray_address"] = args.address
    if getattr(args, "data_dir", None):
        shard["data_dir"] = args.data_dir
    store = shard.setdefault("store", {})
    if getattr(args, "capacity_gb", None):
        store["capacity_bytes"] = int(args.capacity_gb * 1e9) // 4096 * 4096
    if getattr(args, "segment_mb", None):
        store["segment_bytes"] = args.segment_mb * 1024 * 1024
    return TierConfig.from_dict(raw)


def _run_up(args: argparse.Namespace) -> int:
    from raylsm import lifecycle

    config = tier_config_from_args(args)
    result = lifecycle.up(config, shards=args.shards, wait_s=0 if args.no_wait else 120.0)
    where = "an embedded local Ray head" if result.started_ray else f"Ray at {result.ray_address}"
    print(f"raylsm is up on {where}: ring version {result.ring['version']}, {len(result.ring['shards'])} shard(s)")
    print(lifecycle.format_status(lifecycle.status(config.ray_namespace)))
    return 0


def _add_status(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="a table of the shards: node, state, pages, bytes, hit rate")
    parser.add_argument("--namespace", default="raylsm", help="Ray namespace of the tier (default raylsm)")
    parser.set_defaults(handler=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    from raylsm import lifecycle

    if not lifecycle.ray_is_running():
        print("raylsm: no Ray instance is running (start one with `raylsm up`)", file=sys.stderr)
        return 1
    try:
        report = lifecycle.status(args.namespace)
    except ValueError:
        print("raylsm: Ray is running but the raylsm controller is not (start it with `raylsm up`)",
              file=sys.stderr)
        return 1
    print(lifecycle.format_status(report))
    return 0


def _add_down(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("down", help="close every store, stop the shards and the controller "
                                                "(and the local Ray if `up` started it)")
    parser.add_argument("--namespace", default="raylsm", help="Ray namespace of the tier (default raylsm)")
    parser.set_defaults(handler=_run_down)


def _run_down(args: argparse.Namespace) -> int:
    from raylsm import lifecycle

    stopped = lifecycle.down(args.namespace)
    print(f"raylsm is down ({stopped} shard(s) closed)")
    return 0


# ---- raylsm bench ... ---------------------------------------------------------------------------


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks (results are ratios against baselines)",
                                  description="Benchmarks, run side by side in one process.")
    bench_subparsers = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    bench_subparsers.required = True
    _add_bench_store(bench_subparsers)
    _add_bench_tier(bench_subparsers)
    _add_bench_trace(bench_subparsers)


def _add_bench_store(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "store", help="one shard store vs SGLang HiCacheFile, RocksDB BlobDB and the raw disk",
        description="Put, probe, cold get and warm get of the same pages on raylsm's ShardStore (O_DIRECT and "
                    "buffered), SGLang's HiCacheFile, plain RocksDB with BlobDB, and the raw disk, in one run on "
                    "the same disk. Prints a table per page size with ratios; --json writes the figures.")
    parser.add_argument("--quick", action="store_true",
                        help="small run (16,000 x 64 KiB and 1,500 x 1 MiB pages), under 3 minutes")
    parser.add_argument("--json", metavar="PATH", dest="json_path", help="write the results as JSON to PATH")
    parser.add_argument("--dir", metavar="PATH", dest="data_dir",
                        help="data directory (default: a temporary directory under ./.raylsm/bench); each "
                             "system's data is removed after it ran")
    parser.add_argument("--pages-64k", type=non_negative_int, metavar="N",
                        help="stored 64 KiB pages (default 100,000; --quick 16,000; 0 skips)")
    parser.add_argument("--pages-1m", type=non_negative_int, metavar="N",
                        help="stored 1 MiB pages (default 8,000; --quick 1,500; 0 skips)")
    parser.add_argument("--extent-pages", type=positive_int, default=16, metavar="E",
                        help="pages per extent in the page keys (default 16)")
    parser.add_argument("--chain-pages", type=positive_int, default=64, metavar="K",
                        help="pages per chain (prompt) in the workload (default 64)")
    parser.add_argument("--threads", type=positive_int, default=2, metavar="T",
                        help="reader threads for probe and get, the same for every system (default 2)")
    parser.add_argument("--systems", metavar="LIST",
                        help="comma-separated subset of: disk_ceiling, raylsm, raylsm_buffered, rocksdb_blobdb, "
                             "hicache_file (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    parser.set_defaults(handler=_run_bench_store)


def _run_bench_store(args: argparse.Namespace) -> int:
    from raylsm.bench import store_bench

    defaults = store_bench.QUICK_PAGES if args.quick else store_bench.FULL_PAGES
    pages = {
        64 * 1024: defaults[64 * 1024] if args.pages_64k is None else args.pages_64k,
        1024 * 1024: defaults[1024 * 1024] if args.pages_1m is None else args.pages_1m,
    }
    systems = store_bench.SYSTEMS
    if args.systems:
        systems = tuple(name.strip() for name in args.systems.split(",") if name.strip())
        unknown = [name for name in systems if name not in store_bench.SYSTEMS]
        if unknown:
            print(f"raylsm bench store: unknown system(s) {', '.join(unknown)}; "
                  f"known: {', '.join(store_bench.SYSTEMS)}", file=sys.stderr)
            return 2
    config = store_bench.BenchConfig(
        pages_by_size=pages, chain_pages=args.chain_pages, extent_pages=args.extent_pages, threads=args.threads,
        systems=systems, data_dir=args.data_dir, json_path=args.json_path, quick=args.quick,
        progress=not args.no_progress)
    store_bench.run(config)
    return 0


def _add_bench_trace(subparsers: argparse._SubParsersAction) -> None:
    from raylsm.bench.trace_replay import add_trace_arguments  # argparse only; heavy imports are lazy

    parser = subparsers.add_parser(
        "trace", help="replay a Mooncake-format trace through the SGLang adapter vs HiCacheFile, LRU and Belady",
        description="Replays a request trace the way HiCache drives an L3 backend (simulated L1/L2, batch_exists, "
                    "batch_get_v1, batch_set_v1) through raylsm and SGLang's HiCacheFile at the same capacity, and "
                    "compares hit ratios with an LRU model and the offline optimum (Belady).")
    add_trace_arguments(parser)
    parser.set_defaults(handler=_run_bench_trace)


def _run_bench_trace(args: argparse.Namespace) -> int:
    from raylsm.bench.trace_replay import run_trace_command

    return run_trace_command(args)


def _add_bench_tier(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tier", help="batch_get_v1 through Ray (object store and same-node fast path) vs the store alone",
        description="Cold reads of 128-page batches of 256 KiB pages into an SGLang-layout host pool: straight "
                    "from a ShardStore, then through a shard actor (object store) and through the same-node fast "
                    "path, in one run. Starts (and stops) its own local tier.")
    parser.add_argument("--batches", type=positive_int, default=24, help="128-page batches (default 24 = 768 MiB)")
    parser.add_argument("--json", metavar="PATH", dest="json_path", help="write the results as JSON to PATH")
    parser.set_defaults(handler=_run_bench_tier)


def _run_bench_tier(args: argparse.Namespace) -> int:
    from raylsm.bench import tier_bench

    report = tier_bench.run(tier_bench.TierBenchConfig(batches=args.batches, json_path=args.json_path))
    return 0 if all(row["wrong_pages"] == 0 for row in report["results"]) else 1


# Argument types, shared with the benchmarks' own argument builders.


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
