"""Mooncake Store as a benchmarked L3 system: its master process, and SGLang's own backend over it.

Owned here:

- `mooncake_unavailable()`: why Mooncake cannot run on this machine (None when it can), with the
  install command, so a bench skips it with one clear line;
- `import_sglang_mooncake_store()`: SGLang's `MooncakeStore` class, imported with the CPU torchvision
  recipe of docs/install.md (the module imports the host pools and the metrics collector, which
  import transformers and torchvision);
- `MooncakeMaster`: a context manager around one `mooncake_master` on free localhost ports (RPC,
  embedded HTTP metadata server, metrics), with the eviction flags of a bench and optional local-disk
  offload; its log goes to a file; it is killed with its process group on exit;
- `MasterEndpoints`: a running master's addresses, picklable, for clients in replica processes
  (`MooncakeMaster.client_kwargs`);
- `MooncakeSystem`: the bench interface of `raylsm.bench.systems` (`name`, `pool`, `clear`, `exists`,
  `get`, `set`, `stats`, `close`) over SGLang's `MooncakeStore`, built by SGLang's
  `StorageBackendFactory` as the `mooncake` backend and driven on the zero-copy v1 path, as
  `HiCacheController` drives it (`batch_exists`, `batch_get_v1`, `batch_set_v1` with host indices).
  This process embeds the Mooncake client that contributes the DRAM segment (its whole capacity, or
  `segment_bytes` when several processes share one master).

Called by the benches (`raylsm.bench.trace_replay`; `raylsm.bench.fleet`, whose replica processes,
`raylsm.bench.fleet_replica`, build the systems) and by tests/unit/test_mooncake_system.py. Mooncake,
SGLang and torch are imported when a system is built, so importing this module stays cheap.

Thread safety: `MooncakeMaster` start and stop from one thread (the one that lives as long as the
master: the master gets SIGTERM when the thread that started it exits, see `_death_signal_setter`).
`MooncakeSystem` calls go to the embedded Mooncake client, which is thread-safe, but the bench
interface is driven from one replay thread.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

INSTALL_HINT = ("run `make bench-deps` (apt: libibverbs1 librdmacm1 libnuma1; pip: "
                "mooncake-transfer-engine-non-cuda into .venv)")
LOCALHOST = "127.0.0.1"
# The smallest DRAM segment a Mooncake client mounts (0.3.13: "Total size must be at least 16777216",
# client_buffer_allocation.cpp; setup then fails with -600).
MIN_SEGMENT_BYTES = 16 << 20

# torchvision for the CPU torch, installed outside site-packages by `make venv` (Makefile TORCHVISION_DIR).
TORCHVISION_DIR = Path(sys.prefix) / "cpu-torchvision"
_torchvision_ops = None  # the op schemas declared for torchvision (a torch Library dies with its object)


# ---- can it run here ------------------------------------------------------------------------------


def _import_mooncake_module() -> Any:
    """`mooncake.store`, the Python binding of the Mooncake client (store.so).

    NOTE: the embedded client logs with glog to this process's stderr, about 20 lines per client setup
    (among them a harmless HTTP 404 on the first metadata lookup, and teardown errors if the master
    went first). GLOG_minloglevel does not quiet it (it logs "before InitGoogleLogging"), and in the
    environment it would silence the master's log too, so it is left alone.
    """
    import mooncake.store

    return mooncake.store


def master_binary() -> str | None:
    """Path of `mooncake_master`: on PATH, else next to this interpreter (the venv's bin); None if neither."""
    found = shutil.which("mooncake_master")
    if found:
        return found
    candidate = Path(sys.executable).parent / "mooncake_master"
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def _import_torchvision() -> None:
    """Import torchvision (the process's own, else TORCHVISION_DIR's), declaring on a CPU torch the two
    ops its import registers fake kernels for (docs/install.md, "torchvision on a CPU torch"; the same
    recipe as tests/sglang/test_real_host_pools.py). Where torchvision's own ops load, nothing is declared."""
    global _torchvision_ops
    import torch

    while True:
        try:
            import torchvision  # noqa: F401
            return
        except ModuleNotFoundError as error:
            if error.name != "torchvision" or str(TORCHVISION_DIR) in sys.path or not TORCHVISION_DIR.is_dir():
                raise
            sys.path.append(str(TORCHVISION_DIR))
        except RuntimeError as error:
            if "torchvision::" not in str(error) or _torchvision_ops is not None:
                raise
            _torchvision_ops = torch.library.Library("torchvision", "DEF")
            _torchvision_ops.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _torchvision_ops.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")


@functools.lru_cache(maxsize=1)
def import_sglang_mooncake_store() -> type:
    """SGLang's `MooncakeStore` class. Its module imports `sglang.srt.mem_cache.pool_host` and
    `sglang.srt.observability.metrics_collector`, which need transformers and torchvision: on this CPU
    install the torchvision recipe is applied first (~10 s the first time, then cached).
    Raises ImportError (or the recipe's RuntimeError) when it cannot be imported."""
    import warnings

    _import_mooncake_module()
    _import_torchvision()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Only CUDA ... support AWQ/GGUF" from sglang.srt.layers
        from sglang.srt.mem_cache.storage.mooncake_store.mooncake_store import MooncakeStore
    return MooncakeStore


def mooncake_unavailable() -> str | None:
    """None when Mooncake Store can run here through SGLang's backend class; otherwise a one-line reason
    that ends with how to install it. Checks, in order: `mooncake.store` imports (its native library
    needs libibverbs and librdmacm even over TCP), `mooncake_master` is on PATH or in the venv's bin,
    and SGLang's `MooncakeStore` imports (with the torchvision recipe). The first call may take ~10 s."""
    try:
        _import_mooncake_module()
    except ModuleNotFoundError as error:
        return f"Mooncake Store is not installed ({error}): {INSTALL_HINT}"
    except (ImportError, OSError) as error:  # dlopen: "libibverbs.so.1: cannot open shared object file"
        return (f"mooncake.store does not load ({str(error).splitlines()[0]}); its native client needs "
                f"libibverbs1, librdmacm1 and libnuma1 even over TCP: {INSTALL_HINT}")
    if master_binary() is None:
        return f"mooncake_master is not on PATH nor in {Path(sys.executable).parent}: {INSTALL_HINT}"
    try:
        import_sglang_mooncake_store()
    except Exception as error:  # noqa: BLE001 (any failure means: not runnable here, say why)
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        return (f"SGLang's MooncakeStore does not import ({type(error).__name__}: {first}): rebuild .venv "
                f"with `make venv` (sglang {_sglang_version()} and the CPU torchvision), then {INSTALL_HINT}")
    return None


def _sglang_version() -> str:
    return _distribution_version("sglang")


def _mooncake_version() -> str:
    return _distribution_version("mooncake-transfer-engine-non-cuda")


def _distribution_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 (a version is only reported)
        return "(version unknown)"


# ---- the master -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCALHOST, 0))
        return probe.getsockname()[1]


def _accepts(port: int, timeout_s: float = 0.2) -> bool:
    try:
        socket.create_connection((LOCALHOST, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def read_metrics(metrics_url: str, timeout_s: float = 2.0) -> dict[str, float]:
    """A master's Prometheus counters and gauges without labels (e.g. `master_key_count`,
    `master_allocated_bytes`, `master_total_capacity_bytes`, `master_evicted_key_count`,
    `master_put_start_alloc_failures_total`) from `metrics_url`/metrics; {} when it does not answer."""
    try:
        with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=timeout_s) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "{" in line:
            continue
        name, _, value = line.partition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values


@dataclass(frozen=True)
class MasterEndpoints:
    """Where a running master answers: what a client in another process needs (picklable)."""

    master_server_address: str  # host:port of the RPC service
    metadata_server: str  # URL of the embedded HTTP metadata server
    metrics_port: int  # the metrics/admin HTTP server (on the master's host)

    @property
    def metrics_url(self) -> str:
        return f"http://{self.master_server_address.rpartition(':')[0]}:{self.metrics_port}"

    def metrics(self, timeout_s: float = 2.0) -> dict[str, float]:
        return read_metrics(self.metrics_url, timeout_s)


def _death_signal_setter() -> Any:
    """A preexec_fn for the master: in the forked child, SIGTERM when the parent thread dies (Linux
    PR_SET_PDEATHSIG), so a bench killed with SIGKILL leaves no master behind. None where prctl is not
    available. libc is loaded here, in the parent: the child only calls the resolved function (no
    dlopen after fork in a process that has threads)."""
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class MooncakeMaster:
    """One `mooncake_master` on localhost over TCP, for the length of a `with` block.

    On enter: picks free ports for the RPC service (`master_server_address`), the embedded HTTP
    metadata server (`--enable_http_metadata_server`, `metadata_server`) and the metrics/admin HTTP
    server (`metrics_url`; its default port 9003 would collide between two masters), starts the
    master in its own process group with its log (glog, to stderr) in `log_dir/mooncake_master.log`,
    and waits until both the RPC and the metadata port accept connections. A master that exits or
    does not answer within `start_timeout_s` raises RuntimeError with the tail of its log; a port
    taken in between (another process won the race) is retried with new ports, up to 3 times.
    On exit, even on error: SIGTERM to the process group, SIGKILL after `stop_timeout_s`.

    Eviction, as Mooncake 0.3.13 does it (mooncake-store/src/master_service.cpp, `EvictionThreadFunc`
    and `BatchEvict`): a master thread checks every 10 ms; when the DRAM pool's used ratio exceeds
    `eviction_high_watermark_ratio`, or a put found no room (that put fails with NO_AVAILABLE_HANDLE,
    it is not retried), it evicts about `eviction_ratio` of the evictable objects (more if usage is
    further above the mark). Evictable: no hard pin, no active soft pin, read lease expired. Victims are
    those with the oldest lease deadline: a lease is granted (now + `--default_kv_lease_ttl`, 10 s) by
    every exists and get (and by SGLang's set, which checks which pages exist first), so the policy is
    LRU over reads, with objects never read since their put (deadline at the epoch) evicted first, in
    no particular order, and objects read within the lease TTL not evictable at all. K and V of a page
    are two objects evicted independently (SGLang sends no group ids unless `enable_group_semantics`).

    Chosen: high watermark 0.95, the value SGLang's Mooncake guide starts its master with
    (sglang/srt/mem_cache/storage/mooncake_store/README.md), against Mooncake's default 0.90: with
    uniform page-sized objects there is no fragmentation to leave room for (a 16 MiB segment held
    682 objects of 24 KiB, 99.9% of it), and a higher mark uses more of the capacity the other systems
    get. `eviction_ratio` 0.05, Mooncake's default: a full pool drops to ~90%, the level HiCacheFile's
    LRU evicts down to (its eviction_ratio 0.9). `lease_ttl_ms` None keeps Mooncake's 10 s.
    NOTE: one eviction frees ~5% of the objects, so a write burst larger than that (a 128-page batch
    is 6 MiB with 48 KiB pages) into a full pool fails for the rest of the burst. Measured, 16 MiB pool,
    1,024 pages written in 128-page batches: 2 batches stored, 6 refused (306 pages kept), with 0 s or
    100 ms between batches alike. A pool 20 times a batch absorbs one; raise `eviction_ratio` for
    smaller pools.

    Local-disk offload (`offload=True`): `--enable_offload=true --offload_on_evict=true`: an object
    that eviction selects is queued for the owning client to write to its local disk (the client must
    enable SSD offload too: `MooncakeSystem(..., offload_dir=...)`), and its DRAM is freed once it is
    on disk and its read lease has expired. Measured on this machine (16 MiB pool, 24 KiB objects,
    1,800 puts, bucket backend flushing every 128 objects, 1 s client heartbeat): with the default 10 s
    lease, DRAM is not freed for 10 s after each offload (the eviction log repeats "evicted_count=0",
    "objects deferred for disk offload") and puts fail meanwhile; with `lease_ttl_ms=500`, 1,225
    objects were kept (631 in DRAM, 640 on disk) and all of the first 600 read back byte-exact, partly
    from disk, but 575 of the 1,200 puts after the pool filled failed while offloads were pending.
    Without `--offload_on_evict` (eager offload of every put: pass `extra_flags=["--enable_offload=true"]`)
    509 failed and 88 of the first 600 were lost.
    """

    LOG_NAME = "mooncake_master.log"

    def __init__(self, log_dir: str | os.PathLike, *, eviction_high_watermark_ratio: float = 0.95,
                 eviction_ratio: float = 0.05, lease_ttl_ms: int | None = None, offload: bool = False,
                 extra_flags: Sequence[str] = (), start_timeout_s: float = 30.0, stop_timeout_s: float = 5.0) -> None:
        if not 0.0 < eviction_high_watermark_ratio <= 1.0:
            raise ValueError(f"eviction_high_watermark_ratio must be in (0, 1], got {eviction_high_watermark_ratio}")
        if not 0.0 < eviction_ratio <= 1.0:
            raise ValueError(f"eviction_ratio must be in (0, 1], got {eviction_ratio}")
        self.log_dir = Path(log_dir)
        self.log_path = self.log_dir / self.LOG_NAME
        self.eviction_high_watermark_ratio = eviction_high_watermark_ratio
        self.eviction_ratio = eviction_ratio
        self.lease_ttl_ms = lease_ttl_ms
        self.offload = offload
        self.extra_flags = list(extra_flags)
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.process: subprocess.Popen | None = None
        self.rpc_port = self.metadata_port = self.metrics_port = 0

    # ---- addresses the clients use

    @property
    def master_server_address(self) -> str:
        return f"{LOCALHOST}:{self.rpc_port}"

    @property
    def metadata_server(self) -> str:
        return f"http://{LOCALHOST}:{self.metadata_port}/metadata"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOCALHOST}:{self.metrics_port}"

    def flags(self) -> list[str]:
        flags = [
            f"--rpc_port={self.rpc_port}", f"--rpc_address={LOCALHOST}",
            "--enable_http_metadata_server=true", f"--http_metadata_server_port={self.metadata_port}",
            f"--http_metadata_server_host={LOCALHOST}",
            f"--metrics_port={self.metrics_port}", f"--metrics_host={LOCALHOST}",
            f"--eviction_high_watermark_ratio={self.eviction_high_watermark_ratio}",
            f"--eviction_ratio={self.eviction_ratio}",
            "--logtostderr=true",
        ]
        if self.lease_ttl_ms is not None:
            flags.append(f"--default_kv_lease_ttl={int(self.lease_ttl_ms)}")
        if self.offload:
            flags += ["--enable_offload=true", "--offload_on_evict=true"]
        return flags + self.extra_flags

    # ---- lifecycle

    def __enter__(self) -> "MooncakeMaster":
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the master and wait until it answers (see the class docstring for the outcomes)."""
        if self.process is not None:
            raise RuntimeError("this MooncakeMaster was already started")
        binary = master_binary()
        if binary is None:
            raise RuntimeError(f"mooncake_master not found: {INSTALL_HINT}")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for attempt in range(3):
                self.rpc_port, self.metadata_port, self.metrics_port = _distinct_free_ports(3)
                if self._launch(binary, attempt):
                    return
            raise RuntimeError(f"mooncake_master exited at start 3 times (ports taken?); see {self.log_path}:\n"
                               f"{self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def _launch(self, binary: str, attempt: int) -> bool:
        """One start; True when it answers, False when it exited early (retry with other ports)."""
        with open(self.log_path, "a") as log:
            log.write(f"---- raylsm: start {attempt + 1}: {binary} {' '.join(self.flags())}\n")
            log.flush()
            self.process = subprocess.Popen([binary, *self.flags()], stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=_death_signal_setter())
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False
            if _accepts(self.rpc_port) and _accepts(self.metadata_port):
                return True
            time.sleep(0.05)
        raise RuntimeError(f"mooncake_master did not accept connections on ports {self.rpc_port} and "
                           f"{self.metadata_port} within {self.start_timeout_s:g} s; see {self.log_path}:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        """Kill the master and its process group (SIGTERM, then SIGKILL); idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        for sig, wait_s in ((signal.SIGTERM, self.stop_timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # anything else left in its group (none expected)
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def metrics(self, timeout_s: float = 2.0) -> dict[str, float]:
        """The master's counters and gauges (`read_metrics`); {} when it does not answer."""
        return read_metrics(self.metrics_url, timeout_s)

    def endpoints(self) -> MasterEndpoints:
        """The addresses of this (started) master, for clients in this or another process."""
        if not self.running:
            raise RuntimeError("this MooncakeMaster is not running (use it as a context manager)")
        return MasterEndpoints(self.master_server_address, self.metadata_server, self.metrics_port)

    def client_kwargs(self, segment_bytes: int, capacity_bytes: int | None = None, **options: Any) -> dict:
        """Keyword arguments of `MooncakeSystem(pool, model_name, **kwargs)` for a client of this master
        that contributes `segment_bytes` of DRAM (capacity_bytes / clients when several processes share
        the master; `capacity_bytes` defaults to it). Picklable: for replica processes."""
        return {"master": self.endpoints(), "capacity_bytes": capacity_bytes or segment_bytes,
                "segment_bytes": segment_bytes, **options}

    def describe(self) -> str:
        """One line for a report: version, address, eviction and offload settings."""
        lease = f"{self.lease_ttl_ms} ms" if self.lease_ttl_ms is not None else "10 s (default)"
        offload = "offload on evict" if self.offload else "no disk offload"
        extra = f", extra flags {' '.join(self.extra_flags)}" if self.extra_flags else ""
        return (f"mooncake_master {_mooncake_version()} at {self.master_server_address} (TCP, HTTP metadata "
                f"server), eviction high watermark {self.eviction_high_watermark_ratio:g}, eviction ratio "
                f"{self.eviction_ratio:g}, read lease {lease}, {offload}{extra}")


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = _free_port()
        if port not in ports:
            ports.append(port)
    return ports


# ---- the system -----------------------------------------------------------------------------------


def _storage_config(model_name: str, extra_config: dict) -> Any:
    """HiCacheStorageConfig of one TP-1 MHA rank with the page_first layout, as the replay's other systems."""
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig

    return HiCacheStorageConfig(
        tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1, is_mla_model=False,
        enable_storage_metrics=False, is_page_first_layout=True, model_name=model_name,
        extra_config=dict(extra_config))


def _leading(results: Sequence[Any]) -> int:
    for count, value in enumerate(results):
        if not value:
            return count
    return len(results)


class MooncakeSystem:
    """SGLang's `MooncakeStore` (the `mooncake` built-in backend) over a `MooncakeMaster`, on the zero-copy
    v1 path: `batch_exists`; `batch_get_v1` and `batch_set_v1` with the host pool's token indices, which
    Mooncake reads into and writes from directly (the pool's `kv_buffer` is registered with the client;
    each page is two objects, `{model}_{hash}_0_k` and `_v`, of `pool.part_bytes` each).

    `master` is a running `MooncakeMaster`, or its `MasterEndpoints` in another process (replica
    processes get `MooncakeSystem(pool, model_name, **master.client_kwargs(segment_bytes))`). This
    process embeds a Mooncake client that mounts a DRAM segment of `segment_bytes` (default
    `capacity_bytes`: one client holds the whole capacity; with N processes on one master, pass
    capacity_bytes // N; at least MIN_SEGMENT_BYTES, 16 MiB). `offload_dir` enables the client's
    local-disk offload (the master must have `offload=True`): `offload_bytes` caps the bytes on disk
    (bucket backend, LRU). `enable_group_semantics` passes SGLang's option of that name (K and V of a
    page share a Mooncake group id).

    Outcomes: `exists` and `get` count leading pages (a miss or a failed transfer ends the count);
    `set` is True only if every page is stored (pages already present count as stored, as SGLang skips
    them); a put that finds the pool full fails (False), and the master evicts for the next one.
    Construction raises RuntimeError when the client cannot set up against the master.
    """

    name = "mooncake_store"

    def __init__(self, pool: Any, model_name: str, master: MooncakeMaster | MasterEndpoints, capacity_bytes: int, *,
                 segment_bytes: int | None = None, offload_dir: str | os.PathLike | None = None,
                 offload_bytes: int | None = None, enable_group_semantics: bool = False) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be > 0, got {capacity_bytes}")
        if isinstance(master, MooncakeMaster):
            master = master.endpoints()  # RuntimeError if it is not running
        segment_bytes = capacity_bytes if segment_bytes is None else segment_bytes
        if segment_bytes < max(MIN_SEGMENT_BYTES, pool.page_bytes):
            raise ValueError(f"segment_bytes ({segment_bytes}) must be at least {MIN_SEGMENT_BYTES} (Mooncake's "
                             f"smallest segment) and one page ({pool.page_bytes} B)")
        import_sglang_mooncake_store()  # the torchvision recipe, before the factory imports the module
        from sglang.srt.mem_cache.hicache_storage import HiCacheStorageExtraInfo
        from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

        self._extra_info = HiCacheStorageExtraInfo
        self.pool = pool
        self.master = master
        self.capacity_bytes = capacity_bytes
        self.segment_bytes = segment_bytes
        self.offload_dir = None if offload_dir is None else str(offload_dir)
        self.extra_config = {
            "master_server_address": master.master_server_address,
            "metadata_server": master.metadata_server,
            "local_hostname": LOCALHOST,
            "protocol": "tcp",
            "device_name": "",
            "global_segment_size": segment_bytes,  # an int: bytes (a string must be "<n>gb" or bytes)
            "master_metrics_port": master.metrics_port,
            "check_server": False,  # the master answers already (MooncakeMaster waited for it)
            "enable_group_semantics": enable_group_semantics,
        }
        if self.offload_dir is not None:
            self._configure_offload(self.offload_dir, offload_bytes)
        # NOTE: the client's local buffer (staging for non-zero-copy puts and gets) is MooncakeStore's
        # hard-coded 16 MiB; the v1 path never uses it (only the 4 KiB warm-up put does).
        self.storage = StorageBackendFactory.create_backend("mooncake", _storage_config(model_name, self.extra_config),
                                                            pool)
        try:
            # As HiCacheController.attach_storage_backend: the pool is registered after construction.
            self.storage.register_mem_pool_host(pool)
            self.storage.on_host_pools_registered()
        except BaseException:
            self._close_client()
            raise
        self._closed = False

    def _configure_offload(self, directory: str, offload_bytes: int | None) -> None:
        """The client's SSD offload: SGLang forwards `enable_ssd_offload` and `ssd_offload_path` (it adds a
        per-rank subdirectory); the rest is read by the Mooncake library from MOONCAKE_OFFLOAD_*
        variables when the client sets up, so they are set in this process's environment (and stay
        set for later clients of this process)."""
        os.makedirs(directory, exist_ok=True)
        self.extra_config.update(enable_ssd_offload=True, ssd_offload_path=os.path.abspath(directory))
        env = {
            "MOONCAKE_OFFLOAD_STORAGE_BACKEND_DESCRIPTOR": "bucket_storage_backend",
            "MOONCAKE_OFFLOAD_BUCKET_EVICTION_POLICY": "lru",
            # The staging arena defaults to 1.25 GB; the bench's pages are small.
            "MOONCAKE_OFFLOAD_LOCAL_BUFFER_SIZE_BYTES": str(256 << 20),
            # Offload work is handed to the client on its heartbeat (10 s by default).
            "MOONCAKE_OFFLOAD_HEARTBEAT_INTERVAL_SECONDS": "1",
            # NOTE: a bucket file is written only once it holds this many objects (default 500): with
            # 5,000, nothing reached the disk in 18 s of overflow; with 128, 640 objects did.
            "MOONCAKE_OFFLOAD_BUCKET_KEYS_LIMIT": "128",
        }
        if offload_bytes is not None:
            env["MOONCAKE_OFFLOAD_BUCKET_MAX_TOTAL_SIZE"] = str(int(offload_bytes))
            env["MOONCAKE_OFFLOAD_TOTAL_SIZE_LIMIT_BYTES"] = str(int(offload_bytes))
        os.environ.update(env)

    # ---- the bench interface

    def clear(self) -> None:
        """Remove every object in the store (every client's pages: the master is this bench's alone).

        Not SGLang's `MooncakeStore.clear()`: its `remove_all()` skips objects under a read lease, so
        pages checked or read in the last lease TTL (10 s) survive it (seen: 64 of 64 pages still
        present right after a clear). `remove_all(force=True)` skips the lease check."""
        self.storage.store.remove_all(True)

    def exists(self, keys: list[str], prefix: list[str]) -> int:
        return self.storage.batch_exists(keys, extra_info=self._extra_info(prefix_keys=prefix))

    def get(self, keys: list[str], prefix: list[str], slots: Sequence[int]) -> int:
        indices = self.pool.host_indices(slots)
        return _leading(self.storage.batch_get_v1(keys, indices, self._extra_info(prefix_keys=prefix)))

    def set(self, keys: list[str], prefix: list[str], slots: Sequence[int]) -> bool:
        indices = self.pool.host_indices(slots)
        return all(self.storage.batch_set_v1(keys, indices, self._extra_info(prefix_keys=prefix)))

    def stats(self) -> dict:
        """The master's view of the pool: objects (two per page), bytes allocated and capacity, evicted
        objects, puts refused for want of room; plus the configured sizes. Counters are whole-master."""
        metrics = self.master.metrics()
        names = {
            "objects": "master_key_count",
            "allocated_bytes": "master_allocated_bytes",
            "dram_capacity_bytes": "master_total_capacity_bytes",
            "evicted_objects": "master_evicted_key_count",
            "put_alloc_failures": "master_put_start_alloc_failures_total",
            "disk_allocated_bytes": "master_allocated_file_size_bytes",
        }
        stats: dict[str, Any] = {key: int(metrics[name]) for key, name in names.items() if name in metrics}
        stats.update(capacity_bytes=self.capacity_bytes, segment_bytes=self.segment_bytes,
                     offload_dir=self.offload_dir)
        return stats

    def close(self) -> None:
        """Unmount this client's segment and stop the client (its pages leave the store); idempotent.
        SGLang's MooncakeStore.close() is a no-op (it relies on the destructor), so the client is
        closed here, before the master goes away."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self.storage.close()
        self._close_client()

    def _close_client(self) -> None:
        store = getattr(self.storage, "store", None) if hasattr(self, "storage") else None
        if store is not None:
            try:
                store.close()
            except Exception as error:  # noqa: BLE001 (closing is best effort; the master may be gone)
                logger.warning("closing the Mooncake client failed: %s", error)
