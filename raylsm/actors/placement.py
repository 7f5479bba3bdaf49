"""Placement of shard actors: one per unit of the `raylsm_shard` resource on a node, pinned there.

Owned here: the actor options (name, namespace, detached, restarts, threads, node pinning) and the
shard naming scheme (after the node's disk label, else its Ray node id). Called by the controller.
A shard is pinned to its node with a hard node affinity: its data is on that node's SSD, so running
it anywhere else would serve nothing. If the process dies, Ray restarts it on the same node (it
reopens its directory); if the node is gone, the actor dies and the controller drops it from the
ring, or moves it under the same name when its labelled disk shows up on a new node incarnation.
"""

from __future__ import annotations

import logging
import re
from typing import Mapping

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raylsm.actors.shard_actor import ShardServer
from raylsm.config import INLINE_ENV, ShardConfig

logger = logging.getLogger(__name__)

ShardActor = ray.remote(ShardServer)


_DISK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def disk_identity(node_id: str, labels: Mapping[str, str], disk_label: str) -> str:
    """What names a node's shards: its disk label's value if it has a usable one (it outlives the
    node's Ray id), else the first 12 hex digits of the Ray node id."""
    value = labels.get(disk_label, "")
    if value and _DISK_ID.fullmatch(value):
        return value
    if value:
        logger.warning("node %s: disk label %s=%r is not [A-Za-z0-9_.-]{1,63}; naming its shards after "
                       "the node id", node_id[:12], disk_label, value)
    return node_id[:12]


def shard_name(identity: str, index: int) -> str:
    """Name of the index-th shard of a disk identity (also its directory name under data_dir)."""
    return f"shard-{identity}-{index}"


def start_shard(node_id: str, name: str, config: ShardConfig, namespace: str):
    """Create (or get, if it exists) the named detached shard actor pinned to `node_id`."""
    options = {}
    if config.inline_reply_bytes:  # Ray reads it when the actor's worker process starts
        options["runtime_env"] = {"env_vars": {INLINE_ENV: str(config.inline_reply_bytes)}}
    return ShardActor.options(
        name=name,
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=0,  # a failed call is a miss; retrying it late helps nobody
        max_concurrency=config.max_concurrency,
        num_cpus=0,
        resources={config.resource_name: 1},
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        **options,
    ).remote(name, config)
