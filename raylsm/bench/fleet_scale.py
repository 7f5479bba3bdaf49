"""Scale events under load for `raylsm bench fleet --scale` (docs/elastic.md).

Owned here: `ScaleSchedule`, run by the fleet driver while the raylsm replicas replay (row
`raylsm_scale`). Before the replicas start, `prepare` sets the tier's target to its N shards and adds
one more node offering `raylsm_shard`, which the controller keeps standby. Then, through the
controller's `scale` (what `raylsm scale --shards` calls):

  1/5 of the run   scale out N -> N+1 (the standby shard joins the ring);
  2/5              scale in N+1 -> N with drain (the leaving shard hands its newest pages over);
  3/5              scale out again;
  4/5              scale in without drain (the same event, for comparison);
  9/10             the controller killed (Ray restarts it; it must adopt the ring the shards keep).

Each event records when it was asked (`asked_t_s`) and when the ring changed (`t_s`, `back_t_s`: a
drain or a warm join runs in between), the fraction of keys the
ring change remapped (exact, over the hash circle: raylsm.router.HashRing.moved_fraction), the ring
versions before and after, and the drain's report. The hit-ratio analysis is fleet_faults.analyze's.

Called by `raylsm.bench.fleet`. The schedule runs in the driver's thread (it sleeps and calls Ray).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from raylsm.bench.fleet_faults import trace_s
from raylsm.router import HashRing

logger = logging.getLogger(__name__)

POLL_S = 0.2
SETTLE_TIMEOUT_S = 180.0
NAMESPACE = "raylsm"
SPARE_DISK = "fleet-disk-spare"
# (fraction of the run, kind, target shards relative to N, drain)
EVENTS = ((1 / 5, "scale_out", 1, None), (2 / 5, "scale_in_drain", 0, True), (3 / 5, "scale_out_again", 1, None),
          (4 / 5, "scale_in_no_drain", 0, False))
KILL_AT = 9 / 10


class ScaleSchedule:
    def __init__(self, cluster: Any, shards: int, run_wall_s: float, speedup: float, virtual_nodes: int) -> None:
        self.cluster = cluster
        self.shards = shards
        self.run_wall_s = run_wall_s
        self.speedup = speedup
        self.virtual_nodes = virtual_nodes
        self.events: list[dict] = []

    def _controller(self) -> Any:
        from raylsm.controller.controller_actor import get_controller

        return get_controller(NAMESPACE)

    def _ring(self) -> dict:
        import ray

        return ray.get(self._controller().ring.remote(), timeout=30)

    def _hash_ring(self, ring: dict) -> HashRing:
        return HashRing(sorted(ring["shards"]), self.virtual_nodes)

    def prepare(self) -> None:
        """Target N shards, then a spare node that the controller keeps standby."""
        import ray

        ray.get(self._controller().scale.remote(self.shards), timeout=30)
        self.cluster.add(SPARE_DISK)
        deadline = time.time() + SETTLE_TIMEOUT_S
        while time.time() < deadline:
            if ray.get(self._controller().scale_status.remote(), timeout=30)["standby"]:
                return
            time.sleep(POLL_S)
        raise RuntimeError("the spare node's shard did not become standby")

    def run(self, origin: float) -> None:
        def sleep_until(wall: float) -> None:
            time.sleep(max(0.0, wall - time.time()))

        try:
            for at, kind, extra, drain in EVENTS:
                sleep_until(origin + at * self.run_wall_s)
                self._scale(kind, self.shards + extra, drain, origin)
            sleep_until(origin + KILL_AT * self.run_wall_s)
            self._kill_controller(origin)
        except Exception as error:  # noqa: BLE001 (the run goes on; the report says the schedule broke)
            logger.exception("scale schedule failed")
            self.events.append({"kind": "schedule_failed", "why": repr(error)})

    def _scale(self, kind: str, target: int, drain: bool | None, origin: float) -> None:
        import ray

        before = self._ring()
        ray.get(self._controller().scale.remote(target, drain), timeout=30)
        asked = time.time()
        # t_s is when the ring changed (a drain or a warm join runs before it; until it ends the
        # ring and the hits are as before); asked_t_s when the scale event was asked.
        at = trace_s(asked, origin, self.speedup)
        event = {"kind": kind, "t_s": at, "asked_t_s": at, "target": target, "shards_before": len(before["shards"]),
                 "back_t_s": None}
        self.events.append(event)
        while time.time() - asked < SETTLE_TIMEOUT_S:
            status = ray.get(self._controller().scale_status.remote(), timeout=30)
            if status["members"] == target and not status["draining"] and not status.get("warming"):
                after = self._ring()
                changed = trace_s(time.time(), origin, self.speedup)
                event.update(t_s=changed, back_t_s=changed, shards_after=len(after["shards"]),
                             remapped_fraction=round(self._hash_ring(before).moved_fraction(self._hash_ring(after)), 4),
                             ring_version_before=before["version"], ring_version_after=after["version"],
                             settle_s=round(time.time() - asked, 2))
                warmed = [e for e in status["events"] if e["kind"] == "warmed"]
                if target > len(before["shards"]) and warmed:
                    event["warm"] = warmed[-1].get("moved")
                scale_in = [e for e in status["events"] if e["kind"] == "scale_in"]
                if target < len(before["shards"]) and scale_in:
                    event["drain"] = scale_in[-1].get("drain")
                return
            time.sleep(POLL_S)

    def _kill_controller(self, origin: float) -> None:
        import ray

        from raylsm.controller.controller_actor import get_controller

        before = self._ring()
        controller = self._controller()
        ray.kill(controller, no_restart=False)  # Ray restarts it (max_restarts=-1)
        killed = time.time()
        event = {"kind": "kill_controller", "t_s": trace_s(killed, origin, self.speedup), "back_t_s": None,
                 "shards_before": len(before["shards"])}
        self.events.append(event)
        time.sleep(1.0)
        while time.time() - killed < SETTLE_TIMEOUT_S:
            try:
                after = ray.get(get_controller(NAMESPACE).ring.remote(), timeout=5)
            except Exception:  # noqa: BLE001 (restarting)
                time.sleep(POLL_S)
                continue
            event.update(back_t_s=trace_s(time.time(), origin, self.speedup), shards_after=len(after["shards"]),
                         remapped_fraction=round(self._hash_ring(before).moved_fraction(self._hash_ring(after)), 4),
                         ring_version_before=before["version"], ring_version_after=after["version"],
                         ring_version_regressed=after["version"] < before["version"],
                         settle_s=round(time.time() - killed, 2))
            return
