"""The controller's record of one shard and the states it moves through (raylsm.controller.controller
documents them). Shared by the controller and its elasticity steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STARTING, SERVING, UNREACHABLE, DRAINING, WARMING = "starting", "serving", "unreachable", "draining", "warming"
IN_RING = (SERVING, UNREACHABLE, DRAINING)


@dataclass
class ShardRecord:
    name: str
    node_id: str
    handle: Any
    state: str = STARTING
    last_seen: float = 0.0
    last_stats: dict = field(default_factory=dict)
    error: str = ""  # why its last incarnation died, until one serves again
