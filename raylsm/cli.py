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
`build_parser` (bench subcommands: raylsm.cli_bench; argument types and ranges: raylsm.cli_args). A handler takes the parsed args and returns
the exit status; it raises ConfigError for bad input it finds past argparse.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any, Callable, Sequence

from raylsm.bench.interrupts import Terminated, signals_interrupt  # stdlib only, as everything imported here
from raylsm.cli_args import (CAPACITY_GB, SCALE_SHARDS, SCALE_WAIT_S, SEGMENT_MB, SHARDS, CommandParser,
                             directory_path, existing_file, non_empty)
from raylsm.cli_bench import add_bench
from raylsm.errors import ConfigError, RayLSMError


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="raylsm", description="raylsm: a distributed KV-cache storage tier.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    _add_up(subparsers)
    _add_status(subparsers)
    _add_scale(subparsers)
    _add_down(subparsers)
    add_bench(subparsers)
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


if __name__ == "__main__":
    sys.exit(main())
