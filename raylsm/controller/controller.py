"""The controller: discovers shard slots, starts and forgets shards, and publishes ring versions.

Owned here: the membership state machine. A plain class (Ray Serve's pattern): `controller_actor.py`
wraps it in a named, detached Ray actor and runs `reconcile_once` in a loop; every Ray call goes
through a RayClusterApi, so this logic is testable without Ray. Each step of the loop has its own
try/except, so one failing subsystem never stops the others. Not on the data path: clients only
poll `ring()` every few seconds. Thread-safety: one lock guards the state; `ring()` and `status()`
may be called from actor threads while the loop runs.

Shard states: starting (created, not yet answered a ping) -> serving (in the ring) -> unreachable
(in the ring, not answering: restarting after a crash; its keys are misses meanwhile) -> removed
(its node is gone: dropped from the ring, the ring version moves on). Scaling in adds draining (in
the ring, handing its pages over), then leaving and standby (raylsm.controller.elastic).

A controller that dies loses nothing the tier needs: shards serve and clients route by the last ring
meanwhile; every shard keeps the ring record (members, standby, target, version) on its disk, and a
restarted controller adopts the newest one before it starts any shard, so it publishes the same
members under a higher version (no key remapped) and rebuilds tunings, namespaces and splits from
the shards too.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from raylsm import namespaces
from raylsm.config import TierConfig
from raylsm.controller.elastic import Elasticity
from raylsm.controller.ray_api import RayClusterApi, ShardSlot
from raylsm.controller.scale_steps import ScaleSteps, advertised_leaving
from raylsm.controller.states import DRAINING, IN_RING, SERVING, STARTING, UNREACHABLE, WARMING, ShardRecord
from raylsm.controller.tuning import ShardTuning, TuningParams, tune, window_of
from raylsm.controller.frontiers import FrontierRelay
from raylsm.store.mini_sims import candidate_of

logger = logging.getLogger(__name__)

class Controller(ScaleSteps):
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
        # The namespace table (raylsm.namespaces); rebuilt from the shards after a restart.
        self._namespaces: dict = dict(namespaces.EMPTY_TABLE)
        # Split extents (docs/placement.md): extent id -> when a shard last reported it hot. Rebuilt
        # from the shards after a restart (their sketches outlive the controller).
        self._splits: dict[bytes, float] = {}
        self._splits_version = self._ring_version
        # Not published until one round asked the shards: a restarted controller must not tell
        # clients "no splits" and make them re-key the hot extents twice.
        self._splits_known = False
        # Store tuning (raylsm.controller.tuning): each shard's tuning, the version each shard last
        # acknowledged, and its last reading of its miniature simulations. Rebuilt from the shards
        # after a restart (each reports the version and choice it runs).
        self._tunings: dict[str, ShardTuning] = {}
        self._tuning_acked: dict[str, int] = {}
        self._sims_seen: dict[str, dict] = {}
        self._tuning_version = self._ring_version
        self._tuned_at = -float("inf")
        # Elasticity (raylsm.controller.elastic): target, standby, drains; the ring record each shard
        # keeps (adopted from the shards once, before any shard starts) and the version each holds.
        self._elastic = Elasticity()
        self._elastic.drain_next = config.controller.drain
        self._adopted = False
        self._adopt_tries = 0
        self._adopted_members: set[str] = set()
        self._record_key: tuple = ()
        self._record_acked: dict[str, int] = {}
        self._slots: dict[str, ShardSlot] = {}
        self._curves_before: dict = {}
        self._traffic_before: dict[str, tuple[float, float]] = {}
        self._autoscaled_at = -float("inf")
        self._autoscale_ring_version = -1  # the ring version at the autoscaling policy's last reading
        self._frontiers = FrontierRelay()  # eviction forwarding's frontier reports (raylsm.actors.forwarding)

    # ---- the loop -----------------------------------------------------------------------------

    def reconcile_once(self) -> None:
        for step in (self._reconcile_membership, self._reconcile_health, self._reconcile_namespaces,
                     self._reconcile_splits, self._reconcile_tuning, self._reconcile_frontiers,
                     self._reconcile_autoscale,
                     self._reconcile_scale, self._publish_ring):
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
        if not self._adopted and not self._adopt_ring(slots):
            return  # the shards that exist did not say which ring they serve: start nothing yet
        elastic = self._elastic
        with self._lock:
            self._slots = slots
            elastic.standby &= set(slots)  # a standby shard's node is gone: forget it
            running = len(known)
        for name, slot in slots.items():
            record = known.get(name)
            if record is None:
                if not elastic.may_start(name, running):
                    if name not in elastic.leaving and name not in elastic.standby:
                        with self._lock:
                            elastic.standby.add(name)  # the target is met: kept for a scale-out
                        logger.info("shard slot %s on node %s is standby (target %s)", name, slot.node_id,
                                    elastic.target)
                    continue
                handle = self._api.start_shard(slot, shard)
                state = UNREACHABLE if name in self._adopted_members else STARTING
                with self._lock:
                    self._shards[name] = ShardRecord(name, slot.node_id, handle, state)
                running += 1
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
                    record.last_seen, record.error = now, ""
                    # A shard joining a ring that holds pages is warmed first: the published ring's,
                    # or, in a restarted controller's first round, the adopted one's.
                    holds_pages = self._ring_members or self._adopted_members
                    if record.state == STARTING and self._config.controller.warm_join and holds_pages \
                            and name not in self._adopted_members:
                        record.state = WARMING
                    elif record.state not in (DRAINING, WARMING):
                        record.state = SERVING
                elif record.state == SERVING:
                    record.state = UNREACHABLE
                if answer == "dead":
                    dead.append(record)
        causes = getattr(self._api, "death_causes", {})
        for record in dead:
            # Ray gave up restarting it (e.g. its directory stayed locked, or its store refused to
            # open): start a new incarnation on the same node; it keeps its ring place and reopens
            # the same directory. Why it died is shown by `raylsm status`.
            record.error = causes.get(record.name, "died")
            logger.warning("shard %s died for good (%s); starting it again on node %s", record.name, record.error,
                           record.node_id)
            record.handle = self._api.start_shard(ShardSlot(record.name, record.node_id), self._config.shard)

    def _reconcile_namespaces(self) -> None:
        """Merge in any newer namespace table a shard holds (after a controller restart), then push
        the table to every shard that lacks it or has not synced since it (re)started."""
        with self._lock:
            handles = {name: record.handle for name, record in self._shards.items()}
        timeout_s = self._config.controller.ping_timeout_s
        answers = self._api.call_all(handles, "namespace_status", timeout_s)
        version = lambda: self._namespaces["version"]  # noqa: E731
        newer = {name: handles[name] for name, answer in answers.items()
                 if isinstance(answer, dict) and answer.get("version", 0) > version()}
        if newer:
            tables = self._api.call_all(newer, "namespace_table", timeout_s)
            with self._lock:
                self._namespaces = namespaces.merged(self._namespaces, *(
                    table for table in tables.values() if isinstance(table, dict)))
            logger.info("namespace table version %d rebuilt from shards %s", version(), sorted(newer))
        behind = {name: handles[name] for name, answer in answers.items() if isinstance(answer, dict)
                  and (answer.get("version", 0) < version() or not answer.get("synced", True))}
        if behind:
            self._api.call_all(behind, "sync_namespaces", timeout_s, self.namespace_table())

    def namespace_table(self) -> dict:
        with self._lock:
            return dict(self._namespaces)

    def clear_namespace(self, base_id: bytes, timeout_s: float = 10.0) -> dict:
        """Move a namespace to its next generation and retire its current id on every shard.

        Returns {"ok", "generation", "unconfirmed"}: ok only if every shard the controller knows
        applied the new table (deleted the retired id's pages and refuses writes to it) within
        `timeout_s`. A shard that did not answer still gets the table before it serves reads again
        (shards are fenced until synced after a restart, and this loop pushes it), but a shard that is
        alive and stuck cannot be vouched for, so the clear is reported unconfirmed."""
        with self._lock:
            self._namespaces = namespaces.cleared(self._namespaces, base_id)
            table = dict(self._namespaces)
            handles = {name: record.handle for name, record in self._shards.items()}
        answers = self._api.call_all(handles, "sync_namespaces", timeout_s, table)
        unconfirmed = sorted(name for name, answer in answers.items()
                             if not isinstance(answer, int) or answer < table["version"])
        generation = table["generations"][base_id.hex()]
        logger.info("namespace %s cleared: generation %d (unconfirmed shards: %s)", base_id.hex(), generation,
                    unconfirmed or "none")
        return {"ok": not unconfirmed, "generation": generation, "unconfirmed": unconfirmed}

    def split_threshold_pages(self) -> int:
        """Distinct pages above which a shard reports an extent hot: the configured value, else
        twice the client's extent_pages, capped below what a shard's sampled count reaches
        (HotExtents: 512 fingerprints kept per extent, 1 in 8 sampled: 4,096)."""
        configured = self._config.controller.split_threshold_pages
        return configured or min(2 * self._config.client.extent_pages, 4095)

    def _reconcile_splits(self) -> None:
        """Split the extents a serving shard reports hot; forget splits no shard reported for
        split_ttl_s. A shard that fails or times out is skipped this round (its splits stay)."""
        controller = self._config.controller
        if not controller.split_extents:
            with self._lock:
                self._splits_known = True
            return
        with self._lock:
            serving = [record for record in self._shards.values() if record.state == SERVING]
        handles = {record.name: record.handle for record in serving}
        shard = self._config.shard
        one_pool = (len({record.node_id for record in serving}) < 2 and shard.pool_disk_budget
                    and shard.store.background_reclaim)
        if len(handles) < 2 or one_pool:
            with self._lock:
                self._splits_known = True
            # One shard, or shards of one node pooling its disk's budget (they evict as one cache, so
            # an extent that loads one of them costs no hits): a split would only re-key pages and
            # spread chains over more shards.
            return
        answers = self._api.call_all(handles, "hot_extents", controller.ping_timeout_s,
                                     self.split_threshold_pages(), controller.split_min_share) if handles else {}
        now = time.time()
        with self._lock:
            before = set(self._splits)
            for answer in answers.values():
                if isinstance(answer, (list, tuple)):
                    for extent in answer:
                        self._splits[bytes(extent)] = now
            for extent, seen in list(self._splits.items()):
                if now - seen > controller.split_ttl_s:
                    del self._splits[extent]
            if len(self._splits) > controller.max_split_extents:
                keep = sorted(self._splits.items(), key=lambda item: item[1], reverse=True)
                self._splits = dict(keep[:controller.max_split_extents])
            self._splits_known = True
            if set(self._splits) != before:
                self._splits_version += 1
                logger.info("split extents version %d: %d extents (%d new)", self._splits_version,
                            len(self._splits), len(set(self._splits) - before))

    def _reconcile_tuning(self) -> None:
        """Every tuning_period_s: read each serving shard's window, run the tuning policy, push the
        tunings a shard has not acknowledged (a changed one, or one a restarted shard lost). A shard
        that fails or does not answer within ping_timeout_s is skipped this round."""
        controller = self._config.controller
        now = time.monotonic()
        if not controller.tuning or now - self._tuned_at < controller.tuning_period_s:
            return
        self._tuned_at = now
        with self._lock:
            handles = {name: record.handle for name, record in self._shards.items() if record.state == SERVING}
        answers = self._api.call_all(handles, "tuning_window", controller.ping_timeout_s)
        windows, current = {}, {}
        with self._lock:
            for name in set(self._tunings) - set(self._shards):  # removed shards
                self._tunings.pop(name, None)
                self._tuning_acked.pop(name, None)
                self._sims_seen.pop(name, None)
            for name, answer in answers.items():
                if not isinstance(answer, dict) or "choice" not in answer:
                    continue
                tuning = self._tunings.get(name)
                if tuning is None:
                    if answer["choice"] is None:
                        continue  # configured with none of the candidates: not tuned
                    # A new shard, or this controller restarted: what the shard runs is the start.
                    tuning = ShardTuning(answer["choice"], int(answer.get("version", 0)))
                window = window_of(self._sims_seen.get(name), answer.get("sims") or {})
                if window and max(refs for refs, _ in window.values()) < controller.tuning_min_references:
                    # Too few references to judge: the window grows until it has enough (read
                    # against the same baseline next round). Dropping it froze a shard whose models
                    # sample fewer than tuning_min_references per period: in `bench adaptive`
                    # (1/8 of the trace), one shard's scores stayed put for 2,500 requests.
                    window = None
                else:
                    self._sims_seen[name] = answer.get("sims") or {}
                if window:
                    windows[name] = window
                current[name] = tuning
                self._tuning_acked[name] = int(answer.get("version", 0))
        round_version: list[int] = []

        def next_version() -> int:  # one new version per round that changes anything
            if not round_version:
                self._tuning_version = max(self._tuning_version + 1, int(time.time() * 1000))
                round_version.append(self._tuning_version)
            return round_version[0]

        params = TuningParams(decay=controller.tuning_decay, min_references=controller.tuning_min_references,
                              margin_abs=controller.tuning_margin_abs, margin_rel=controller.tuning_margin_rel,
                              confirm_windows=controller.tuning_confirm_windows,
                              preferred=candidate_of(self._config.shard.store))
        tuned = tune(windows, current, params, next_version)
        with self._lock:
            self._tunings.update(tuned)
            # Pushed: a tuning the controller chose (version > 0) that the shard does not run.
            pushes = {name: (handles[name], "apply_tuning", (tuning.changes(), tuning.version))
                      for name, tuning in tuned.items()
                      if tuning.version and self._tuning_acked.get(name) != tuning.version}
        for name, tuning in tuned.items():
            if tuning.version != current[name].version:
                logger.info("shard %s: tuning version %d chooses %s (was %s; scores %s)", name, tuning.version,
                            tuning.choice, current[name].choice,
                            {key: round(value, 4) for key, value in tuning.scores.items()})
        if not pushes:
            return
        acks = self._api.call_each(pushes, controller.ping_timeout_s)
        with self._lock:
            for name, ack in acks.items():
                if isinstance(ack, dict) and "version" in ack:
                    self._tuning_acked[name] = int(ack["version"])
                else:
                    logger.warning("shard %s did not acknowledge tuning version %d: %r", name,
                                   self._tunings[name].version if name in self._tunings else -1, ack)

    def _reconcile_frontiers(self) -> None:
        """Relay the serving shards' eviction frontiers to each other (raylsm.controller.frontiers)."""
        if not self._config.shard.forward_evictions:
            return
        with self._lock:
            handles = {name: record.handle for name, record in self._shards.items() if record.state == SERVING}
        self._frontiers.reconcile(self._api, handles, self._config.controller.ping_timeout_s)

    def tunings(self) -> dict:
        """Each tuned shard's tuning: {shard: {"version", "acked_version", "choice", "challenger",
        "streak", "scores"}}."""
        with self._lock:
            return {name: {"version": tuning.version, "acked_version": self._tuning_acked.get(name, 0),
                           "choice": tuning.choice, "challenger": tuning.challenger, "streak": tuning.streak,
                           "scores": {key: round(value, 4) for key, value in tuning.scores.items()}}
                    for name, tuning in self._tunings.items()}

    def _publish_ring(self) -> None:
        with self._lock:
            # A shard joins the ring once it has served; an unreachable one stays (Ray restarts it on
            # its node, and its keys come back with it); a draining one stays until it has handed its
            # pages over; only a removed or scaled-in one leaves.
            members = tuple(sorted(name for name, record in self._shards.items() if record.state in IN_RING))
            placement = tuple(self._shards[name].node_id for name in members)
            record_key = (members, placement, tuple(sorted(self._elastic.standby)), self._elastic.target)
            if record_key != self._record_key:
                # A new version also when a member moved to another node (clients re-resolve it), or
                # the standby set or target moved (the record the shards keep must say so).
                self._record_key = record_key
                self._ring_members, self._ring_placement = members, placement
                self._ring_version += 1
                logger.info("ring version %d: %s", self._ring_version, ", ".join(members))
            record = self._elastic.record(self._ring_version, members)
            behind = {name: r.handle for name, r in self._shards.items()
                      if r.state in (SERVING, DRAINING) and self._record_acked.get(name) != record["version"]}
        if behind:
            acks = self._api.call_all(behind, "remember_ring", self._config.controller.ping_timeout_s, record)
            with self._lock:
                for name, ack in acks.items():
                    if isinstance(ack, int):
                        self._record_acked[name] = ack

    # ---- queries ------------------------------------------------------------------------------

    def ring(self, splits_version: int = -1) -> dict:
        """The published ring: version and member shards, with what a client needs to reach them.
        The split extents ("splits": version and extent ids) come only when `splits_version` (the
        caller's) is not the current one."""
        with self._lock:
            splits = None if splits_version == self._splits_version or not self._splits_known else {
                "version": self._splits_version, "extents": sorted(self._splits)}
            return {
                "splits": splits,
                "version": self._ring_version,
                "shards": {name: {"node_id": self._shards[name].node_id} for name in self._ring_members
                           if name in self._shards},
                "namespace": self._config.ray_namespace,
                "generations": dict(self._namespaces["generations"]),
                # Out of the ring after a scale-in, still serving until their grace ends: clients
                # read there what they miss meanwhile (ClientConfig.handoff_s).
                "leaving": advertised_leaving(self._config, self._elastic.leaving, time.monotonic()),
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
            shards.append({"shard": name, "node_id": record.node_id, "state": "failed" if record.error else record.state,
                           "error": record.error, "stats": shard_stats or record.last_stats})
        tunings = self.tunings()
        for shard in shards:
            shard["tuning"] = tunings.get(shard["shard"])
        with self._lock:
            version, splits = self._ring_version, len(self._splits)
        return {"ring_version": version, "split_extents": splits, "shards": shards, "errors": dict(self._errors),
                "scale": self.scale_status()}

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
