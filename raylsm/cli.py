"""The `raylsm` command (console script `raylsm = raylsm.cli:main`).

Owns argument parsing, dispatch and what a command does with bad input and signals. Each
subcommand is registered by a small `_add_*` function that declares its arguments and a handler,
and the handler imports the module that does the work lazily, so `raylsm --help` and light
commands never pay for numpy, rocksdict or torch. Called from the shell (and `make demo` /
`make bench`); `python -m raylsm.bench.trace_replay` runs its handler through `run_command` too.
Commands today:

    raylsm up [--address ADDR] [--shards N] [--data-dir DIR] [--capacity-gb G] [--config FILE]
    raylsm status | down [--namespace NS]
    raylsm bench store [--quick] [--json PATH] [--dir PATH] [--pages-64k N] [--pages-1m N] ...
    raylsm bench tier [--batches N] [--json PATH]
    raylsm bench trace [--quick] [--capacity-fraction F] ... (arguments: raylsm.bench.trace_replay)
    raylsm bench fleet [--quick] [--faults] ... (arguments: raylsm.bench.fleet)

Bad input never ends in a traceback: every flag has an argument type that refuses a value out of
its range (`NumberRange`, `existing_file`, `directory_path`, `output_file`), and a ConfigError
raised after parsing (a config file, a cross-field check, a benchmark that would not fit on the
disk) is printed by `run_command` the way argparse prints its own refusals: one line
`raylsm <command>: error: ...` on stderr, exit status 2. Other raylsm errors and OS errors are one
line and status 1. While a command runs, SIGTERM and SIGHUP raise `Terminated` (a
KeyboardInterrupt, raylsm.bench.interrupts) in the main thread, as Ctrl-C does, so the benchmarks'
finally blocks remove their data and stop the Ray tier they started; the exit status is then
128 + the signal number.

To add one (`up`, `down`, `status`, `bench trace`): write `_add_<name>(subparsers)` that calls
`subparsers.add_parser(...)`, adds its arguments and `set_defaults(handler=...)`, and call it from
`build_parser` (bench subcommands from `_add_bench`). A handler takes the parsed args and returns
the exit status; it raises ConfigError for bad input it finds past argparse.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from fractions import Fraction
from typing import Any, Callable, Sequence

from raylsm.bench.disk_budget import existing_ancestor  # stdlib only, as everything imported here
from raylsm.bench.interrupts import Terminated, signals_interrupt
from raylsm.errors import ConfigError, RayLSMError


class CommandParser(argparse.ArgumentParser):
    """argparse with its refusals on one line, `raylsm up: error: argument --capacity-gb: ...` (the
    usage is one `--help` away), exit status 2. Subparsers inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="raylsm", description="raylsm: a distributed KV-cache storage tier.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    _add_up(subparsers)
    _add_status(subparsers)
    _add_scale(subparsers)
    _add_down(subparsers)
    _add_bench(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = " ".join(["raylsm", args.command] + ([args.bench_command] if getattr(args, "bench_command", None) else []))
    return run_command(prog, args.handler, args)


def run_command(prog: str, handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a command's handler and return its exit status: the handler's (0 for None); 2 and one
    line on stderr for a ConfigError; 1 and one line for another raylsm error or an OS error; 130
    for Ctrl-C and 128 + N for signal N (SIGTERM, SIGHUP), after the handler's finally blocks ran."""
    try:
        with signals_interrupt():
            return handler(args) or 0
    except KeyboardInterrupt as interrupt:
        signum = interrupt.signum if isinstance(interrupt, Terminated) else signal.SIGINT
        print(f"{prog}: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    except ConfigError as error:
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except (RayLSMError, OSError) as error:
        print(f"{prog}: error: {type(error).__name__}: {_one_line(error)}", file=sys.stderr)
        return 1


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


# ---- raylsm up / status / down -----------------------------------------------------------------


def _add_up(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "up", help="start the controller and the shards on a Ray cluster (or on an embedded local head)",
        description="Start the raylsm controller on a Ray cluster and wait until every shard is serving. The "
                    "cluster: --address; else the cluster this host belongs to (RAY_ADDRESS, the head `raylsm up` "
                    "started from this directory, or the cluster of this host's Ray node, which needs --data-dir); "
                    "else an embedded local Ray head offering --shards units of the raylsm_shard resource, which "
                    "`raylsm down` stops again. raylsm never starts a second Ray head on a Ray node.")
    parser.add_argument("--address", type=non_empty, metavar="ADDR", help=_ADDRESS_HELP)
    parser.add_argument("--shards", type=SHARDS, default=1,
                        help=f"shard units of an embedded local Ray head, {SHARDS.describe()} (default 1)")
    parser.add_argument("--data-dir", type=directory_path,
                        help="directory holding the shard directories on every node that offers raylsm_shard "
                             "(default ./.raylsm/data, for an embedded head only)")
    parser.add_argument("--capacity-gb", type=CAPACITY_GB,
                        help=f"disk budget per shard in GB, {CAPACITY_GB.describe()} and at least two segments "
                             f"(default 64 GiB)")
    parser.add_argument("--segment-mb", type=SEGMENT_MB, help=f"segment file size in MiB, {SEGMENT_MB.describe()} "
                                                              f"(default 256)")
    parser.add_argument("--config", metavar="FILE", type=existing_file,
                        help="a JSON file holding a TierConfig as nested dicts (the flags apply on top)")
    parser.add_argument("--no-wait", action="store_true",
                        help="return once the controller runs (shards join as nodes offering the resource come up)")
    parser.add_argument("--autoscale", action="store_true",
                        help="let the controller move the shard count within --min-shards/--max-shards by the "
                             "shards' miss-ratio curves, asking Ray's autoscaler for nodes (docs/elastic.md)")
    parser.add_argument("--min-shards", type=SCALE_SHARDS, metavar="N",
                        help="autoscaling floor (ControllerConfig.min_shards, default 1)")
    parser.add_argument("--max-shards", type=SCALE_SHARDS, metavar="N",
                        help="autoscaling ceiling (ControllerConfig.max_shards, default none)")
    parser.set_defaults(handler=_run_up)


_ADDRESS_HELP = ("Ray cluster: host:port of its head, or auto (what Ray finds on this host); default: RAY_ADDRESS, "
                 "else the head `raylsm up` started from this directory, else the cluster this host's Ray node "
                 "belongs to")


def tier_config_from_args(args: argparse.Namespace):
    """The TierConfig a command line asks for: --config file, then the flags on top. ConfigError
    naming the file (unreadable, not JSON, not an object, a bad key or value) or the flag."""
    import json

    from raylsm.config import TierConfig
    from raylsm.store.config import StoreConfig

    raw: dict = {}
    path = getattr(args, "config", None)
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                raw = json.load(handle)
        except OSError as error:
            raise ConfigError(f"--config {path}: cannot read it ({error.strerror or error})") from error
        except (ValueError, UnicodeDecodeError) as error:
            raise ConfigError(f"--config {path}: not valid JSON ({error})") from error
        try:
            TierConfig.from_dict(raw)  # the file alone, so that its own errors name it
        except ConfigError as error:
            raise ConfigError(f"--config {path}: {error}") from error
    shard = dict(raw.get("shard") or {})
    store = dict(shard.get("store") or {})
    if getattr(args, "address", None):
        raw["ray_address"] = args.address
    if getattr(args, "data_dir", None):
        shard["data_dir"] = args.data_dir
    if getattr(args, "segment_mb", None) is not None:
        store["segment_bytes"] = args.segment_mb * 1024 * 1024
    if getattr(args, "capacity_gb", None) is not None:
        store["capacity_bytes"] = int(args.capacity_gb * 1e9) // 4096 * 4096
        segment_bytes = store.get("segment_bytes", StoreConfig().segment_bytes)
        if store["capacity_bytes"] < 2 * segment_bytes:
            raise ConfigError(
                f"argument --capacity-gb: {args.capacity_gb:g} GB is below two segments of "
                f"{segment_bytes / (1 << 20):g} MiB ({2 * segment_bytes / 1e9:.3f} GB), the least a shard holds; "
                f"raise --capacity-gb or lower --segment-mb")
    if store:
        shard["store"] = store
    if shard:
        raw["shard"] = shard
    controller = dict(raw.get("controller") or {})
    for flag, key in (("autoscale", "autoscale"), ("min_shards", "min_shards"), ("max_shards", "max_shards")):
        value = getattr(args, flag, None)
        if value not in (None, False):
            controller[key] = value
    if controller:
        raw["controller"] = controller
    try:
        return TierConfig.from_dict(raw)
    except ConfigError as error:  # each flag is in range alone: it clashes with the file
        raise ConfigError(f"{error} (the flags on top of --config {path})" if path else str(error)) from error


def _run_up(args: argparse.Namespace) -> int:
    config = tier_config_from_args(args)  # bad input is refused before Ray is touched
    from raylsm import lifecycle, status_report

    # An embedded tier's capacity that does not fit the local disk is lowered if it is the default,
    # refused (CapacityError, a ConfigError: one line, status 2) if the user chose it.
    explicit = args.capacity_gb is not None or _config_file_sets_capacity(args.config)
    # A cluster that cannot be found or joined is a RayNotFoundError: one line, status 1.
    result = lifecycle.up(config, shards=args.shards, wait_s=0 if args.no_wait else 120.0,
                          capacity_explicit=explicit)
    where = (f"an embedded local Ray head at {result.ray_address} (`raylsm down` stops it)" if result.started_ray
             else f"Ray at {result.ray_address} ({result.found_by})")
    print(f"raylsm is up on {where}: ring version {result.ring['version']}, {len(result.ring['shards'])} shard(s)")
    print(status_report.format_status(lifecycle.status(config.ray_namespace)))
    return 0


def _config_file_sets_capacity(path: str | None) -> bool:
    if not path:
        return False
    import json

    with open(path, encoding="utf-8") as handle:  # read and validated by tier_config_from_args already
        raw = json.load(handle)
    return "capacity_bytes" in ((raw.get("shard") or {}).get("store") or {})


def _add_status(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="a table of the shards: node, state, pages, bytes, hit rate",
                                   description="Print the shards of the raylsm tier on a Ray cluster.")
    _add_tier_arguments(parser)
    parser.set_defaults(handler=_run_status)


def _add_tier_arguments(parser: argparse.ArgumentParser) -> None:
    """--address and --namespace: which running tier a command acts on (status, scale, down)."""
    parser.add_argument("--address", type=non_empty, metavar="ADDR", help=_ADDRESS_HELP)
    parser.add_argument("--namespace", type=non_empty, default="raylsm",
                        help="Ray namespace of the tier (default raylsm)")


def _connect_tier(command: str, args: argparse.Namespace) -> tuple[Any, Any] | int:
    """(the cluster found, the tier's controller handle), connected; or, having said why on stderr,
    the exit status 1 (no cluster, or no controller in the namespace)."""
    from raylsm import lifecycle
    from raylsm.controller.controller_actor import get_controller

    try:
        cluster = lifecycle.find_cluster(args.address)
        if cluster is None:
            print(f"raylsm {command}: no Ray cluster found on this host (no RAY_ADDRESS, no head `raylsm up` "
                  "started from this directory, no Ray node started here with `ray start`); pass --address, or "
                  "start one with `raylsm up`", file=sys.stderr)
            return 1
        lifecycle.connect(cluster, args.namespace)
    except lifecycle.RayNotFoundError as error:
        print(f"raylsm {command}: {error}", file=sys.stderr)
        return 1
    try:
        return cluster, get_controller(args.namespace)
    except ValueError:
        print(f"raylsm {command}: Ray at {cluster.address} ({cluster.found_by}) is running, but no raylsm "
              f"controller in namespace {args.namespace!r} (start it with `raylsm up --address {cluster.address} "
              f"--data-dir DIR`)", file=sys.stderr)
        return 1


def _run_status(args: argparse.Namespace) -> int:
    import ray

    from raylsm import status_report

    found = _connect_tier("status", args)
    if isinstance(found, int):
        return found
    cluster, controller = found
    report = ray.get(controller.status.remote())
    print(f"raylsm on Ray at {cluster.address} ({cluster.found_by}), namespace {args.namespace}")
    print(status_report.format_status(report))
    return 0


def _add_scale(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scale", help="set the tier's shard count: drain and stop shards, or start standby ones and ask Ray's "
                      "autoscaler for nodes",
        description="Set the raylsm tier's target shard count (docs/elastic.md). Scaling in hands each leaving "
                    "shard's newest pages to their next owners before it leaves the ring (unless --no-drain), then "
                    "stops it, so Ray's autoscaler can remove its idle node. Scaling out starts standby shards and "
                    "asks Ray's autoscaler for nodes offering raylsm_shard.")
    parser.add_argument("--shards", type=SCALE_SHARDS, required=True, metavar="N",
                        help=f"the target shard count, {SCALE_SHARDS.describe()}")
    parser.add_argument("--no-drain", action="store_true", help="scale in without handing pages over")
    parser.add_argument("--wait", type=SCALE_WAIT_S, default=0.0, metavar="S",
                        help="wait up to S seconds for the ring to reach N shards (default 0: return at once)")
    _add_tier_arguments(parser)
    parser.set_defaults(handler=_run_scale)


def _run_scale(args: argparse.Namespace) -> int:
    import ray

    from raylsm import status_report

    found = _connect_tier("scale", args)
    if isinstance(found, int):
        return found
    _cluster, controller = found
    try:
        scale = ray.get(controller.scale.remote(args.shards, False if args.no_drain else None))
    except ray.exceptions.RayTaskError as error:
        print(f"raylsm scale: {error.cause if hasattr(error, 'cause') else error}", file=sys.stderr)
        return 2
    print(status_report.format_scale(scale))
    deadline = time.monotonic() + args.wait
    while args.wait:
        scale = ray.get(controller.scale_status.remote())
        if scale["members"] == args.shards and not scale["draining"] and not scale["leaving"]:
            print(f"the ring has {args.shards} shards")
            print(status_report.format_scale(scale))
            return 0
        if time.monotonic() > deadline:
            print(f"raylsm scale: the ring has {scale['members']} shards after {args.wait:.0f}s, not {args.shards} "
                  "(does Ray's autoscaler have a node type offering raylsm_shard with room? `raylsm status`)",
                  file=sys.stderr)
            print(status_report.format_scale(scale), file=sys.stderr)
            return 1
        time.sleep(1.0)
    return 0


def _add_down(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "down", help="close every store, stop the shards and the controller (and the Ray head `up` started)",
        description="Close every shard's store and stop the shards and the controller of the raylsm tier on a Ray "
                    "cluster. Ray itself keeps running, unless it is the embedded head that `raylsm up` started "
                    "from this directory: then that head's processes, and no other, are stopped.")
    _add_tier_arguments(parser)
    parser.set_defaults(handler=_run_down)


def _run_down(args: argparse.Namespace) -> int:
    from raylsm import lifecycle

    try:
        result = lifecycle.down(args.namespace, address=args.address)
    except lifecycle.RayNotFoundError as error:
        print(f"raylsm down: {error}", file=sys.stderr)
        return 1
    where = f"Ray at {result.ray_address}" if result.ray_address else "the embedded Ray head (not answering)"
    if result.controller_found:
        print(f"raylsm is down on {where}: {result.shards_closed} shard(s) closed, controller stopped")
    elif result.ray_address:
        print(f"raylsm down: no raylsm controller on {where} in namespace {args.namespace!r}: no shard to close")
    if result.stopped_pids:
        print(f"stopped the embedded Ray head `raylsm up` started ({len(result.stopped_pids)} processes)")
    elif result.ray_address:
        print("Ray is still running (raylsm did not start it)")
    return 0


# ---- raylsm bench ... ---------------------------------------------------------------------------


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
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


# ---- argument types, shared with the benchmarks' own argument builders -------------------------


class NumberRange:
    """An argparse type, and the range check behind it: `NumberRange(int, 1, 256)` accepts an integer
    in [1, 256]; `NumberRange(float, 0, 1, low_open=True, fractions=True)` a finite number in (0, 1],
    also written as a fraction ("1/16"). A bad value reads `argument --flag: must be <describe()>, got X`."""

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, fractions: bool = False) -> None:
        self.kind, self.low, self.high, self.low_open, self.fractions = kind, low, high, low_open, fractions

    def describe(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        low, high = _plain(self.low), _plain(self.high)
        if self.low is not None and self.high is not None:
            return f"{noun} in {'(' if self.low_open else '['}{low}, {high}]"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {low}"
        return noun if self.high is None else f"{noun} <= {high}"

    def contains(self, value: float) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def __call__(self, text: str):
        try:
            if self.kind is int:
                value = int(text, 10)
            elif self.fractions and "/" in text:
                value = float(Fraction(text.strip()))
            else:
                value = float(text)
        except (ValueError, ZeroDivisionError, OverflowError):
            value = None
        if value is None or not self.contains(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}")
        return value


def require_ranges(checks: Sequence[tuple[str, Any, "NumberRange"]]) -> None:
    """ConfigError naming the flag of the first (flag, value, range) whose value (when not None) is
    out of its range: the same check argparse made, for a config built in code."""
    for flag, value, allowed in checks:
        if value is not None and not allowed.contains(value):
            raise ConfigError(f"{flag} must be {allowed.describe()}, got {value!r}")


def _plain(number: float | None) -> str:
    if number is None:
        return ""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


positive_int = NumberRange(int, 1)
non_negative_int = NumberRange(int, 0)
SHARDS = NumberRange(int, 1, 256)  # shard actors on one Ray head; one per disk as deployed
SCALE_SHARDS = NumberRange(int, 1, 100_000)  # ControllerConfig.max_shards' range
SCALE_WAIT_S = NumberRange(float, 0, 86400)
CAPACITY_GB = NumberRange(float, 0, 1e6, low_open=True)  # per shard; a PB bounds typos, not disks
SEGMENT_MB = NumberRange(int, 1, 16 * 1024)  # StoreConfig.segment_bytes in whole MiB (the store takes 256 KiB up)
STORED_PAGES = NumberRange(int, 0, 100_000_000)
WORKLOAD_REQUESTS = NumberRange(int, 1, 10_000_000)
CHAIN_PAGES = NumberRange(int, 1, 1 << 20)  # ClientConfig.extent_pages' range
THREADS = NumberRange(int, 1, 256)
TIER_BATCHES = NumberRange(int, 1, 100_000)  # 32 MiB each; the disk check bounds a run further
TIER_CLIENTS = NumberRange(int, 1, 64)


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def existing_file(text: str) -> str:
    """A file to read: it must exist and be a regular file (or a pipe, as /dev/stdin)."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"is a directory, not a file: {text!r}")
    return text


def directory_path(text: str) -> str:
    """A directory to use or create: anything but an existing non-directory (checked here, made later)."""
    non_empty(text)
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"exists and is not a directory: {text!r}")
    ancestor = existing_ancestor(text)
    if not os.path.isdir(ancestor):
        raise argparse.ArgumentTypeError(f"cannot be made: {ancestor!r} is not a directory")
    return text


def output_file(text: str) -> str:
    """A file to write when the command ends: not a directory, and its directory exists or can be made
    and is writable, so that a long run does not fail at its last step."""
    non_empty(text)
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"is a directory: {text!r}")
    ancestor = existing_ancestor(os.path.dirname(os.path.abspath(text)))
    if not os.path.isdir(ancestor):
        raise argparse.ArgumentTypeError(f"cannot be written: {ancestor!r} is not a directory")
    if not os.access(ancestor, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot be written: no write permission in {ancestor!r}")
    return text


class CommaList:
    """An argparse type: a comma-separated, non-empty subset of `known`, as a tuple in the given order."""

    def __init__(self, known: Sequence[str]) -> None:
        self.known = tuple(known)

    def __call__(self, text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        unknown = [name for name in names if name not in self.known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"must be a comma-separated subset of {', '.join(self.known)}; got "
                + (f"unknown {', '.join(unknown)}" if unknown else "none"))
        return names


if __name__ == "__main__":
    sys.exit(main())
