"""Fixtures of the Ray tier tests: a real Ray instance per test module (one node via `ray.init`, or
several simulated nodes via `ray.cluster_utils.Cluster`), a controller that starts real shard actors
over a per-module temporary data directory, and helpers for page chains and shard processes.

Nothing here mocks Ray or RocksDB. Each test module gets its own Ray instance (module scope) and its
own data directory; every shard directory is data_dir/<shard name>, and shard names carry the node
id, so the simulated nodes of one machine never share a directory.

Ray is always started with an explicit address ("local" or the cluster's): another Ray instance on
this machine (another test run) is never joined by accident.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import time
from typing import Any, Callable, Sequence

import numpy as np
import pytest
import ray

from raylsm.config import RAY_NAMESPACE, TierConfig
from raylsm.router import ExtentConfig, ExtentRouter, HashRing

KiB = 1024
MiB = 1024 * KiB
PAGE_BYTES = 16 * KiB

# Small segments and RocksDB buffers: shards open fast and stay small.
SMALL_STORE = {"capacity_bytes": 256 * MiB, "segment_bytes": 8 * MiB, "block_cache_bytes": 1 * MiB,
               "write_buffer_bytes": 1 * MiB}
# Generous timeouts for the ordinary data path on a loaded 2-core box; fault tests use their own.
CALL_TIMEOUT_S = 10.0


def extent_config(client_config) -> ExtentConfig:
    """The extents a TierClient with this ClientConfig uses."""
    return ExtentConfig(client_config.extent_pages, getattr(client_config, "shallow_depth_pages", 0),
                        getattr(client_config, "shallow_extent_pages", 1),
                        getattr(client_config, "split_extent_pages", 16))


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.25) -> Any:
    """Poll `predicate` until it returns a truthy value (returned); fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


class Pages:
    """Deterministic page chains (SGLang-like 32-byte chained hashes) and page values."""

    namespace = hashlib.sha256(b"tests/ray namespace").digest()[:8]

    @staticmethod
    def chain(name: object, length: int) -> list[bytes]:
        hashes: list[bytes] = []
        for depth in range(length):
            previous = hashes[-1] if hashes else b""
            hashes.append(hashlib.sha256(previous + repr((name, depth)).encode()).digest())
        return hashes

    @staticmethod
    def value(seed: object, nbytes: int = PAGE_BYTES) -> np.ndarray:
        digest = hashlib.sha256(repr(("value", seed)).encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        return rng.integers(0, 256, size=nbytes, dtype=np.uint8)

    @classmethod
    def values(cls, hashes: Sequence[bytes], nbytes: int = PAGE_BYTES) -> list[np.ndarray]:
        return [cls.value(h, nbytes) for h in hashes]

    @staticmethod
    def buffers(count: int, nbytes: int = PAGE_BYTES, fill: int = 0xA5) -> list[np.ndarray]:
        return [np.full(nbytes, fill, dtype=np.uint8) for _ in range(count)]


@pytest.fixture(scope="session")
def pages() -> Pages:
    return Pages()


# ---- Ray instances ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """This module's data directory (shards make data_dir/<shard name> under it)."""
    return str(tmp_path_factory.mktemp("raylsm-data"))


@pytest.fixture(scope="module")
def local_ray(request):
    """A one-node Ray instance offering `SHARD_UNITS` (a module attribute, default 2) shard units."""
    units = getattr(request.module, "SHARD_UNITS", 2)
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=RAY_NAMESPACE,
             resources={"raylsm_shard": units}, object_store_memory=256 * MiB, log_to_driver=False)
    yield ray.get_runtime_context().get_node_id()
    ray.shutdown()


