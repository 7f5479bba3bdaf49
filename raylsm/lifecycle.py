"""Bringing the tier up and down on a Ray cluster: find the cluster, start the controller, wait for
the shards, report them, close them, and start or stop the one Ray head raylsm may own.

Owned here: which Ray cluster a command acts on (`find_cluster`), the embedded default (a local Ray
head that `raylsm up` starts itself, offering `raylsm_shard` units, with shard data under
./.raylsm/data), joining an existing cluster, the status table, and taking the tier down. Called by
the `raylsm up|status|down` commands, the benchmarks and tests. Not on the data path.

The rule for Ray processes: raylsm stops only the embedded head it started, and only that head's
processes. `raylsm up` starts it with `ray start` in a session of its own (setsid) and a Ray temp
dir of its own, and records the session id, the temp dir and the address in a marker file under
the state directory; `raylsm down` signals the processes of that session and nothing else. (`ray
stop` cannot target one cluster: it stops every Ray process of the user on the host.) The private
temp dir also keeps the embedded head out of Ray's own record of this host's cluster
(<ray temp dir>/ray_current_cluster), so `address="auto"` keeps meaning the cluster this host is a
node of.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import ray

from raylsm.config import ShardConfig, TierConfig
from raylsm.controller.controller_actor import get_controller, start_controller
from raylsm.errors import CapacityError, ConfigError, RayLSMError, ShardUnavailableError

EMBEDDED_DIR = "./.raylsm"
EMBEDDED_DISK = "local"  # the embedded head's disk label: its shards are shard-local-<i>
EMBEDDED_MARKER = "embedded-ray.json"  # written when `raylsm up` started the Ray head itself
# (process group, seconds it gets to exit after SIGTERM) in the order `down` stops the embedded head:
# the raylet (its workers go with it), the other processes, the GCS; SIGKILL for what is left.
# NOTE: measured on the 2-core box: the raylet and its workers exit within 0.1 s, the GCS at once;
# one monitor process ignored SIGTERM for 20 s (so a single grace for all made every down take it).
EMBEDDED_STOP_GRACE_S = ((0, 5.0), (1, 3.0), (2, 3.0))


class RayNotFoundError(RayLSMError):
    """No Ray cluster answers where a command looked for one; the message says where it looked."""


@dataclass(frozen=True)
class RayCluster:
    """The Ray cluster a command acts on."""

    address: str  # what ray.init is given: host:port, or a ray:// address
    found_by: str  # how it was chosen, for the user: "--address", "RAY_ADDRESS", ...
    embedded: bool  # the head `raylsm up` started from this state directory (raylsm may stop it)


@dataclass(frozen=True)
class UpResult:
    ray_address: str
    started_ray: bool
    ring: dict
    found_by: str = ""


@dataclass(frozen=True)
class DownResult:
    ray_address: str | None  # None: the caller's own Ray connection (a library call)
    controller_found: bool
    shards_closed: int
    stopped_pids: tuple[int, ...]  # processes of the embedded head raylsm started (empty: Ray left running)


def absolute_data_dir(config: TierConfig) -> TierConfig:
    """Shard actors run in Ray's working directory: give them an absolute data_dir."""
    shard = dataclasses.replace(config.shard, data_dir=os.path.abspath(config.shard.data_dir))
    return dataclasses.replace(config, shard=shard)


def _ray_executable() -> str:
    candidate = os.path.join(os.path.dirname(sys.executable), "ray")
    return candidate if os.path.exists(candidate) else (shutil.which("ray") or "ray")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _answers(address: str, timeout_s: float = 1.0) -> bool:
    """Whether something accepts TCP connections at host:port (a ray:// address is not probed)."""
    if address.startswith("ray://"):
        return True
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except (OSError, ValueError):
        return False
    return True


# ---- which cluster ---------------------------------------------------------------------------------


def _marker_path(state_dir: str) -> str:
    return os.path.join(state_dir, EMBEDDED_MARKER)


