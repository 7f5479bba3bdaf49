"""Placement of shard actors: one per unit of the `raylsm_shard` resource on a node, pinned there.

Owned here: the actor options (name, namespace, detached, restarts, threads, node pinning) and the
shard naming scheme. Called by the controller. A shard is pinned to its node with a hard node
affinity: its data is on that node's SSD, so running it anywhere else would serve nothing. If the
process dies, Ray restarts it on the same node (it reopens its directory); if the node is gone,
the actor dies and the controller drops it from the ring.
"""

from __future__ import annotations

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raylsm.actors.shard_actor import ShardServer
from raylsm.config import ShardConfig

ShardActor = ray.remote(ShardServer)


def shard_name(node_id: str, index: int) -> str:
    """Stable name of the index-th shard of a node (also its directory name under data_dir)."""
    return f"shard-{node_id[:12]}-{index}"


def start_shard(node_id: str, name: str, config: ShardConfig, namespace: str):
    """Create (or get, if it exists) the named detached shard actor pinned to `node_id`."""
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
    ).remote(name, config)
