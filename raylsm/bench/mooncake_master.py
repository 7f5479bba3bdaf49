"""The `mooncake_master` process of a bench: started on free localhost ports, stopped with its group.

Owned here: `MooncakeMaster` (a context manager around one `mooncake_master`: RPC port, embedded HTTP
metadata server and metrics port chosen free, eviction flags of a bench and optional local-disk
offload, its log in a file, SIGTERM then SIGKILL to its process group on exit, even on error),
`MasterEndpoints` (a running master's addresses, picklable, for clients in replica processes),
`master_binary()` and the version helpers. The client side (SGLang's `MooncakeStore` as a bench
system) is `raylsm.bench.mooncake`, which re-exports these names.

Called by `raylsm.bench.mooncake`, `raylsm.bench.fleet` and tests/unit/test_mooncake_system.py.
Thread safety: start and stop from one thread, the one that lives as long as the master (the master
gets SIGTERM when the thread that started it exits, see `_death_signal_setter`).
"""

from __future__ import annotations

import ctypes
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


def master_binary() -> str | None:
    """Path of `mooncake_master`: on PATH, else next to this interpreter (the venv's bin); None if neither."""
    found = shutil.which("mooncake_master")
    if found:
        return found
    candidate = Path(sys.executable).parent / "mooncake_master"
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


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