def _read_marker(state_dir: str) -> dict | None:
    try:
        with open(_marker_path(state_dir)) as marker:
            record = json.load(marker)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def embedded_address(state_dir: str = EMBEDDED_DIR) -> str | None:
    """The address of the Ray head `raylsm up` started from this directory, if it still answers.

    Only this marker is trusted for the embedded head: Ray's own "auto" discovery can find another
    session's cluster, or a stale address file whose head is gone (and then hangs for minutes)."""
    address = (_read_marker(state_dir) or {}).get("address")
    return address if address and _answers(address) else None


def host_node_address() -> str | None:
    """The cluster this host is a node of, as Ray records it: `ray start` (head or worker) writes the
    cluster's address to <ray temp dir>/ray_current_cluster, and `ray stop` removes it. None if there
    is no record or nothing answers at the recorded address. (Not Ray's last-resort scan for any
    gcs_server process: that also finds private instances of other programs, which are no cluster
    this host belongs to.)"""
    try:
        from ray._common.utils import get_ray_address_file

        path = get_ray_address_file(None)
    except ImportError:  # another Ray layout: its default temp dir
        path = os.path.join(tempfile.gettempdir(), "ray", "ray_current_cluster")
    try:
        with open(path) as record:
            address = record.read().strip()
    except OSError:
        return None
    return address if address and _answers(address) else None


def _auto_address() -> str | None:
    """What Ray's address="auto" resolves to here (RAY_ADDRESS, the recorded cluster, a running GCS)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError, ImportError):
        return os.environ.get("RAY_ADDRESS") or host_node_address()


def _same_address(first: str | None, second: str | None) -> bool:
    if not first or not second:
        return False
    if first == second:
        return True
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(first) == canonicalize_bootstrap_address(second)
    except Exception:  # noqa: BLE001 (an address Ray cannot parse is not the same one)
        return False


def find_cluster(address: str | None = None, state_dir: str = EMBEDDED_DIR) -> RayCluster | None:
    """The Ray cluster a command acts on, or None if no address was given and none is found.

    `address` (the command's --address): "auto" is what Ray resolves it to on this host (RAY_ADDRESS,
    the cluster this host is a node of, a running local GCS; RayNotFoundError if none); anything else
    is used as given. Without an address, the cluster this host belongs to, in this order: RAY_ADDRESS,
    the head `raylsm up` started from `state_dir` (if it answers), the cluster this host's Ray node
    belongs to (`host_node_address`)."""
    embedded = embedded_address(state_dir)
    if address == "auto":
        resolved = _auto_address()
        if not resolved:
            raise RayNotFoundError("--address auto: Ray finds no cluster on this host (RAY_ADDRESS is unset, "
                                   "`ray start` has not run here, and no Ray process runs)")
        return RayCluster(resolved, "--address auto", _same_address(resolved, embedded))
    if address:
        return RayCluster(address, "--address", _same_address(address, embedded))
    from_env = os.environ.get("RAY_ADDRESS")
    if from_env and from_env != "auto":
        return RayCluster(from_env, "RAY_ADDRESS", _same_address(from_env, embedded))
    if embedded:
        return RayCluster(embedded, f"the Ray head `raylsm up` started from {state_dir}", True)
    node = host_node_address()
    if node:
        return RayCluster(node, "the cluster this host's Ray node belongs to", False)
    return None


def enable_local_token_auth() -> None:
    """Ray turns token authentication on by itself for an "auto" join when this machine holds a
    token (~/.ray/auth_token, RAY_AUTH_TOKEN), not for an explicit address; raylsm resolves
    addresses itself, so it does the same before every join. RAY_AUTH_MODE, if set, decides."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # an older Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def connect(cluster: RayCluster, namespace: str) -> None:
    """Join `cluster` as a driver (in Ray namespace `namespace`); RayNotFoundError at once if nothing
    answers at its address (ray.init would retry for a minute)."""
    if ray.is_initialized():
        return
    if not _answers(cluster.address, timeout_s=3.0):
        raise RayNotFoundError(f"no Ray cluster answers at {cluster.address} ({cluster.found_by})")
    enable_local_token_auth()
    ray.init(address=cluster.address, namespace=namespace, log_to_driver=False)