class SimulatedCluster:
    """A head node without CPUs or shard resource plus worker nodes offering one shard unit each."""

    def __init__(self, workers: int):
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        self.workers: list = []
        for _ in range(workers):
            self.add_worker(wait=False)
        self.cluster.wait_for_nodes()

    def add_worker(self, wait: bool = True, labels: dict[str, str] | None = None):
        """A worker node with one shard unit (and Ray node `labels`, e.g. the shard disk's)."""
        node = self.cluster.add_node(num_cpus=1, resources={"raylsm_shard": 1}, object_store_memory=128 * MiB,
                                     labels=labels or {})
        self.workers.append(node)
        if wait:
            self.cluster.wait_for_nodes()
        return node

    def worker_of(self, node_id: str):
        for node in self.workers:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def remove_worker(self, node) -> None:
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def shutdown(self) -> None:
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def ray_cluster(request):
    """`CLUSTER_WORKERS` (module attribute, default 3) simulated worker nodes, driver on the head."""
    cluster = SimulatedCluster(getattr(request.module, "CLUSTER_WORKERS", 3))
    try:
        ray.init(address=cluster.cluster.address, namespace=RAY_NAMESPACE, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


# ---- the tier --------------------------------------------------------------------------------------


class Tier:
    """A running tier: the controller actor, its config and helpers to reach shards and make clients."""

    def __init__(self, config: TierConfig):
        from raylsm.controller.controller_actor import start_controller

        self.config = config
        self.controller = start_controller(config)
        self._clients: list = []

    def ring(self) -> dict:
        return ray.get(self.controller.ring.remote(), timeout=60)

    def status(self) -> dict:
        return ray.get(self.controller.status.remote(), timeout=60)

    def reconcile(self) -> dict:
        return ray.get(self.controller.reconcile_now.remote(), timeout=60)

    def wait_for_shards(self, count: int, timeout_s: float = 60.0) -> dict:
        def ready():
            ring = self.ring()
            return ring if len(ring["shards"]) == count else None
        return wait_until(ready, timeout_s, f"a ring of {count} shards")

    @staticmethod
    def shard(name: str):
        return ray.get_actor(name, namespace=RAY_NAMESPACE)

    def info(self, name: str, timeout_s: float = 30) -> dict:
        return ray.get(self.shard(name).info.remote(), timeout=timeout_s)

    def shard_counters(self, name: str) -> dict:
        return ray.get(self.shard(name).stats.remote(), timeout=30)["counters"]

    def client_config(self, **client_overrides) -> TierConfig:
        raw = self.config.to_dict()
        raw["client"].update(client_overrides)
        return TierConfig.from_dict(raw)

    def client(self, controller: Any = None, **client_overrides):
        """A TierClient with this tier's config and client overrides; closed at module teardown."""
        from raylsm.client import TierClient

        client = TierClient(self.client_config(**client_overrides), controller=controller)
        self._clients.append(client)
        return client

    def report_reads(self) -> None:
        """Every client of this tier reports its pending fast-path reads, and they arrive."""
        for client in self._clients:
            client.report_reads(wait=True)

    def router(self, **client_overrides) -> ExtentRouter:
        """The routing of a client with these overrides, for the current ring."""
        ring = self.ring()
        config = self.client_config(**client_overrides).client
        return ExtentRouter(HashRing(sorted(ring["shards"]), config.virtual_nodes, max(ring["version"], 0)),
                            extent_config(config))

    @staticmethod
    def controller_entry() -> dict:
        """The controller's entry in Ray's actor table (node, pid, restarts). Ray's private state API:
        the public one needs the dashboard, which these tests do not start."""
        from ray._private import state
        from raylsm.config import CONTROLLER_NAME

        entries = [entry for entry in state.actors().values() if entry.get("Name") == CONTROLLER_NAME]
        return max(entries, key=lambda entry: entry.get("NumRestarts", 0), default={})

    def controller_node_id(self) -> str | None:
        """The node the controller actor runs on."""
        return self.controller_entry().get("Address", {}).get("NodeID")

    def reconcile_or_none(self) -> dict | None:
        """reconcile_now, or None while the controller cannot answer."""
        try:
            return self.reconcile()
        except ray.exceptions.RayError:
            return None

    def chain_where(self, pages: "Pages", name: object, length: int, accept: Callable[[list[str]], bool],
                    prefix: Sequence[bytes] = (), **client_overrides) -> list[bytes]:
        """A chain whose routing (the shard of every page, current ring) satisfies `accept`: shard
        names carry random node ids, so a fixed chain may route anywhere; pick one that fits."""
        router = self.router(**client_overrides)
        for attempt in range(200):
            chain = pages.chain((name, attempt), length)
            if accept(router.route_pages(pages.namespace, chain, list(prefix))):
                return chain
        pytest.fail(f"no chain of {length} pages routes as the test needs")

    def close(self) -> None:
        for client in self._clients:
            client.close()
        try:
            ray.get(self.controller.shutdown.remote(), timeout=60)
        except ray.exceptions.RayError:
            pass


@pytest.fixture(scope="module")
def tier_factory(data_dir):
    """make(shard=..., client=..., controller=...) -> a Tier over this module's data_dir; every tier
    is shut down (stores closed, shard actors killed) at module teardown."""
    made: list[Tier] = []

    def make(shard: dict | None = None, client: dict | None = None, controller: dict | None = None) -> Tier:
        raw = {
            "shard": {"data_dir": data_dir, "store": dict(SMALL_STORE), **(shard or {})},
            "client": {"call_timeout_s": CALL_TIMEOUT_S, "ring_refresh_s": 0.5, **(client or {})},
            # Hot-extent splitting and store tuning off unless a test turns them on: they re-route pages
            # and change admission mid-test.
            "controller": {"reconcile_period_s": 1.0, "split_extents": False, "tuning": False, **(controller or {})},
        }
        tier = Tier(TierConfig.from_dict(raw))
        made.append(tier)
        return tier

    yield make
    for tier in made:
        tier.close()


# ---- shard processes -------------------------------------------------------------------------------


class HeldIndexLock:
    """Holds a shard's RocksDB LOCK (a POSIX record lock) from the test process, so a restarted shard
    cannot open its directory until `release()`: its restart lasts exactly as long as the test wants."""

    def __init__(self, shard_path: str):
        self._fd = os.open(os.path.join(shard_path, "index", "LOCK"), os.O_RDWR)
        self.held = False

    def acquire(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.held = True
                return True
            except OSError:
                time.sleep(0.002)
        return False

    def release(self) -> None:
        if self._fd >= 0:
            if self.held:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def kill_and_hold(shard_path: str, pid: int) -> HeldIndexLock:
    """SIGKILL a shard process and take its index lock as soon as the kernel frees it."""
    lock = HeldIndexLock(shard_path)
    os.kill(pid, signal.SIGKILL)
    if not lock.acquire(timeout_s=5.0):
        lock.release()
        pytest.fail("could not take the killed shard's index lock before its restart did")
    return lock


@pytest.fixture
def index_lock():
    """kill_and_hold(path, pid) -> a HeldIndexLock released at teardown at the latest."""
    held: list[HeldIndexLock] = []

    def make(shard_path: str, pid: int) -> HeldIndexLock:
        lock = kill_and_hold(shard_path, pid)
        held.append(lock)
        return lock

    yield make
    for lock in held:
        lock.release()


def wait_for_new_incarnation(tier: Tier, name: str, old_pid: int, timeout_s: float = 60.0) -> dict:
    """Poll the shard's info() until a process other than `old_pid` answers."""
    def answered():
        try:
            info = tier.info(name, timeout_s=5)
        except (ray.exceptions.RayError, TimeoutError):
            return None
        return info if info["pid"] != old_pid else None
    return wait_until(answered, timeout_s, f"shard {name} to restart", interval_s=0.5)


def flip_segment_byte(segments_dir: str, pointer, at: int) -> None:
    """Flip one byte of a stored page's value on disk (byte `at` of the value the pointer names)."""
    from raylsm.store import format as fmt

    path = os.path.join(segments_dir, fmt.segment_file_name(pointer.segment_id))
    fd = os.open(path, os.O_RDWR)
    try:
        offset = pointer.offset + at
        original = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([original[0] ^ 0xFF]), offset)
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.fixture(scope="session")
def tools():
    """Module-level helpers, reachable from tests without importing this conftest."""
    class _Tools:
        wait_until = staticmethod(wait_until)
        wait_for_new_incarnation = staticmethod(wait_for_new_incarnation)
        flip_segment_byte = staticmethod(flip_segment_byte)
        extent_config = staticmethod(extent_config)
        PAGE_BYTES = PAGE_BYTES
        CALL_TIMEOUT_S = CALL_TIMEOUT_S
    return _Tools()
