"""`raylsm bench fleet`: many SGLang replicas sharing one L3 tier, against what a fleet runs without it.

Owned here: the fleet run. One trace (the packaged conversation trace by default) is cut among
`--replicas` replica processes by a router (`round_robin`, what a plain load balancer does, or
`session` affinity by conversation), and each system is run in turn at the same total capacity:

- `raylsm`: the shared tier on a simulated multi-node Ray cluster (`ray.cluster_utils.Cluster`: one
  worker node per `--nodes`, each offering `raylsm_shard` with its own disk label and data
  directory; the replicas are drivers on the head node, so every call crosses to a shard actor on
  another node, the object-store path);
- `hicache_file_private`: every replica its own SGLang `HiCacheFile` directory of capacity / replicas
  (a fleet without a shared tier);
- `mooncake_store`: SGLang's `MooncakeStore` against one `mooncake_master` on localhost over TCP, the
  replicas contributing capacity / replicas of DRAM each (skipped, with the reason and the install
  command, when Mooncake cannot run here).

The replicas replay open loop: request i starts at its trace time / `--speedup` after the common
start, or when the replica's previous request ends if it is behind (its queueing delay is reported).
Each replica has its own simulated L1/L2 of `--host-cache-fraction` of the run's distinct pages. With
`--faults`, raylsm runs twice: once as above, then again (row `raylsm_faults`) with kill -9 of one
shard process at 1/3 of the run, removal of another shard's node at 2/3, and the node back with its
disk label shortly after; each event is reported with the errors and wrong pages around it, the hit
ratio before, the dip and the recovery time, against the window before it and against the same
requests in the run without faults. With `--scale`, raylsm runs once more (row `raylsm_scale`) with
one more node, standby until the scale events of `fleet_scale` (out N -> N+1, in with drain, out
again, in without drain, the controller killed); they are reported in `"scale_events"` as the faults
are, with the fraction of keys each ring change remapped.

Called by the `raylsm bench fleet` command (raylsm.cli) and tests. The replica side is
`raylsm.bench.fleet_replica`; the fault analysis is `fleet_faults`; workload, replay core, systems and
report come from the shared bench core (`trace`, `replay`, `systems`, `report`).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from raylsm.bench import fleet_faults, fleet_scale
from raylsm.bench.replay import pool_shape
from raylsm.bench.report import write_json
from raylsm.bench.trace import MODEL_PROFILES, PageKeyCache, conversation_of, load_sampled
from raylsm.bench.trace_replay import (CAPACITY_FRACTION, HOST_CACHE_FRACTION, PAYLOAD_SCALE, SAMPLE_RATE,
                                       TIME_WINDOW_S)  # the same flags as `bench trace`, the same ranges
from raylsm.cli_args import CommaList, NumberRange, directory_path, existing_file, output_file, require_ranges
from raylsm.errors import ConfigError

SYSTEMS = ("raylsm", "hicache_file_private", "mooncake_store")
ROUTERS = ("round_robin", "session")
REPLICAS = NumberRange(int, 1, 64)
NODES = NumberRange(int, 1, 64)
SPEEDUP = NumberRange(float, 0, 10_000, low_open=True)
INLINE_BYTES = NumberRange(int, 0, 1 << 29)
# --quick: one conversation in 16 over the whole trace (the sample the single-process `bench trace
# --quick` uses), 50x faster than real time: about 750 requests in 71 s per system.
# NOTE: the first 900 s of the trace (a quarter of its conversations) was tried first: a cold window
# where even the LRU model hits 0.055 of L3 asks, so the systems could not be told apart.
QUICK = {"sample_rate": 1 / 16, "speedup": 50.0}
DEFAULT_SPEEDUP = 10.0
FAULTS_ROW = "raylsm_faults"  # the raylsm run with --faults' events (the row "raylsm" runs without them)
SCALE_ROW = "raylsm_scale"  # the raylsm run with --scale's events
READY_TIMEOUT_S = 300.0  # replicas import torch, SGLang and Ray: tens of seconds on 2 cores
MiB = 1 << 20

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetConfig:
    trace_path: str | None = None
    time_window_s: float | None = None
    sample_rate: float | None = None
    quick: bool = False
    replicas: int = 4
    nodes: int = 4
    speedup: float | None = None  # None: DEFAULT_SPEEDUP (--quick: QUICK's)
    router: str = "round_robin"
    capacity_fraction: float = 0.1
    host_cache_fraction: float = 0.02
    page_tokens: int = 64
    profile: str = "qwen2.5-0.5b"
    payload_scale: float = 1 / 16
    prefill_tokens_per_s: float = 10_000.0
    systems: tuple[str, ...] = SYSTEMS
    faults: bool = False
    scale: bool = False
    inline_bytes: int = 0  # raylsm: ShardConfig.inline_reply_bytes and the replicas' inline_call_bytes
    json_path: str | None = None
    plot_path: str | None = None
    data_dir: str | None = None
    seed: int = 0

    def validate(self) -> "FleetConfig":
        """Return self, or raise ConfigError naming the flag of the first bad value."""
        require_ranges((("--replicas", self.replicas, REPLICAS), ("--nodes", self.nodes, NODES),
                        ("--speedup", self.speedup, SPEEDUP),
                        ("--capacity-fraction", self.capacity_fraction, CAPACITY_FRACTION),
                        ("--host-cache-fraction", self.host_cache_fraction, HOST_CACHE_FRACTION),
                        ("--sample-conversations", self.sample_rate, SAMPLE_RATE),
                        ("--time-window", self.time_window_s, TIME_WINDOW_S),
                        ("--payload-scale", self.payload_scale, PAYLOAD_SCALE),
                        ("--inline-bytes", self.inline_bytes, INLINE_BYTES)))
        if self.router not in ROUTERS:
            raise ConfigError(f"--router must be one of {', '.join(ROUTERS)}, got {self.router!r}")
        if self.profile not in MODEL_PROFILES:
            raise ConfigError(f"--profile must be one of {sorted(MODEL_PROFILES)}, got {self.profile!r}")
        unknown = [name for name in self.systems if name not in SYSTEMS]
        if unknown or not self.systems:
            raise ConfigError(f"--systems must be a non-empty subset of {', '.join(SYSTEMS)}; got {unknown}")
        if self.faults and "raylsm" not in self.systems:
            raise ConfigError("--faults acts on the raylsm run: include raylsm in --systems")
        if self.scale and "raylsm" not in self.systems:
            raise ConfigError("--scale acts on the raylsm run: include raylsm in --systems")
        if self.faults and self.nodes < 2:
            raise ConfigError("--faults needs --nodes >= 2 (a shard is killed and another shard's node removed)")
        return self

    def effective(self) -> tuple[float | None, float, float]:
        """(time window s, sample rate, speedup) after --quick's defaults."""
        rate = self.sample_rate if self.sample_rate is not None else (QUICK["sample_rate"] if self.quick else 1.0)
        speedup = self.speedup if self.speedup is not None else (QUICK["speedup"] if self.quick else DEFAULT_SPEEDUP)
        return self.time_window_s, rate, speedup


