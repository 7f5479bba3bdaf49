"""The controller: discovers shard slots, starts and forgets shards, and publishes ring versions.

Owned here: the membership state machine. A plain class (Ray Serve's pattern): `controller_actor.py`
wraps it in a named, detached Ray actor and runs `reconcile_once` in a loop; every Ray call goes
through a RayClusterApi, so this logic is testable without Ray. Each step of the loop has its own
try/except, so one failing subsystem never stops the others. Not on the data path: clients only
poll `ring()` every few seconds. Thread-safety: one lock guards the state; `ring()` and `status()`
may be called from actor threads while the loop runs.

Shard states: starting (created, not yet answered a ping) -> serving (in the ring) -> unreachable
(in the ring, not answering: restarting after a crash; its keys are misses meanwhile) -> removed
(its node is gone: dropped from the ring, the ring version moves on).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from raylsm.config import TierConfig
from raylsm.controller.ray_api import RayClusterApi, ShardSlot

logger = logging.getLogger(__name__)

STARTING, SERVING, UNREACHABLE = "starting", "serving", "unreachable"


@dataclass
class ShardRecord:
    name: str
    node_id: str
    handle: Any
    state: str = STARTING
    last_seen: float = 0.0
    last_stats: dict = field(default_factory=dict)


class Controller:
    def __init__(self, config: TierConfig, api: RayClusterApi | None = None):
        self._config = config
        self._api = api or RayClusterApi(config.ray_namespace)
        self._lock = threading.Lock()
        self._shards: dict[str, ShardRecord] = {}
        self._ring_members: tuple[str, ...] = ()
        self._ring_placement: tuple[str, ...] = ()  # the members' node ids, in member order
        # Versions start at the controller's start time in milliseconds, so a restarted controller
        # publishes versions above any its previous incarnation did (one change per ms at most).
        self._ring_version = int(time.time() * 1000)
        self._errors: dict[str, str] = {}

    # ---- the loop -----------------------------------------------------------------------------

    def reconcile_once(self) -> None:
        for step in (self._reconcile_membership, self._reconcile_health, self._publish_ring):
            try:
                step()
                self._errors.pop(step.__name__, None)
            except Exception as error:  # one step's failure must not stop the others
                self._errors[step.__name__] = repr(error)
                logger.exception("controller step %s failed", step.__name__)

    def _reconcile_membership(self) -> None:
        shard = self._config.shard
        with self._lock:
            known = dict(self._shards)
        slots: dict[str, ShardSlot] = {}
        for slot in self._api.shard_slots(shard.resource_name, shard.disk_label):
            held = slots.get(slot.name)
            if held is not None and held.node_id != slot.node_id:
                # Two alive nodes claim one disk: a restarted node whose old incarnation Ray has not
                # declared dead yet, or a mislabelled node. Keep the shard where it runs now.
                logger.warning("nodes %s and %s both claim shard %s", held.node_id[:12], slot.node_id[:12], slot.name)
                record = known.get(slot.name)
                if record is not None and record.node_id == held.node_id:
                    continue
            slots[slot.name] = slot
        for name, slot in slots.items():
            record = known.get(name)
            if record is None:
                handle = self._api.start_shard(slot, shard)
                with self._lock:
                    self._shards[name] = ShardRecord(name, slot.node_id, handle)
                logger.info("started shard %s on node %s", name, slot.node_id)
            elif record.node_id != slot.node_id:
                # Its disk is back on a new node incarnation (a restarted node gets a new Ray id):
                # the shard moves there, keeps its ring place and reopens its directory.
                self._api.kill(record.handle)
                handle = self._api.start_shard(slot, shard)
                with self._lock:
                    record.node_id, record.handle = slot.node_id, handle
                logger.warning("shard %s moved to node %s with its disk", name, slot.node_id)
        alive_nodes = self._api.alive_node_ids()
        for name, record in known.items():
            if name not in slots and record.node_id not in alive_nodes:
                with self._lock:
                    self._shards.pop(name, None)
                logger.warning("node %s is gone: removed shard %s", record.node_id, name)

    def _reconcile_health(self) -> None:
        with self._lock:
            handles = {name: record.handle for name, record in self._shards.items()}
        answered = self._api.ping_all(handles, self._config.controller.ping_timeout_s)
        now = time.time()
        dead = []
        with self._lock:
            for name, answer in answered.items():
                record = self._shards.get(name)
                if record is None:
                    continue
                if answer == "ok":
                    record.state, record.last_seen = SERVING, now
                elif record.state == SERVING:
                    record.state = UNREACHABLE
                if answer == "dead":
                    dead.append(record)
        for record in dead:
            # Ray gave up restarting it (e.g. its directory stayed locked): start a new incarnation
            # on the same node; it keeps its ring place and reopens the same directory.
            logger.warning("shard %s died for good; starting it again on node %s", record.name, record.node_id)
            record.handle = self._api.start_shard(ShardSlot(record.name, record.node_id), self._config.shard)

    def _publish_ring(self) -> None:
        with self._lock:
            # A shard joins the ring once it has served; an unreachable one stays (Ray restarts it on
            # its node, and its keys come back with it); only a removed one leaves.
            members = tuple(sorted(name for name, record in self._shards.items()
                                   if record.state in (SERVING, UNREACHABLE)))
            placement = tuple(self._shards[name].node_id for name in members)
            if (members, placement) != (self._ring_members, self._ring_placement):
                # A new version also when a member moved to another node (clients re-resolve it).
                self._ring_members, self._ring_placement = members, placement
                self._ring_version += 1
                logger.info("ring version %d: %s", self._ring_version, ", ".join(members))

    # ---- queries ------------------------------------------------------------------------------

    def ring(self) -> dict:
        """The published ring: version and member shards, with what a client needs to reach them."""
        with self._lock:
            return {
                "version": self._ring_version,
                "shards": {name: {"node_id": self._shards[name].node_id} for name in self._ring_members
                           if name in self._shards},
                "namespace": self._config.ray_namespace,
            }

    def status(self, timeout_s: float = 5.0) -> dict:
        """Per-shard state and store stats (pulled now, with a timeout), plus the ring version."""
        with self._lock:
            records = dict(self._shards)
        stats = self._api.call_all({name: record.handle for name, record in records.items()}, "stats", timeout_s)
        shards = []
        for name, record in sorted(records.items()):
            value = stats.get(name)
            shard_stats = value if isinstance(value, dict) else {}
            if shard_stats:
                record.last_stats = shard_stats
            shards.append({"shard": name, "node_id": record.node_id, "state": record.state,
                           "stats": shard_stats or record.last_stats})
        with self._lock:
            version = self._ring_version
        return {"ring_version": version, "shards": shards, "errors": dict(self._errors)}

    def shard_handles(self) -> dict[str, Any]:
        with self._lock:
            return {name: record.handle for name, record in self._shards.items()}

    def shutdown_shards(self, timeout_s: float = 30.0) -> int:
        """Close every shard's store cleanly and kill the actors (`raylsm down`)."""
        handles = self.shard_handles()
        self._api.call_all(handles, "shutdown", timeout_s)
        for handle in handles.values():
            self._api.kill(handle)
        with self._lock:
            self._shards.clear()
            self._ring_members, self._ring_placement = (), ()
            self._ring_version += 1
        return len(handles)
