"""One SGLang replica of `raylsm bench fleet`: a separate OS process replaying its share of the trace.

Owned here: what runs inside a replica process (`replica_main`): its own host KV pool and simulated
L1/L2 (`HostCacheSim`), its own L3 backend object (a `RayLSMStorage`, a private `HiCacheFile` or a
`MooncakeStore`, built as SGLang builds them, see `build_system`), and the open-loop replay of the
requests the fleet's router gave it: each request starts at its trace time divided by the speedup
(or as soon as the previous one ends, if the replica is behind), then goes through the replay core's
`replay_request` (exists, get, verify every page byte for byte, back up). Calls are guarded as
SGLang's threads would need them to be (`GuardedSystem`): an exception is counted and becomes a
miss or a failed put, never a crash of the replica.

Called by `raylsm.bench.fleet` (spawned with multiprocessing's "spawn" start method: Ray and fork do
not mix). Single-threaded inside the process. Results go back as one picklable dict.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from typing import Any, Sequence

from raylsm.bench.replay import HostCacheSim, PoolShape, SlotPicker, SystemRun, replay_request

ERROR_SAMPLES = 5  # error messages kept per replica (the count is exact)


class GuardedSystem:
    """A system whose calls never raise: an exception counts in `errors` (with its time) and reads as
    a miss (exists/get 0) or a failed put. Also counts cross-replica hits: pages loaded that this
    replica never wrote (so another replica did)."""

    def __init__(self, system: Any, clock_origin: float) -> None:
        self.system = system
        self.pool = system.pool
        self.name = system.name
        self.errors = 0
        self.error_times: list[float] = []  # wall seconds since clock_origin
        self.error_samples: list[str] = []
        self.cross_replica_hit_pages = 0
        self.written: set[str] = set()
        self._origin = clock_origin

    def _failed(self, call: str, error: BaseException) -> None:
        self.errors += 1
        self.error_times.append(time.time() - self._origin)
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(f"{call}: {error!r}")

    def exists(self, keys: list[str], prefix: list[str]) -> int:
        try:
            return int(self.system.exists(keys, prefix))
        except Exception as error:  # noqa: BLE001 (counted: what would reach SGLang's thread)
            self._failed("exists", error)
            return 0

    def before_get(self, keys: list[str]) -> None:
        hook = getattr(self.system, "before_get", None)
        if hook is not None:
            hook(keys)

    def get(self, keys: list[str], prefix: list[str], slots: Sequence[int]) -> int:
        try:
            got = int(self.system.get(keys, prefix, slots))
        except Exception as error:  # noqa: BLE001
            self._failed("get", error)
            return 0
        written = self.written
        self.cross_replica_hit_pages += sum(1 for key in keys[:got] if key not in written)
        return got

    def set(self, keys: list[str], prefix: list[str], slots: Sequence[int]) -> bool:
        try:
            ok = bool(self.system.set(keys, prefix, slots))
        except Exception as error:  # noqa: BLE001
            self._failed("set", error)
            return False
        if ok:
            self.written.update(keys)
        return ok


def build_system(spec: dict, pool: Any) -> Any:
    """The L3 backend of one replica, as SGLang builds it: `spec["system"]` is `raylsm` (RayLSMStorage
    over the tier at `spec["ray_address"]`), `hicache_file_private` (HiCacheFile in the replica's own
    directory with capacity / replicas) or `mooncake_store` (SGLang's MooncakeStore, a client of the
    run's mooncake_master contributing capacity / replicas of DRAM)."""
    from raylsm.bench import systems

    name = spec["system"]
    model_name = spec["model_name"]
    if name == "raylsm":
        return systems.RaylsmSystem(pool, model_name, spec["extra_config"])
    if name == "hicache_file_private":
        system = systems.HiCacheFileSystem(pool, model_name, spec["directory"], spec["capacity_bytes"],
                                           cold_page_cache=spec["cold_page_cache"])
        system.name = name
        return system
    if name == "mooncake_store":
        from raylsm.bench.mooncake import MooncakeSystem

        return MooncakeSystem(pool, model_name, **spec["mooncake"])
    raise ValueError(f"unknown fleet system {name!r}")


def run_replica(spec: dict, wait_for_start: Any) -> dict:
    """Build the replica, report ready, wait for the common start (`wait_for_start()` returns the
    wall-clock time of trace time 0), replay, return the results."""
    from raylsm.bench.cpu_torchvision import forget_inherited_torchvision

    forget_inherited_torchvision()  # before torch and SGLang are imported
    import torch

    from raylsm.bench.host_pool import MiniHostKVPool, PagePattern

    for logger_name in ("sglang", "raylsm.sglang", "raylsm.client", "mooncake"):
        logging.getLogger(logger_name).setLevel(logging.ERROR)
    shape = PoolShape(**spec["shape"])
    page_tokens = spec["page_tokens"]
    pool_pages = 2 * 128
    pool = MiniHostKVPool(pool_pages * page_tokens, page_tokens, shape.layer_num, shape.head_num, shape.head_dim,
                          getattr(torch, shape.dtype_name))
    pattern = PagePattern(pool.page_bytes)
    picker = SlotPicker(pool.page_slots, spec["seed"])
    host = HostCacheSim(spec["host_capacity_pages"])
    system = build_system(spec, pool)
    try:
        origin = wait_for_start()
        guarded = GuardedSystem(system, origin)
        run = SystemRun(spec["system"], measured=True)
        speedup = spec["speedup"]
        records = []
        for index, arrival_s, prompt_tokens, chain in spec["requests"]:
            due = origin + arrival_s / speedup
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            started = time.time()
            start = host.access(chain)
            errors, wrong, cross, put_bytes = guarded.errors, run.wrong_pages, guarded.cross_replica_hit_pages, run.put_bytes
            gets = len(run.get_ms)
            replay_request(guarded, run, chain, [page.hex() for page in chain], start, pattern, picker)
            finished = time.time()
            records.append({
                "index": index, "trace_s": arrival_s, "queue_s": round(started - due, 4),
                "start_s": round(started - origin, 4), "end_s": round(finished - origin, 4),
                "prompt_tokens": prompt_tokens, "host_hit_pages": start, "asked_pages": len(chain) - start,
                "hit_pages": run.l3_hit_pages[-1], "load_ms": round(run.load_ms[-1], 3),
                "cross_replica_hit_pages": guarded.cross_replica_hit_pages - cross,
                "errors": guarded.errors - errors, "wrong_pages": run.wrong_pages - wrong,
                "put_pages": (run.put_bytes - put_bytes) // pool.page_bytes,
                "get_ms": [round(value, 3) for value in run.get_ms[gets:]],
            })
        try:
            stats = system.stats()
        except Exception as error:  # noqa: BLE001 (stats are a detail; the run stands)
            stats = {"error": repr(error)}
        return {
            "replica": spec["replica"], "system": spec["system"], "pid": os.getpid(), "records": records,
            "exists_ms": run.exists_ms, "get_ms": run.get_ms, "put_ms": run.put_ms,
            "get_bytes": run.get_bytes, "put_bytes": run.put_bytes,
            "failed_put_chunks": run.failed_put_chunks, "errors": guarded.errors,
            "error_times_s": guarded.error_times, "error_samples": guarded.error_samples,
            "wrong_pages": run.wrong_pages, "cross_replica_hit_pages": guarded.cross_replica_hit_pages,
            "stats": stats,
        }
    finally:
        try:
            system.close()
        except Exception:  # noqa: BLE001 (the process ends anyway)
            logging.getLogger(__name__).exception("closing %s failed", spec["system"])


def replica_main(spec: dict, ready: Any, start: Any, go: Any, results: Any) -> None:
    """Process entry point: build, `ready.put(replica)`, wait for `go`, replay from `start.value`, then
    `results.put((replica, result))` (a result with "failure" if the replica itself broke)."""
    replica = spec["replica"]

    def wait_for_start() -> float:
        ready.put(replica)
        go.wait()
        return start.value

    try:
        result = run_replica(spec, wait_for_start)
    except BaseException:  # noqa: BLE001 (the driver reports it; nothing else would see it)
        result = {"replica": replica, "system": spec["system"], "failure": traceback.format_exc()}
        try:
            ready.put(replica)  # do not leave the driver waiting for a replica that is gone
        except Exception:  # noqa: BLE001
            pass
    results.put((replica, result))