@dataclass
class FleetWorkload:
    """The run's requests in trace order and the replica each is routed to."""

    arrival_s: list[float]
    prompt_tokens: list[int]
    chains: list[list[bytes]]
    replica_of: list[int]
    distinct_pages: int
    duration_s: float


def route(conversations: Sequence[int], replicas: int, router: str) -> list[int]:
    """The replica of each request: round robin in trace order, or a hash of its conversation."""
    if router == "round_robin":
        return [index % replicas for index in range(len(conversations))]
    return [int.from_bytes(hashlib.blake2b(conversation.to_bytes(8, "little", signed=True), digest_size=8).digest(),
                           "little") % replicas for conversation in conversations]


def load_workload(config: FleetConfig) -> FleetWorkload:
    window, rate, _ = config.effective()
    trace, _ = load_sampled(config.trace_path, time_window_s=window, sample_rate=rate, seed=config.seed)
    keys = PageKeyCache(config.page_tokens)
    chains = [keys.pages(request) for request in trace]
    first = trace[0].timestamp_ms
    arrival = [(request.timestamp_ms - first) / 1000 for request in trace]
    distinct = len({page for chain in chains for page in chain})
    return FleetWorkload(arrival, [request.input_length for request in trace], chains,
                         route([conversation_of(request) for request in trace], config.replicas, config.router),
                         distinct, arrival[-1])