def ray_is_running(namespace: str = "raylsm", state_dir: str = EMBEDDED_DIR, address: str | None = None) -> bool:
    """Connect to the cluster `find_cluster` finds; False if there is none."""
    if ray.is_initialized():
        return True
    cluster = find_cluster(address, state_dir)
    if cluster is None:
        return False
    connect(cluster, namespace)
    return True


# ---- the embedded head -----------------------------------------------------------------------------


def embedded_temp_dir(state_dir: str = EMBEDDED_DIR) -> str:
    """The embedded head's own Ray temp dir. Short (Ray's socket paths live under it and must fit in
    108 bytes) and one per state directory and user."""
    digest = hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:10]
    return os.path.join(tempfile.gettempdir(), f"raylsm-{os.getuid()}-{digest}")


def start_embedded_ray(shards: int, num_cpus: int | None = None, state_dir: str = EMBEDDED_DIR,
                       disk_label: str = ShardConfig().disk_label) -> str:
    """Start a local Ray head offering `shards` units of the shard resource on free ports, its disk
    labelled (so the next `raylsm up` reopens the same shard directories), in a session and a Ray
    temp dir of its own; record what `stop_embedded_ray` needs in the marker file of `state_dir`;
    return the address."""
    from ray._private.services import get_node_ip_address

    os.makedirs(state_dir, exist_ok=True)
    temp_dir = embedded_temp_dir(state_dir)
    port = _free_port()
    command = [_ray_executable(), "start", "--head", f"--port={port}", f"--temp-dir={temp_dir}",
               f"--ray-client-server-port={_free_port()}", f"--dashboard-port={_free_port()}",
               "--include-dashboard=false", "--disable-usage-stats",
               f"--resources={json.dumps({'raylsm_shard': shards})}", f"--labels={disk_label}={EMBEDDED_DISK}"]
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    started_at = time.time()
    # start_new_session: `ray start` leads a session of its own that every process of this head
    # (GCS, raylet, agents, workers) inherits, and that nothing else on the host is in.
    starter = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    _, stderr = starter.communicate()
    address = f"{get_node_ip_address()}:{port}"
    record = {"address": address, "session_id": starter.pid, "temp_dir": temp_dir, "started_at": started_at,
              "shards": shards, "session_dir": _session_dir(temp_dir)}
    with open(_marker_path(state_dir), "w") as marker:  # also on failure: what it left is ours to stop
        json.dump(record, marker)
    if starter.returncode != 0:
        stop_embedded_ray(state_dir)
        raise subprocess.CalledProcessError(starter.returncode, command, stderr=stderr)
    return address


def _session_dir(temp_dir: str) -> str | None:
    latest = os.path.join(temp_dir, "session_latest")
    return os.path.realpath(latest) if os.path.exists(latest) else None


