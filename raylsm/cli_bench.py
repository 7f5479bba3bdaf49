"""The `raylsm bench ...` subcommands: their arguments and handlers.

Owned here: `add_bench`, which raylsm.cli's `build_parser` calls, and one `_add_bench_<name>` /
`_run_bench_<name>` pair per benchmark (store, tier, workload, trace, adaptive, fleet, memory).
Each handler imports its benchmark module lazily (numpy, Ray, torch and SGLang stay out of
`raylsm --help`); the trace, adaptive and fleet benchmarks declare their own arguments
(`add_*_arguments` in their modules). Handlers return the exit status and raise ConfigError for
bad input found past argparse (raylsm.cli.run_command prints it).
"""

from __future__ import annotations

import argparse

from raylsm.cli_args import (CHAIN_PAGES, STORED_PAGES, THREADS, TIER_BATCHES, TIER_CLIENTS, WORKLOAD_REQUESTS,
                             CommaList, NumberRange, directory_path, output_file)
from raylsm.errors import ConfigError


def add_bench(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks (results are ratios against baselines)",
                                  description="Benchmarks, run side by side in one process.")
    bench_subparsers = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    bench_subparsers.required = True
    _add_bench_store(bench_subparsers)
    _add_bench_tier(bench_subparsers)
    _add_bench_workload(bench_subparsers)
    _add_bench_trace(bench_subparsers)
    _add_bench_adaptive(bench_subparsers)
    _add_bench_fleet(bench_subparsers)
    _add_bench_memory(bench_subparsers)


def _add_bench_store(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "store", help="one shard store vs SGLang HiCacheFile, RocksDB BlobDB and the raw disk",
        description="Put, probe, cold get and warm get of the same pages on raylsm's ShardStore (O_DIRECT and "
                    "buffered), SGLang's HiCacheFile, plain RocksDB with BlobDB, and the raw disk, in one run on "
                    "the same disk. Prints a table per page size with ratios; --json writes the figures. Page "
                    "counts are scaled down (with a warning) to what the free disk space holds.")
    parser.add_argument("--quick", action="store_true",
                        help="small run (16,000 x 64 KiB and 1,500 x 1 MiB pages), under 3 minutes")
    parser.add_argument("--json", metavar="PATH", dest="json_path", type=output_file,
                        help="write the results as JSON to PATH")
    parser.add_argument("--dir", metavar="PATH", dest="data_dir", type=directory_path,
                        help="data directory (default: a temporary directory under ./.raylsm/bench); each "
                             "system's data is removed after it ran")
    parser.add_argument("--pages-64k", type=STORED_PAGES, metavar="N",
                        help=f"stored 64 KiB pages, {STORED_PAGES.describe()} (default 100,000; --quick 16,000; "
                             f"0 skips)")
    parser.add_argument("--pages-1m", type=STORED_PAGES, metavar="N",
                        help=f"stored 1 MiB pages, {STORED_PAGES.describe()} (default 8,000; --quick 1,500; 0 skips)")
    parser.add_argument("--extent-pages", type=CHAIN_PAGES, default=16, metavar="E",
                        help=f"pages per extent in the page keys, {CHAIN_PAGES.describe()} (default 16)")
    parser.add_argument("--chain-pages", type=CHAIN_PAGES, default=64, metavar="K",
                        help=f"pages per chain (prompt) in the workload, {CHAIN_PAGES.describe()} (default 64)")
    parser.add_argument("--threads", type=THREADS, default=2, metavar="T",
                        help=f"reader threads for probe and get, the same for every system, {THREADS.describe()} "
                             f"(default 2)")
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
    if not any(pages.values()):
        raise ConfigError("argument --pages-64k/--pages-1m: both are 0, nothing to measure")
    systems = store_bench.SYSTEMS
    if args.systems is not None:  # checked here, not by argparse: the names live with the (lazy) benchmark
        try:
            systems = CommaList(store_bench.SYSTEMS)(args.systems)
        except argparse.ArgumentTypeError as error:
            raise ConfigError(f"argument --systems: {error}") from error
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
                    "compares hit ratios with an LRU model and the offline optimum (Belady). Refuses a run whose "
                    "data would not fit in the free disk space.")
    add_trace_arguments(parser)
    parser.set_defaults(handler=_run_bench_trace)


def _run_bench_trace(args: argparse.Namespace) -> int:
    from raylsm.bench.trace_replay import run_trace_command

    return run_trace_command(args)


def _add_bench_adaptive(subparsers: argparse._SubParsersAction) -> None:
    from raylsm.bench.adaptive import add_adaptive_arguments  # argparse only; heavy imports are lazy

    parser = subparsers.add_parser(
        "adaptive", help="the controller's store tuning vs every static configuration, on a four-phase workload",
        description="Replays one workload in four phases (chat, chat with a scan burst, agents on hot shared "
                    "prefixes, chat again) through the SGLang adapter, once with the controller tuning each "
                    "shard's store and once per static configuration it may choose, each on a fresh private "
                    "tier at the same capacity; prints per-phase and overall hit ratio, modelled TTFT, get p99 "
                    "and balance, and the issue's goals.")
    add_adaptive_arguments(parser)
    parser.set_defaults(handler=_run_bench_adaptive)


def _run_bench_adaptive(args: argparse.Namespace) -> int:
    from raylsm.bench.adaptive import run_adaptive_command

    return run_adaptive_command(args)