# ---- running one system ---------------------------------------------------------------------------


class FleetCluster:
    """A simulated Ray cluster: a head without CPUs or shard resource (the replicas' drivers attach
    there) and one worker node per shard, each with one `raylsm_shard` unit and its own disk label."""

    def __init__(self, nodes: int) -> None:
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        self.nodes: dict[str, Any] = {}
        for index in range(nodes):
            self.add(f"fleet-disk-{index}", wait=False)
        self.cluster.wait_for_nodes()

    @property
    def address(self) -> str:
        return self.cluster.address

    def add(self, label: str, wait: bool = True) -> Any:
        node = self.cluster.add_node(num_cpus=1, resources={"raylsm_shard": 1}, object_store_memory=256 * MiB,
                                     labels={"raylsm-disk": label})
        self.nodes[label] = node
        if wait:
            self.cluster.wait_for_nodes()
        return node

    def remove(self, label: str) -> None:
        self.cluster.remove_node(self.nodes.pop(label), allow_graceful=False)

    def shutdown(self) -> None:
        self.cluster.shutdown()


def _replica_specs(config: FleetConfig, workload: FleetWorkload, system: str, shape: Any, capacity_bytes: int,
                   speedup: float, root: str, extra: dict) -> list[dict]:
    host_pages = int(round(config.host_cache_fraction * workload.distinct_pages))
    specs = []
    for replica in range(config.replicas):
        requests = [(index, workload.arrival_s[index], workload.prompt_tokens[index], workload.chains[index])
                    for index, owner in enumerate(workload.replica_of) if owner == replica]
        spec = {"replica": replica, "system": system, "model_name": f"fleet-{config.profile}",
                "shape": asdict(shape), "page_tokens": config.page_tokens, "host_capacity_pages": host_pages,
                "seed": config.seed * 1000 + replica, "speedup": speedup, "requests": requests,
                "capacity_bytes": capacity_bytes // config.replicas, "cold_page_cache": True,
                "directory": os.path.join(root, system, f"replica-{replica}")}
        spec.update(extra)
        specs.append(spec)
    return specs