def _processes_in_session(session_id: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.getsid(int(entry)) == session_id and not _is_zombie(int(entry)):
                pids.append(int(entry))
        except OSError:  # gone meanwhile
            continue
    return pids


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def embedded_processes(state_dir: str = EMBEDDED_DIR) -> list[int]:
    """The live processes of the Ray head `raylsm up` started from `state_dir` (empty if none).

    They are the members of the session recorded in its marker, and only if one of them names the
    head's Ray temp dir on its command line (the GCS and the raylet do): a session id the kernel
    reused for someone else's processes after the head died never matches."""
    record = _read_marker(state_dir)
    if not record or not isinstance(record.get("session_id"), int) or not record.get("temp_dir"):
        return []
    members = _processes_in_session(record["session_id"])
    if not any(record["temp_dir"] in _cmdline(pid) for pid in members):
        return []
    return members


def stop_embedded_ray(state_dir: str = EMBEDDED_DIR) -> tuple[int, ...]:
    """Stop the embedded Ray head `raylsm up` started from `state_dir` and nothing else, in the order
    `ray stop` uses: SIGTERM to the raylet (its workers exit with it), then to the other processes
    of the head's session, then to the GCS, each group given a few seconds before the next; SIGKILL
    to whatever is left (a monitor process can ignore SIGTERM). Removes the marker. Returns the pids
    it signalled."""
    pids = embedded_processes(state_dir)
    names = {pid: _cmdline(pid) for pid in pids}

    def rank(pid: int) -> int:
        executable = names[pid].split(" ")[0]
        return 0 if executable.endswith("/raylet") else 2 if executable.endswith("/gcs_server") else 1

    for group_rank, grace_s in EMBEDDED_STOP_GRACE_S:
        group = [pid for pid in pids if rank(pid) == group_rank and _alive(pid)]
        for pid in group:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while group and time.monotonic() < deadline:
            time.sleep(0.1)
            group = [pid for pid in group if _alive(pid)]
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    try:
        os.unlink(_marker_path(state_dir))
    except FileNotFoundError:
        pass
    return tuple(pids)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError:  # exited meanwhile
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return not _is_zombie(pid)


# ---- up / status / down ----------------------------------------------------------------------------


def fit_local_capacity(config: TierConfig, shards: int, explicit: bool) -> tuple[TierConfig, str | None]:
    """For shards on this machine's `data_dir`: the config whose per-shard capacity the disk can
    hold (`shards` of them share it), and a note when it was lowered. An explicit capacity that does
    not fit is a CapacityError naming what fits; the default is lowered to 90% of what fits."""
    store = config.shard.store
    data_dir = config.shard.data_dir
    probe = data_dir
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "."
    used = 0
    for directory, _, files in os.walk(data_dir):
        used += sum(os.path.getsize(os.path.join(directory, name)) for name in files
                    if os.path.isfile(os.path.join(directory, name)))
    room = shutil.disk_usage(probe).free + used
    if store.capacity_bytes * shards <= room:
        return config, None
    fits = int(0.9 * room / shards) // 4096 * 4096
    if explicit or fits < 2 * store.segment_bytes:
        raise CapacityError(f"{shards} shard(s) of {store.capacity_bytes / 1e9:.1f} GB do not fit under {data_dir}: "
                            f"the disk holds {room / 1e9:.1f} GB for raylsm; use --capacity-gb "
                            f"{fits / 1e9:.1f} or less")
    shard = dataclasses.replace(config.shard, store=dataclasses.replace(store, capacity_bytes=fits))
    return dataclasses.replace(config, shard=shard), (
        f"capacity lowered to {fits / 1e9:.1f} GB per shard: the disk under {data_dir} holds {room / 1e9:.1f} GB "
        f"for {shards} shard(s) (set --capacity-gb to choose)")


def up(config: TierConfig, shards: int = 1, wait_s: float = 120.0, capacity_explicit: bool = True,
       state_dir: str = EMBEDDED_DIR) -> UpResult:
    """Start the controller on a Ray cluster and wait until the ring has every shard the cluster
    offers. Idempotent (a running controller is reused, with its config).

    Which cluster: the one this process is already connected to (a library caller's), else
    `find_cluster(config.ray_address)`; if none is found, an embedded local head is started with
    `shards` units. A cluster raylsm did not start must be given a data_dir (the shards' directory
    on the nodes that offer the shard resource): the default ./.raylsm/data is meant for the
    embedded head, and would put shard data under this working directory's path on every node.
    An embedded head keeps every shard under this machine's data_dir: their capacities must fit
    its disk together (`fit_local_capacity`; a default capacity is lowered, an explicit one that
    does not fit raises CapacityError before anything starts)."""
    chose_data_dir = config.shard.data_dir != ShardConfig().data_dir
    config = absolute_data_dir(config)
    started = False
    if ray.is_initialized():
        cluster = RayCluster(config.ray_address or "the connected Ray", "this process's Ray connection", False)
    else:
        cluster = find_cluster(config.ray_address, state_dir)
        if cluster is not None and not cluster.embedded and not chose_data_dir:
            raise ConfigError(
                f"Ray at {cluster.address} ({cluster.found_by}) was not started by raylsm: joining it needs "
                f"--data-dir DIR, the shard directory on the disks of the nodes that offer the "
                f"{config.shard.resource_name!r} resource ({ShardConfig().data_dir} is the embedded default)")
        if cluster is None:
            config, note = fit_local_capacity(config, shards, capacity_explicit)
            if note:
                print(f"raylsm: {note}", file=sys.stderr)
            address = start_embedded_ray(shards, disk_label=config.shard.disk_label, state_dir=state_dir)
            cluster = RayCluster(address, "an embedded local Ray head", True)
            started = True
        connect(cluster, config.ray_namespace)
    controller = start_controller(config)
    if wait_s > 0:
        ring = wait_for_shards(controller, config.shard.resource_name, wait_s)
    else:
        ring = ray.get(controller.ring.remote())
    return UpResult(cluster.address, started, ring, cluster.found_by)


def wait_for_shards(controller, resource_name: str, wait_s: float) -> dict:
    """Wait until every unit of the shard resource in the cluster has a serving shard in the ring."""
    deadline = time.monotonic() + wait_s
    while True:
        expected = int(sum(int(node.get("Resources", {}).get(resource_name, 0))
                           for node in ray.nodes() if node.get("Alive")))
        ring = ray.get(controller.reconcile_now.remote())
        if expected and len(ring["shards"]) >= expected:
            return ring
        if time.monotonic() > deadline:
            raise ShardUnavailableError(
                f"only {len(ring['shards'])} of {expected} shards are serving after {wait_s:.0f}s "
                f"(does any node offer the {resource_name!r} resource?)")
        time.sleep(0.5)


def status(namespace: str = "raylsm") -> dict:
    """The controller's status (ring version, shards with state and store stats), on the cluster this
    process is connected to; ValueError if no controller runs in `namespace`."""
    return ray.get(get_controller(namespace).status.remote())


def down(namespace: str = "raylsm", state_dir: str = EMBEDDED_DIR, address: str | None = None) -> DownResult:
    """Close every shard's store, kill the shards and the controller on a cluster, and stop the Ray
    head `raylsm up` started, if that is the cluster. Never stops a Ray that raylsm did not start.

    Which cluster: this process's Ray connection if it has one (a library caller's, whose Ray is its
    own to stop), else `find_cluster(address, state_dir)`. Without an address, a head that `raylsm
    up` started from `state_dir` is stopped even when it no longer answers (its processes are
    ours). RayNotFoundError if there is no cluster to act on."""
    cluster = None
    connected = ray.is_initialized()
    if not connected:
        cluster = find_cluster(address, state_dir)
        if cluster is None and (address or not embedded_processes(state_dir)):
            raise RayNotFoundError("no Ray cluster found on this host (no RAY_ADDRESS, no head `raylsm up` "
                                   f"started from {state_dir}, no Ray node started here with `ray start`); "
                                   "pass --address")
    ours = not connected and (cluster is None or cluster.embedded)
    controller_found, closed = False, 0
    if connected or cluster is not None:
        try:
            if not connected:
                connect(cluster, namespace)
            try:
                controller = get_controller(namespace)
            except ValueError:
                controller = None
            if controller is not None:
                controller_found = True
                closed = ray.get(controller.shutdown.remote())
                ray.kill(controller, no_restart=True)
        except Exception as error:  # noqa: BLE001 (our own head is stopped all the same)
            if not ours:
                raise
            print(f"raylsm: could not close the shards before stopping the embedded head: {error}", file=sys.stderr)
        finally:
            ray.shutdown()
    stopped = stop_embedded_ray(state_dir) if ours else ()
    return DownResult(cluster.address if cluster else None, controller_found, closed, stopped)