def _add_bench_fleet(subparsers: argparse._SubParsersAction) -> None:
    from raylsm.bench.fleet import add_fleet_arguments  # argparse only; heavy imports are lazy

    parser = subparsers.add_parser(
        "fleet", help="many SGLang replica processes sharing the tier vs private HiCacheFile and Mooncake Store",
        description="Replays one trace open loop through several replica processes (each its own host pool, "
                    "L1/L2 and SGLang L3 backend) routed by a load balancer, for raylsm on a simulated multi-node "
                    "Ray cluster, one private HiCacheFile per replica, and Mooncake Store, at the same total "
                    "capacity; with --faults, kills a shard and removes a node during the raylsm run.")
    add_fleet_arguments(parser)
    parser.set_defaults(handler=_run_bench_fleet)


def _run_bench_fleet(args: argparse.Namespace) -> int:
    from raylsm.bench.fleet import run_fleet_command

    return run_fleet_command(args)


def _add_bench_tier(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tier", help="batch_get_v1 through Ray (object store and same-node fast path) vs the store alone",
        description="Cold reads of 128-page batches of 256 KiB pages into an SGLang-layout host pool: straight "
                    "from a ShardStore, then through a shard actor (object store) and through the same-node fast "
                    "path, in one run. Starts (and stops) its own local tier; refuses a run whose data would not "
                    "fit in the free disk space.")
    parser.add_argument("--batches", type=TIER_BATCHES, default=24,
                        help=f"128-page batches, {TIER_BATCHES.describe()} (default 24 = 768 MiB)")
    parser.add_argument("--json", metavar="PATH", dest="json_path", type=output_file,
                        help="write the results as JSON to PATH")
    parser.add_argument("--clients", type=TIER_CLIENTS, default=1,
                        help=f"also drive the shard from C client processes at once (batch_set_v1 then cold "
                             f"batch_get_v1, object path and same-node path), against the disk's read ceiling "
                             f"with C readers, {TIER_CLIENTS.describe()} (default 1: one client only)")
    parser.set_defaults(handler=_run_bench_tier)


def _run_bench_tier(args: argparse.Namespace) -> int:
    from raylsm.bench import tier_bench

    report = tier_bench.run(tier_bench.TierBenchConfig(batches=args.batches, json_path=args.json_path,
                                                       clients=args.clients))
    return 0 if all(row["wrong_pages"] == 0 for row in report["results"]) else 1


def _add_bench_memory(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "memory", help="a shard's resident memory per page and open time per million pages",
        description="Fills one shard store with small pages, then measures in fresh processes its resident memory "
                    "per stored page and its open time per million pages, after a clean close (snapshot loaded) "
                    "and as after a crash (every pointer scanned). Budget: docs/memory.md.")
    parser.add_argument("--pages", type=NumberRange(int, 1, 1_000_000_000), default=2_000_000,
                        help="pages to store, an integer in [1, 1000000000] (default 2,000,000)")
    parser.add_argument("--page-bytes", type=NumberRange(int, 1, 1 << 20), default=512,
                        help="bytes per page, an integer in [1, 1048576] (default 512)")
    parser.add_argument("--dir", metavar="PATH", dest="data_dir", type=directory_path,
                        help="data directory (default ./.raylsm/bench/memory-<pid>, removed afterwards)")
    parser.add_argument("--json", metavar="PATH", dest="json_path", type=output_file,
                        help="write the results as JSON to PATH")
    parser.set_defaults(handler=_run_bench_memory)


def _run_bench_memory(args: argparse.Namespace) -> int:
    from raylsm.bench import memory_bench

    report = memory_bench.run(memory_bench.MemoryBenchConfig(args.pages, args.page_bytes, args.data_dir or "",
                                                             args.json_path))
    found_clean, found_scan, probed = report["probes_found"]
    return 0 if found_clean == probed and found_scan == probed else 1


def _add_bench_workload(subparsers: argparse._SubParsersAction) -> None:
    from raylsm.bench.workload import SHAPES  # stdlib only

    parser = subparsers.add_parser(
        "workload", help="write a Mooncake-format trace of another shape (agentic, multi-turn, doc Q&A, scan)",
        description="Generate a request trace (one JSON object per request: timestamp ms, input_length, "
                    "output_length, hash_ids of 512-token blocks) for `raylsm bench trace --trace PATH`.")
    parser.add_argument("--shape", choices=SHAPES, default="agentic", help="workload shape (default agentic)")
    parser.add_argument("--requests", type=WORKLOAD_REQUESTS, default=6000,
                        help=f"requests, {WORKLOAD_REQUESTS.describe()} (default 6000)")
    parser.add_argument("--seed", type=NumberRange(int, 0, 2**63 - 1), default=0, help="random seed (default 0)")
    parser.add_argument("--rate", type=NumberRange(float, 0, 1e6, low_open=True), default=4.0,
                        help="new sessions per second (default 4)")
    parser.add_argument("--out", metavar="PATH", type=output_file, required=True, help="the trace file to write")
    parser.set_defaults(handler=_run_bench_workload)


def _run_bench_workload(args: argparse.Namespace) -> int:
    from raylsm.bench.workload import WorkloadConfig, write_trace

    count = write_trace(WorkloadConfig(shape=args.shape, requests=args.requests, seed=args.seed,
                                       rate_per_s=args.rate), args.out)
    print(f"wrote {count} {args.shape} requests to {args.out}")
    return 0