def run_replicas(specs: list[dict], during: Any = None) -> tuple[list[dict], float]:
    """Spawn one process per spec, start them together, run `during(origin)` (the fault schedule) in
    this thread, and collect their results (replica order). Returns (results, origin wall time)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    ready, results = context.Queue(), context.Queue()
    go, start = context.Event(), context.Value("d", 0.0)
    from raylsm.bench.fleet_replica import replica_main

    processes = [context.Process(target=replica_main, args=(spec, ready, start, go, results), daemon=True)
                 for spec in specs]
    for process in processes:
        process.start()
    try:
        deadline = time.time() + READY_TIMEOUT_S
        seen: set[int] = set()
        while len(seen) < len(specs):
            seen.add(ready.get(timeout=max(1.0, deadline - time.time())))
        origin = time.time() + 1.0
        start.value = origin
        go.set()
        if during is not None:
            during(origin)
        last_due = max((origin + request[1] / spec["speedup"] for spec in specs for request in spec["requests"]),
                       default=origin)
        collected: dict[int, dict] = {}
        while len(collected) < len(specs):
            replica, result = results.get(timeout=max(60.0, last_due - time.time() + 600.0))
            collected[replica] = result
        return [collected[index] for index in sorted(collected)], origin
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


def _run_raylsm(config: FleetConfig, workload: FleetWorkload, shape: Any, capacity_bytes: int, speedup: float,
                root: str, faults: bool = False, scale: bool = False) -> tuple[list[dict], float, list[dict], list[str]]:
    from raylsm.bench.systems import RaylsmSystem, TierSession

    cluster = FleetCluster(config.nodes)
    tier = None
    try:
        tier = TierSession(config.nodes, capacity_bytes, shape.page_bytes, root, cluster.address, direct_io=True,
                           inline_reply_bytes=config.inline_bytes)
        tier.start()
        extra = {"extra_config": {**RaylsmSystem.EXTRA_CONFIG, "ray_address": cluster.address,
                                  "local_read_direct_io": True, "inline_call_bytes": config.inline_bytes}}
        specs = _replica_specs(config, workload, "raylsm", shape, capacity_bytes, speedup, root, extra)
        schedule = None
        if faults:
            schedule = fleet_faults.FaultSchedule(cluster, workload.duration_s / speedup, speedup)
        if scale:
            from raylsm.config import ClientConfig

            schedule = fleet_scale.ScaleSchedule(cluster, len(tier.shard_names), workload.duration_s / speedup,
                                                 speedup, ClientConfig().virtual_nodes)
            schedule.prepare()
        results, origin = run_replicas(specs, schedule.run if schedule else None)
        notes = [f"raylsm: {len(tier.shard_names)} shards on {config.nodes} simulated nodes, "
                 f"{tier.per_shard_capacity} B each in segments of {tier.segment_bytes} B; inline replies and "
                 f"calls up to {config.inline_bytes or 'Ray default'} B"] + tier.notes
        return results, origin, (schedule.events if schedule else []), notes
    finally:
        try:
            if tier is not None:
                tier.stop()
        finally:
            cluster.shutdown()


def _run_private_files(config, workload, shape, capacity_bytes, speedup, root):
    specs = _replica_specs(config, workload, "hicache_file_private", shape, capacity_bytes, speedup, root, {})
    for spec in specs:
        shutil.rmtree(spec["directory"], ignore_errors=True)
    results, origin = run_replicas(specs)
    return results, origin, [], [f"hicache_file_private: {config.replicas} directories of "
                                 f"{capacity_bytes // config.replicas} B, SGLang's LRU evictor each"]


def _run_mooncake(config, workload, shape, capacity_bytes, speedup, root):
    from raylsm.bench import mooncake

    with mooncake.MooncakeMaster(os.path.join(root, "mooncake")) as master:
        extra = {"mooncake": master.client_kwargs(capacity_bytes // config.replicas)}
        specs = _replica_specs(config, workload, "mooncake_store", shape, capacity_bytes, speedup, root, extra)
        results, origin = run_replicas(specs)
    return results, origin, [], [f"mooncake_store: {master.describe()}; {config.replicas} clients contributing "
                                 f"{capacity_bytes // config.replicas} B of DRAM each"]


def unavailable(system: str) -> str | None:
    """Why `system` cannot run on this machine (with how to fix it), or None."""
    if system == "mooncake_store":
        try:
            from raylsm.bench import mooncake
        except ImportError as error:
            return f"raylsm.bench.mooncake does not import ({error})"
        return mooncake.mooncake_unavailable()
    return None


# ---- the run ----------------------------------------------------------------------------------------


def data_root(config: FleetConfig) -> str:
    return os.path.abspath(config.data_dir or os.path.join(".raylsm", "bench", f"fleet-{os.getpid()}"))


def run(config: FleetConfig) -> dict:
    """Run every selected system in turn over the same routed workload; print the table; return the report."""
    from raylsm.bench import disk_budget, fleet_report

    config = config.validate()
    window, rate, speedup = config.effective()
    workload = load_workload(config)
    shape = pool_shape(config.profile, config.page_tokens, config.payload_scale)
    capacity_bytes = int(config.capacity_fraction * workload.distinct_pages * shape.page_bytes)
    root = data_root(config)
    made_root = not os.path.exists(root)
    # Systems run one after another and each one's data is removed before the next: one capacity at a time.
    disk_budget.require_free_space(root, capacity_bytes + workload.distinct_pages * 256, "raylsm bench fleet",
                                   hint="lower --capacity-fraction or --payload-scale, or use --quick")
    print(f"raylsm bench fleet: {len(workload.chains)} requests over {workload.duration_s:.0f} s of trace "
          f"(sample {rate:g}{f', first {window:g} s' if window else ''}), {workload.distinct_pages} distinct pages "
          f"of {shape.page_bytes} B, capacity {capacity_bytes} B; {config.replicas} replicas ({config.router}), "
          f"speedup {speedup:g} ({workload.duration_s / speedup:.0f} s per system)", file=sys.stderr)
    rows, series, faults, scale_events, notes = [], {}, [], [], []
    runners = {"raylsm": _run_raylsm, "hicache_file_private": _run_private_files, "mooncake_store": _run_mooncake}
    runs = [(system, system, {}) for system in config.systems]
    if config.faults:
        # The fault run follows a run of the same workload without faults: each event's loss is then
        # measured against the same requests undisturbed, not only against the (noisy) window before.
        runs.insert(runs.index(("raylsm", "raylsm", {})) + 1, (FAULTS_ROW, "raylsm", {"faults": True}))
    if config.scale:
        runs.insert(runs.index(("raylsm", "raylsm", {})) + 1, (SCALE_ROW, "raylsm", {"scale": True}))
    try:
        for label, system, options in runs:
            why = unavailable(system)
            if why:
                print(f"raylsm bench fleet: skipping {system}: {why}", file=sys.stderr)
                rows.append({"system": label, "skipped": why})
                continue
            os.makedirs(root, exist_ok=True)
            started = time.perf_counter()
            print(f"raylsm bench fleet: running {label}", file=sys.stderr)
            results, _origin, events, system_notes = runners[system](config, workload, shape, capacity_bytes,
                                                                     speedup, root, **options)
            row = fleet_report.system_row(label, results, config.page_tokens, config.prefill_tokens_per_s)
            row["wall_s"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            records = [record for result in results if "failure" not in result for record in result["records"]]
            series[label] = records
            if events and options.get("scale"):
                # The pre-event level itself, not 90% of it (the scale goals).
                # Windows of about a fifteenth of the run (50 to 100 requests): the events are a fifth apart.
                window = min(100, max(50, len(records) // 15))
                scale_events = fleet_faults.analyze(events, records, reference=series.get("raylsm"), recovered=1.0,
                                                    window_requests=window)
            elif events:
                faults = fleet_faults.analyze(events, records, reference=series.get("raylsm"))
            notes.extend(system_notes)
            shutil.rmtree(os.path.join(root, system), ignore_errors=True)
            shutil.rmtree(os.path.join(root, "shards"), ignore_errors=True)
    finally:
        if made_root or config.data_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    report = {
        "systems": rows, "replicas": config.replicas, "nodes": config.nodes, "router": config.router,
        "speedup": speedup, "faults": faults, "scale_events": scale_events, "requests": len(workload.chains),
        "duration_trace_s": round(workload.duration_s, 1), "capacity_bytes": capacity_bytes,
        "page_bytes": shape.page_bytes, "distinct_pages": workload.distinct_pages, "cores": os.cpu_count(),
        "sample_rate": rate, "time_window_s": window, "notes": notes + [
            "hit_token_ratio = pages loaded from L3 / pages asked from L3 after each replica's own simulated L1/L2 "
            f"({config.host_cache_fraction:g} of the run's distinct pages per replica)",
            "cross_replica_hit_pages: pages a replica loaded from L3 that it never wrote itself",
            "every page read back is checked byte for byte (wrong_pages); errors = exceptions that reached the caller"],
    }
    report["goals"] = fleet_report.goals(rows, faults, scale_events)
    print(fleet_report.format_table(report))
    if config.json_path:
        write_json(config.json_path, report)
        print(f"wrote {config.json_path}", file=sys.stderr)
    if config.plot_path:
        fleet_report.write_plot(config.plot_path, series, faults + scale_events,
                                f"raylsm bench fleet: {config.replicas} replicas, {config.nodes} nodes, "
                                f"{len(workload.chains)} requests, speedup {speedup:g}")
        print(f"wrote {config.plot_path}", file=sys.stderr)
    return report


# ---- command line -----------------------------------------------------------------------------------


def add_fleet_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Declare `raylsm bench fleet`'s arguments on `parser` (returns it)."""
    parser.add_argument("--trace", metavar="PATH", dest="trace_path", type=existing_file,
                        help="Mooncake-format trace (default: the packaged conversation trace)")
    parser.add_argument("--quick", action="store_true",
                        help=f"one conversation in {round(1 / QUICK['sample_rate'])} over the whole trace, speedup "
                             f"{QUICK['speedup']:g} (about 5 minutes on 2 cores)")
    parser.add_argument("--replicas", type=REPLICAS, default=4, help=f"SGLang replica processes, {REPLICAS.describe()} (default 4)")
    parser.add_argument("--nodes", type=NODES, default=4,
                        help=f"simulated Ray worker nodes, one shard each, {NODES.describe()} (default 4)")
    parser.add_argument("--speedup", type=SPEEDUP, metavar="X",
                        help=f"replay the trace X times faster than its timestamps, {SPEEDUP.describe()} "
                             f"(default {DEFAULT_SPEEDUP:g}; --quick {QUICK['speedup']:g})")
    parser.add_argument("--router", choices=ROUTERS, default="round_robin",
                        help="how requests reach replicas: round_robin (default, a plain load balancer) or session")
    parser.add_argument("--sample-conversations", type=SAMPLE_RATE, metavar="F", dest="sample_rate",
                        help=f"keep this fraction of conversations, {SAMPLE_RATE.describe()} (default 1; --quick "
                             f"{QUICK['sample_rate']:g})")
    parser.add_argument("--time-window", type=TIME_WINDOW_S, metavar="S", dest="time_window_s",
                        help="replay the requests within S seconds of the first one")
    parser.add_argument("--capacity-fraction", type=CAPACITY_FRACTION, default=0.1, metavar="F",
                        help="total L3 capacity of every system, as a fraction of the run's distinct page bytes (default 0.1)")
    parser.add_argument("--host-cache-fraction", type=HOST_CACHE_FRACTION, default=0.02, metavar="F",
                        help="each replica's simulated L1/L2, as a fraction of the run's distinct pages (default 0.02)")
    parser.add_argument("--payload-scale", type=PAYLOAD_SCALE, default=1 / 16, metavar="S",
                        help="scale page bytes down (default 1/16: 48 KiB pages)")
    parser.add_argument("--systems", metavar="LIST", type=CommaList(SYSTEMS),
                        help=f"comma-separated subset of {', '.join(SYSTEMS)} (default: all)")
    parser.add_argument("--faults", action="store_true",
                        help="run raylsm again (row raylsm_faults) with kill -9 of a shard at 1/3, another "
                             "shard's node removed at 2/3 and added back shortly after")
    parser.add_argument("--scale", action="store_true",
                        help="run raylsm again (row raylsm_scale) with one more node, standby until scale events: out "
                             "at 1/5, in with drain at 2/5, out at 3/5, in without drain at 4/5, the controller "
                             "killed at 9/10 (docs/elastic.md)")
    parser.add_argument("--inline-bytes", type=INLINE_BYTES, default=0, metavar="N", dest="inline_bytes",
                        help=f"raylsm: shard replies and replica calls up to N bytes travel inline in Ray's gRPC "
                             f"messages, not through the object stores (ShardConfig.inline_reply_bytes, the extra "
                             f"config's inline_call_bytes; docs/fleet.md), {INLINE_BYTES.describe()} (default 0: Ray's)")
    parser.add_argument("--json", metavar="PATH", dest="json_path", type=output_file, help="write the report as JSON")
    parser.add_argument("--plot", metavar="PATH", dest="plot_path", type=output_file,
                        help="write a PNG: hit ratio and get p99 over trace time per system, faults marked")
    parser.add_argument("--dir", metavar="PATH", dest="data_dir", type=directory_path,
                        help="data directory (default ./.raylsm/bench/fleet-<pid>, removed afterwards)")
    parser.add_argument("--seed", type=NumberRange(int, 0, 2**31 - 1), default=0, help="seed (default 0)")
    return parser


def config_from_args(args: argparse.Namespace) -> FleetConfig:
    return FleetConfig(
        trace_path=args.trace_path, time_window_s=args.time_window_s, sample_rate=args.sample_rate, quick=args.quick,
        replicas=args.replicas, nodes=args.nodes, speedup=args.speedup, router=args.router,
        capacity_fraction=args.capacity_fraction, host_cache_fraction=args.host_cache_fraction,
        payload_scale=args.payload_scale, systems=tuple(args.systems) if args.systems else SYSTEMS,
        faults=args.faults, scale=args.scale, inline_bytes=args.inline_bytes, json_path=args.json_path, plot_path=args.plot_path,
        data_dir=args.data_dir,
        seed=args.seed)


def run_fleet_command(args: argparse.Namespace) -> int:
    """Handler of `raylsm bench fleet`: 0 on success, 1 if a page was read back wrong or an error
    reached a replica."""
    report = run(config_from_args(args).validate())
    bad = sum(row.get("wrong_pages", 0) + row.get("errors", 0) for row in report["systems"])
    return 1 if bad else 0
