"""Every Ray call the controller makes, behind one small class (as Ray Serve's controller does), so
the membership logic in controller.py is unit-testable with a fake of this class and no Ray.

Called by the Controller only, from its reconcile thread and its actor methods.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import ray

from raylsm.actors.placement import disk_identity, shard_name, start_shard
from raylsm.config import ShardConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSlot:
    """A place where a shard should run: the index-th unit of the shard resource on a node."""

    name: str
    node_id: str


class RayClusterApi:
    def __init__(self, namespace: str):
        self._namespace = namespace
        self.death_causes: dict[str, str] = {}  # shard -> the last line of why its actor died

    def shard_slots(self, resource_name: str, disk_label: str) -> list[ShardSlot]:
        """One slot per unit of `resource_name` on every alive node, named after the node's disk."""
        slots = []
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            units = int(node.get("Resources", {}).get(resource_name, 0))
            identity = disk_identity(node["NodeID"], node.get("Labels") or {}, disk_label)
            slots.extend(ShardSlot(shard_name(identity, index), node["NodeID"]) for index in range(units))
        return slots

    def alive_node_ids(self) -> set[str]:
        return {node["NodeID"] for node in ray.nodes() if node.get("Alive")}

    def existing_shard(self, name: str) -> Any:
        """The running shard actor of that name, or None (creates nothing)."""
        try:
            return ray.get_actor(name, namespace=self._namespace)
        except ValueError:
            return None

    def request_shards(self, count: int, resource_name: str) -> None:
        """Ask Ray's autoscaler for `count` units of the shard resource in all (one bundle each,
        replacing any earlier request): it adds nodes of a type that offers them, and may remove idle
        ones beyond. Without an autoscaler the request is recorded and nothing happens."""
        from ray.autoscaler.sdk import request_resources

        try:
            request_resources(bundles=[{resource_name: 1}] * count)
        except Exception:  # noqa: BLE001 (no autoscaler to ask is not an error of the tier)
            logger.exception("request_resources(%d x %s) failed", count, resource_name)

    def start_shard(self, slot: ShardSlot, config: ShardConfig) -> Any:
        return start_shard(slot.node_id, slot.name, config, self._namespace)

    def ping_all(self, handles: dict[str, Any], timeout_s: float) -> dict[str, str]:
        """Ping every shard at once: "ok" if it answered in time, "dead" if Ray says the actor died
        for good (its restarts failed, or its store refused to open), "silent" otherwise
        (restarting, busy or slow). Why a dead shard died is kept in `death_causes`."""
        refs = {handle.ping.remote(): name for name, handle in handles.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
        answered = {}
        for ref in ready:
            try:
                answered[refs[ref]] = "ok" if ray.get(ref) else "silent"
            except ray.exceptions.ActorDiedError as error:
                answered[refs[ref]] = "dead"
                self.death_causes[refs[ref]] = death_cause(error)
            except ray.exceptions.RayError:
                answered[refs[ref]] = "silent"
        return {name: answered.get(name, "silent") for name in handles}

    def call_all(self, handles: dict[str, Any], method: str, timeout_s: float, *args: Any) -> dict[str, Any]:
        """Call `method` on every shard; the value, or the exception, per shard (None on timeout)."""
        return self.call_each({name: (handle, method, args) for name, handle in handles.items()}, timeout_s)

    def call_each(self, calls: dict[str, tuple[Any, str, tuple]], timeout_s: float) -> dict[str, Any]:
        """`call_all` with a method and arguments of each shard's own: {name: (handle, method,
        args)}; all in flight at once, one deadline."""
        refs = {getattr(handle, method).remote(*args): name for name, (handle, method, args) in calls.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
        results: dict[str, Any] = {name: None for name in calls}
        for ref in ready:
            try:
                results[refs[ref]] = ray.get(ref)
            except ray.exceptions.RayError as error:
                results[refs[ref]] = error
        return results

    def kill(self, handle: Any) -> None:
        try:
            ray.kill(handle, no_restart=True)
        except ray.exceptions.RayError:
            pass


def death_cause(error: BaseException) -> str:
    """The most telling line of an ActorDiedError: the exception its creation task raised (e.g. a
    CapacityError from the store), else Ray's own summary."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error:" in line and not line.startswith("ray.exceptions"):
            return line[:500]
    return (lines[0] if lines else repr(error))[:500]
