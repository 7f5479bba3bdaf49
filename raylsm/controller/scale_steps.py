"""The controller's elasticity steps (docs/elastic.md): adopting the shards' ring record after a
restart, the autoscaling policy's round, and moving the ring toward the target shard count.

Owned here: `ScaleSteps`, a part of `Controller` (raylsm.controller.controller) split out by
responsibility; it works on the controller's state (`_shards`, `_lock`, `_elastic`, `_api`, `_config`,
`_slots`) from the reconcile loop, and serves `scale` / `scale_status` to the actor's callers. The state
it adds lives in raylsm.controller.elastic, the policy in raylsm.controller.scaling.
"""

from __future__ import annotations

import logging
import time

from raylsm.controller.elastic import Leaving, newest_record, pick_victim
from raylsm.controller.ray_api import ShardSlot
from raylsm.controller.scaling import ScaleParams, curve_of, decide, window_curves
from raylsm.controller.states import DRAINING, IN_RING, SERVING, STARTING, WARMING, ShardRecord
from raylsm.errors import ConfigError

logger = logging.getLogger(__name__)


class ScaleSteps:
    def _adopt_ring(self, slots: dict[str, ShardSlot]) -> bool:
        """Before this controller starts any shard: take the newest ring record the running shards
        keep (a restarted controller), so the ring keeps its members, standby shards, target and a
        version above theirs. False (retry next round, at most 3 times) if shards exist and none
        answered."""
        handles = {name: handle for name in slots
                   if (handle := self._api.existing_shard(name)) is not None}
        answers = self._api.call_all(handles, "ring_record", self._config.controller.ping_timeout_s)
        record = newest_record(answers)
        answered = any(isinstance(answer, dict) for answer in answers.values())
        if handles and not answered and self._adopt_tries < 3:
            self._adopt_tries += 1
            logger.warning("no running shard answered for its ring record (try %d); waiting", self._adopt_tries)
            return False
        self._adopted = True
        if record is not None:
            with self._lock:
                self._ring_version = max(self._ring_version, int(record["version"]))
                self._elastic.adopt(record)
                self._adopted_members = set(record["members"])
            logger.info("adopted ring version %d from the shards: %d members, %d standby, target %s",
                        record["version"], len(record["members"]), len(self._elastic.standby),
                        self._elastic.target)
        return True

    def _reconcile_autoscale(self) -> None:
        """Every autoscale_period_s: read the serving shards' stats and move the target by the
        policy's answer (raylsm.controller.scaling.decide), unless a scale event is under way (the
        ring short of or above the target, a shard draining, warming or leaving), the window spans
        a ring change, or the last scale event is younger than scale_cooldown_s. A shard that does
        not answer is left out."""
        controller = self._config.controller
        now = time.monotonic()
        if not controller.autoscale or now - self._autoscaled_at < controller.autoscale_period_s:
            return
        self._autoscaled_at = now
        with self._lock:
            handles = {name: record.handle for name, record in self._shards.items() if record.state == SERVING}
            members = sum(record.state in IN_RING for record in self._shards.values())
        answers = self._api.call_all(handles, "stats", controller.ping_timeout_s)
        curves, rates = {}, []
        for name, stats in answers.items():
            if not isinstance(stats, dict):
                continue
            curve = curve_of(stats)
            if curve is not None:
                curves[name] = curve
            counters = stats.get("counters") or {}
            traffic = float(counters.get("puts_bytes", 0) + counters.get("gets_hit_bytes", 0))
            before = self._traffic_before.get(name)
            self._traffic_before[name] = (now, traffic)
            if before is not None and now > before[0] and traffic >= before[1]:
                rates.append((traffic - before[1]) / (now - before[0]))
        windows = window_curves(curves, self._curves_before)
        with self._lock:
            ring_version, spans_change = self._ring_version, self._ring_version != self._autoscale_ring_version
            self._autoscale_ring_version = ring_version
        if spans_change or sum(window.references for window in windows.values()) >= controller.scale_min_references:
            # A window too thin to judge grows until it is not (read against the same baseline next
            # period), as the tuning loop's does; one that spans a ring change is dropped.
            self._curves_before = curves
        if spans_change:
            # The window began under another ring (a shard joined or left, or this is the first
            # reading): its curves mix the two (cold misses on a new shard read as "capacity does
            # not help"). Decide on the next window, wholly under this ring.
            with self._lock:
                self._elastic.decision = {"target": None, "reason": "the window spans a ring change",
                                          "shards": members, "t": round(time.time(), 3)}
            if members >= max(controller.min_shards, 1):
                return
        params = ScaleParams(controller.min_shards, controller.max_shards, controller.scale_out_gain,
                             controller.scale_in_loss, controller.scale_min_references, controller.disk_bytes_per_s,
                             controller.disk_busy_fraction)
        elastic = self._elastic
        with self._lock:
            current = elastic.target if elastic.target is not None else members
            moving = (elastic.draining is not None or elastic.warming is not None or bool(elastic.leaving)
                      or members != current)
        if moving:
            # A scale event is under way (the ring has not reached the target yet, a shard drains,
            # warms or leaves): the next decision starts from where it ends. (Deciding from the
            # ring's size here once took a scale-out back while its node was starting.)
            with self._lock:
                elastic.decision = {"target": current, "reason": f"moving to {current} shards", "shards": members,
                                    "t": round(time.time(), 3)}
            return
        target, reason = decide(list(windows.values()), current, params, rates)
        with self._lock:
            elastic.decision = {"target": target, "reason": reason, "shards": members, "t": round(time.time(), 3),
                                "references": round(sum(curve.references for curve in windows.values()))}
            if target == current or now - elastic.last_event_at < controller.scale_cooldown_s:
                return
            elastic.target, elastic.last_event_at = target, now
            elastic.drain_next = controller.drain
            elastic.event("autoscale", target=target, shards=members, reason=reason)

    def _reconcile_scale(self) -> None:
        """Move the ring toward the target: ask Ray's autoscaler for target shard units, start standby
        shards while the ring is short, drain one surplus shard at a time and let it leave, and stop
        the shards that left once clients have moved off."""
        controller, client = self._config.controller, self._config.client
        elastic = self._elastic
        now = time.monotonic()
        for name, leaving in list(elastic.leaving.items()):
            if now >= leaving.stop_at:
                self._api.call_all({name: leaving.handle}, "shutdown", controller.ping_timeout_s)
                self._api.kill(leaving.handle)
                with self._lock:
                    del elastic.leaving[name]
                logger.info("shard %s stopped (standby)", name)
        self._warm_joining(now)
        if elastic.target is None:
            return
        if elastic.requested != elastic.target:
            self._api.request_shards(elastic.target, self._config.shard.resource_name)
            elastic.requested = elastic.target
        with self._lock:
            members = {name: record for name, record in self._shards.items() if record.state in IN_RING}
            if elastic.draining is not None and elastic.drain_report is not None:
                self._leave(elastic.draining, elastic.drain_report, now)
                members.pop(elastic.draining, None)
                elastic.draining = None
            if elastic.draining is not None:
                return
            short = elastic.target - len(members) - sum(r.state in (STARTING, WARMING) for r in self._shards.values())
            wake = [name for name in sorted(elastic.standby) if name in self._slots
                    and name not in elastic.leaving][:max(short, 0)]
            for name in wake:
                elastic.standby.discard(name)
        for name in wake:
            slot = self._slots[name]
            handle = self._api.start_shard(slot, self._config.shard)
            with self._lock:
                self._shards[name] = ShardRecord(name, slot.node_id, handle)
            elastic.event("scale_out", shard=name, target=elastic.target)
        if len(members) <= elastic.target:
            return
        with self._lock:
            serving = {name: (record.node_id, int(((record.last_stats or {}).get("space") or {}).get("live_bytes", 0)))
                       for name, record in members.items() if record.state == SERVING}
            victim = pick_victim(serving)
            if victim is None:
                return
            if not elastic.drain_next:
                self._leave(victim, None, now)
                return
            record = self._shards[victim]
            record.state = DRAINING
            remaining = sorted(set(members) - {victim})
        fraction = len(remaining) / len(members)
        timeout_s = controller.drain_timeout_s
        logger.info("draining shard %s: its newest %.0f%% to %d shards", victim, 100 * fraction, len(remaining))
        elastic.start_drain(victim, lambda: self._api.call_each(
            {victim: (record.handle, "drain", (remaining, client.virtual_nodes, fraction, timeout_s, None,
                                               controller.handover_bytes_per_s))},
            timeout_s + 30)[victim])

    def _warm_joining(self, now: float) -> None:
        """A warm join (ControllerConfig.warm_join): while a joining shard is warming, every serving
        member hands it the pages the ring with it routes to it (ShardServer.drain with `only`),
        all members at once; then it serves and the ring takes it. One joining shard at a time."""
        controller, client = self._config.controller, self._config.client
        elastic = self._elastic
        with self._lock:
            if elastic.warming is not None and elastic.warm_report is not None:
                record = self._shards.get(elastic.warming)
                if record is not None and record.state == WARMING:
                    record.state = SERVING
                elastic.event("warmed", shard=elastic.warming, moved=elastic.warm_report)
                elastic.warming = None
            if elastic.warming is not None:
                return
            joining = sorted(name for name, record in self._shards.items() if record.state == WARMING)
            members = {name: record.handle for name, record in self._shards.items() if record.state == SERVING}
        if not joining:
            return
        name = joining[0]
        if not members:
            with self._lock:
                self._shards[name].state = SERVING
            return
        ring = sorted([*members, name])
        timeout_s = controller.drain_timeout_s
        calls = {member: (handle, "drain", (ring, client.virtual_nodes, 1.0, timeout_s, name,
                                            controller.handover_bytes_per_s))
                 for member, handle in members.items()}

        def run() -> dict:
            reports = self._api.call_each(calls, timeout_s + 30)
            done = [report for report in reports.values() if isinstance(report, dict)]
            return {"pages": sum(report.get("pages", 0) for report in done),
                    "bytes": sum(report.get("bytes", 0) for report in done),
                    "failed": sum(report.get("failed", 0) for report in done),
                    "members": len(calls), "answered": len(done),
                    "seconds": max((report.get("seconds", 0.0) for report in done), default=0.0)}

        logger.info("warming shard %s: %d members hand it the pages it will own", name, len(calls))
        elastic.start_warm(name, run)

    def _leave(self, name: str, report: dict | None, now: float) -> None:
        """Take a shard out of the ring into standby; its actor stops after the grace. Caller holds
        the lock."""
        record = self._shards.pop(name, None)
        if record is None:
            return
        grace = leave_grace_s(self._config)
        self._elastic.standby.add(name)
        self._elastic.leaving[name] = Leaving(record.handle, now + grace)
        self._elastic.event("scale_in", shard=name, target=self._elastic.target, drained=report is not None,
                            drain=None if report is None else {k: v for k, v in report.items() if k != "by_owner"})

    def scale(self, shards: int, drain: bool | None = None) -> dict:
        """Set the tier's target shard count (`raylsm scale --shards N`): the loop asks Ray's autoscaler
        for that many `raylsm_shard` units, starts standby shards or takes surplus ones out of the
        ring (draining each first unless `drain` is False; default ControllerConfig.drain). Returns
        `scale_status()`. ConfigError if `shards` is not an int >= 1, or autoscale is on and it is
        outside [min_shards, max_shards]."""
        controller = self._config.controller
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ConfigError(f"shards must be an int >= 1, got {shards!r}")
        if controller.autoscale and not (controller.min_shards <= shards <= (controller.max_shards or shards)):
            raise ConfigError(f"shards = {shards} is outside the autoscaling bounds [{controller.min_shards}, "
                              f"{controller.max_shards or 'no ceiling'}]; change min_shards/max_shards")
        with self._lock:
            elastic = self._elastic
            elastic.target = shards
            elastic.drain_next = controller.drain if drain is None else bool(drain)
            elastic.last_event_at = time.monotonic()
            elastic.event("scale", target=shards, drain=elastic.drain_next)
        return self.scale_status()

    def scale_status(self) -> dict:
        """{"target", "members", "standby", "draining", "leaving", "requested", "decision", "events"}."""
        with self._lock:
            return self._elastic.status(name for name, r in self._shards.items() if r.state in IN_RING)


def leave_grace_s(config) -> float:
    """How long a shard that left the ring keeps serving before its actor stops: drain_grace_s, else
    10 s of hand-off reads (ClientConfig.handoff_s) after every client has the new ring."""
    client = config.client
    return config.controller.drain_grace_s or 2 * client.ring_refresh_s + client.call_timeout_s + 10.0


def advertised_leaving(config, leaving: dict, now: float) -> list[str]:
    """The leaving shards clients may still read from: those whose actor stops later than a client's
    next ring refresh and call from now, so no client calls a stopped shard."""
    client = config.client
    margin = client.ring_refresh_s + client.call_timeout_s
    return sorted(name for name, entry in leaving.items() if entry.stop_at - margin > now)
