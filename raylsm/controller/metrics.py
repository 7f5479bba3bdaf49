"""The controller's Prometheus metrics: shards by state, the ring's version and size, split extents,
and the elasticity (target and standby shards, scale events).

Owned here: their names and labels, and turning one `Controller.status()` / `ring()` pair into
gauge and counter values. Called by the controller actor (`controller_actor.py`) from its own
metrics thread every EXPORT_PERIOD_S, never from the reconcile loop: `status()` asks every shard
for its stats (up to its timeout), and a slow shard must not delay membership. Names get Ray's `ray_` prefix;
docs/deploy.md lists them. Not thread-safe: one exporting thread.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge

# Ray exports custom metrics every 10 s (metrics_report_interval_ms); a faster export adds nothing.
EXPORT_PERIOD_S = 10.0
# The states `Controller.status()` reports: raylsm.controller.states', and "failed" (its last
# incarnation died, none serves yet). Spelled out, not imported: this module imports no more than
# Ray's metrics (tests/unit/test_cluster_files.py checks the two agree). A state not listed here is
# exported as it appears.
STATES = ("starting", "warming", "serving", "unreachable", "draining", "failed")


class ControllerMetrics:
    def __init__(self) -> None:
        self._shard_state = Gauge("raylsm_controller_shard_state",
                                  description="1 for the state a shard is in, 0 for the others (a shard the "
                                              "controller forgot: 0 in every state)", tag_keys=("shard", "state"))
        self._ring_version = Gauge("raylsm_controller_ring_version",
                                   description="version of the published ring (moves on every membership change)",
                                   tag_keys=())
        self._ring_shards = Gauge("raylsm_controller_ring_shards", description="shards in the published ring",
                                  tag_keys=())
        self._split_extents = Gauge("raylsm_controller_split_extents",
                                    description="hot extents split over several shards (docs/placement.md)",
                                    tag_keys=())
        self._target_shards = Gauge("raylsm_controller_target_shards",
                                    description="the target shard count (`raylsm scale`, autoscaling; the ring "
                                                "size while none was set)", tag_keys=())
        self._standby_shards = Gauge("raylsm_controller_standby_shards",
                                     description="shards out of the ring after a scale-in, their actors stopped",
                                     tag_keys=())
        self._scale_events = Counter("raylsm_controller_scale_events_total",
                                     description="scale events, by kind (scale, autoscale, scale_out, scale_in)",
                                     tag_keys=("kind",))
        self._scale_counted: dict[str, int] = {}  # what the counter was advanced to, by kind
        self._states = list(STATES)
        self._shards: set[str] = set()  # every shard ever exported (a forgotten one goes to 0)

    def export(self, status: dict, ring: dict) -> None:
        """Set the gauges from one `Controller.status()` and `Controller.ring()`."""
        states = {shard["shard"]: shard["state"] for shard in status["shards"]}
        self._states += sorted(set(states.values()) - set(self._states))
        self._shards |= set(states)
        for shard in sorted(self._shards):
            for state in self._states:
                self._shard_state.set(int(states.get(shard) == state), tags={"shard": shard, "state": state})
        self._ring_version.set(ring["version"])
        self._ring_shards.set(len(ring["shards"]))
        self._split_extents.set(status["split_extents"])
        scale = status.get("scale") or {}
        target = scale.get("target")
        self._target_shards.set(len(ring["shards"]) if target is None else target)
        self._standby_shards.set(len(scale.get("standby") or ()))
        for kind, count in (scale.get("event_counts") or {}).items():
            # (Counts since this controller started; a restarted controller's counter starts at 0
            # again, a reset that Prometheus' rate() and increase() absorb.)
            delta = count - self._scale_counted.get(kind, 0)
            if delta > 0:
                self._scale_events.inc(delta, tags={"kind": kind})
                self._scale_counted[kind] = count
