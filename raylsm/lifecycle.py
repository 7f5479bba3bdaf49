"""Bringing the tier up and down: join or start Ray, start the controller, wait for the shards.

Owned here: the embedded default (a local Ray head started with `ray start`, offering
`raylsm_shard` units, and shard data under ./.raylsm/data), connecting to an existing cluster, and
the status table. Called by the `raylsm up|status|down` commands, the trace benchmark and tests.
Not on the data path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import ray

from raylsm.config import ShardConfig, TierConfig
from raylsm.controller.controller_actor import get_controller, start_controller
from raylsm.errors import CapacityError, ShardUnavailableError

EMBEDDED_DIR = "./.raylsm"
EMBEDDED_DISK = "local"  # the embedded head's disk label: its shards are shard-local-<i>
EMBEDDED_MARKER = "embedded-ray.json"  # written when `raylsm up` started the Ray head itself


@dataclass(frozen=True)
class UpResult:
    ray_address: str
    started_ray: bool
    ring: dict


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


def start_embedded_ray(shards: int, num_cpus: int | None = None, state_dir: str = EMBEDDED_DIR,
                       disk_label: str = ShardConfig().disk_label) -> str:
    """Start a local Ray head offering `shards` units of the shard resource on a free port, its disk
    labelled (so the next `raylsm up` reopens the same shard directories); record its address in the
    marker file of `state_dir`; return the address."""
    from ray._private.services import get_node_ip_address

    os.makedirs(state_dir, exist_ok=True)
    port = _free_port()
    command = [_ray_executable(), "start", "--head", f"--port={port}", "--include-dashboard=false",
               "--disable-usage-stats", f"--resources={json.dumps({'raylsm_shard': shards})}",
               f"--labels={disk_label}={EMBEDDED_DISK}"]
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    address = f"{get_node_ip_address()}:{port}"
    with open(os.path.join(state_dir, EMBEDDED_MARKER), "w") as marker:
        json.dump({"started_at": time.time(), "shards": shards, "address": address}, marker)
    return address


def embedded_address(state_dir: str = EMBEDDED_DIR) -> str | None:
    """The address of the Ray head `raylsm up` started from this directory, if it still answers.

    Only this marker is trusted: Ray's own "auto" discovery can find another session's cluster, or a
    stale address file whose head is gone (and then hangs for minutes)."""
    try:
        with open(os.path.join(state_dir, EMBEDDED_MARKER)) as marker:
            address = json.load(marker).get("address")
    except (OSError, ValueError):
        return None
    if not address:
        return None
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
    except (OSError, ValueError):
        return None
    return address


def enable_local_token_auth() -> None:
    """Ray turns token authentication on by itself for a local "auto" join, not for an explicit
    address; our embedded head is local, so do the same before joining it by address."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # an older Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def ray_is_running(namespace: str = "raylsm", state_dir: str = EMBEDDED_DIR) -> bool:
    """Connect to this directory's embedded Ray head if it is up; False if it is not."""
    if ray.is_initialized():
        return True
    address = embedded_address(state_dir)
    if address is None:
        return False
    enable_local_token_auth()
    ray.init(address=address, namespace=namespace, log_to_driver=False)
    return True


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


def up(config: TierConfig, shards: int = 1, wait_s: float = 120.0, capacity_explicit: bool = True) -> UpResult:
    """Join the configured Ray cluster (or a running local one, or start an embedded one), start the
    controller, and wait until the ring has every shard the cluster offers. Idempotent.

    An embedded head keeps every shard under this machine's data_dir: their capacities must fit
    its disk together (`fit_local_capacity`; a default capacity is lowered, an explicit one that
    does not fit raises CapacityError before anything starts)."""
    config = absolute_data_dir(config)
    started = False
    if config.ray_address:
        ray.init(address=config.ray_address, namespace=config.ray_namespace, log_to_driver=False)
    elif not ray_is_running(config.ray_namespace):
        config, note = fit_local_capacity(config, shards, capacity_explicit)
        if note:
            print(f"raylsm: {note}", file=sys.stderr)
        address = start_embedded_ray(shards, disk_label=config.shard.disk_label)
        started = True
        enable_local_token_auth()
        ray.init(address=address, namespace=config.ray_namespace, log_to_driver=False)
    controller = start_controller(config)
    if wait_s > 0:
        ring = wait_for_shards(controller, config.shard.resource_name, wait_s)
    else:
        ring = ray.get(controller.ring.remote())
    return UpResult(config.ray_address or "auto", started, ring)


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
    """The controller's status (ring version, shards with state and store stats)."""
    return ray.get(get_controller(namespace).status.remote())


def down(namespace: str = "raylsm", state_dir: str = EMBEDDED_DIR) -> int:
    """Close and kill every shard and the controller; stop Ray if `up` started it. Returns the
    number of shards stopped (0 if no tier was running)."""
    stopped = 0
    if ray_is_running(namespace, state_dir):
        try:
            controller = get_controller(namespace)
        except ValueError:
            controller = None
        if controller is not None:
            stopped = ray.get(controller.shutdown.remote())
            ray.kill(controller, no_restart=True)
        ray.shutdown()
    marker = os.path.join(state_dir, EMBEDDED_MARKER)
    if os.path.exists(marker):
        # NOTE: `ray stop` stops every Ray instance of this machine's user: it is meant for the
        # embedded single-machine default, the only case that leaves a marker.
        subprocess.run([_ray_executable(), "stop", "--force"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.unlink(marker)
    return stopped


def format_status(report: dict) -> str:
    """A fixed-width table of shards: node, state, pages, bytes, capacity, hit rate."""
    rows = [("shard", "node", "state", "pages", "live GB", "disk GB", "capacity GB", "hit rate")]
    for shard in report["shards"]:
        stats = shard.get("stats") or {}
        space = stats.get("space", {})
        counters = stats.get("counters", {})
        hits = counters.get("gets_hit", 0) + counters.get("gets_located", 0)
        lookups = hits + sum(v for k, v in counters.items() if k.startswith("gets_miss"))
        rows.append((shard["shard"], shard["node_id"][:12], shard["state"], str(space.get("live_pages", "-")),
                     f"{space.get('live_bytes', 0) / 1e9:.3f}", f"{space.get('disk_bytes', 0) / 1e9:.3f}",
                     f"{space.get('capacity_bytes', 0) / 1e9:.1f}",
                     f"{hits / lookups:.3f}" if lookups else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    for shard in report["shards"]:
        if shard.get("error"):
            lines.append(f"{shard['shard']} failed: {shard['error']}")
    lines.append(f"ring version {report['ring_version']}")
    if report.get("errors"):
        lines.append(f"controller errors: {report['errors']}")
    return "\n".join(lines)
