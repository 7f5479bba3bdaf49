"""The `raylsm` command (console script `raylsm = raylsm.cli:main`).

Owns argument parsing and dispatch only: each subcommand is registered by a small `_add_*`
function that declares its arguments and a handler, and the handler imports the module that does
the work lazily, so `raylsm --help` and light commands never pay for numpy, rocksdict or torch.
Called from the shell (and `make demo` / `make bench`). Commands today:

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
    _add_bench(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ---- raylsm bench ... ---------------------------------------------------------------------------


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks (results are ratios against baselines)",
                                  description="Benchmarks, run side by side in one process.")
    bench_subparsers = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    bench_subparsers.required = True
    _add_bench_store(bench_subparsers)


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
    parser.add_argument("--pages-64k", type=_non_negative, metavar="N",
                        help="stored 64 KiB pages (default 100,000; --quick 16,000; 0 skips)")
    parser.add_argument("--pages-1m", type=_non_negative, metavar="N",
                        help="stored 1 MiB pages (default 8,000; --quick 1,500; 0 skips)")
    parser.add_argument("--extent-pages", type=_positive, default=16, metavar="E",
                        help="pages per extent in the page keys (default 16)")
    parser.add_argument("--chain-pages", type=_positive, default=64, metavar="K",
                        help="pages per chain (prompt) in the workload (default 64)")
    parser.add_argument("--threads", type=_positive, default=2, metavar="T",
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


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
