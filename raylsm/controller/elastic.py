"""Elasticity state: the tier's target shard count, the standby shards, the drain in progress, the
shards leaving, the ring record the shards keep, and the scale events (docs/elastic.md).

Owned here: `Elasticity`, a plain object the Controller holds and drives from its reconcile loop
(under the controller's lock; the drain runs in its own thread and hands its report back through
`drain_done`). It decides nothing about membership itself: the controller asks it which slots may
start (`may_start`), which shard to drain (`pick_victim`), and what record to push to the shards
(`record`). Also `newest_record`, used by a restarted controller to adopt the ring the shards kept.

States of a shard name, besides the controller's starting/serving/unreachable:
  warming   a shard joining a ring that holds pages: out of the ring while every member hands it the
            pages the ring with it will route to it (a warm join), then serving;
  draining  in the ring and serving while it hands its newest pages to their next owners;
  leaving   out of the ring, its actor still up until clients have moved off (drain_grace_s);
  standby   out of the ring, actor stopped; its slot is not started until the target needs it, and is
            forgotten when its node goes (the autoscaler removed it).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

logger = logging.getLogger(__name__)

MAX_EVENTS = 64


@dataclass
class Leaving:
    handle: Any
    stop_at: float  # monotonic


class Elasticity:
    def __init__(self) -> None:
        self.target: int | None = None  # None: every slot serves (no scale event was asked)
        self.standby: set[str] = set()
        self.drain_next: bool = True  # whether the next scale-in drains (the request's choice)
        self.draining: str | None = None
        self.drain_report: dict | None = None  # set by the drain thread when it ends
        self.warming: str | None = None
        self.warm_report: dict | None = None  # set by the warm-up thread when it ends
        self.leaving: dict[str, Leaving] = {}
        self.requested: int | None = None  # the bundle count last asked of Ray's autoscaler
        self.events: collections.deque = collections.deque(maxlen=MAX_EVENTS)
        self.last_event_at = -float("inf")  # monotonic
        self.decision: dict = {}  # the autoscaling policy's last answer
        self.event_counts: collections.Counter = collections.Counter()

    # ---- what the controller asks -------------------------------------------------------------

    def may_start(self, name: str, members: int) -> bool:
        """Whether a slot that is not running may start a shard: not standby, and the ring is
        short of the target (or there is no target)."""
        if name in self.standby or name in self.leaving:
            return False
        return self.target is None or members < self.target

    def record(self, version: int, members: Iterable[str]) -> dict:
        """What every shard keeps (ShardServer.remember_ring) so a restarted controller can adopt it."""
        return {"version": version, "members": sorted(members), "standby": sorted(self.standby),
                "target": self.target}

    def adopt(self, record: Mapping) -> None:
        self.target = record.get("target")
        self.standby = set(record.get("standby") or ())

    def event(self, kind: str, **fields: Any) -> dict:
        entry = {"kind": kind, "t": round(time.time(), 3), **fields}
        self.events.append(entry)
        self.event_counts[kind] += 1
        logger.info("scale event: %s", entry)
        return entry

    def status(self, members: Iterable[str]) -> dict:
        return {"target": self.target, "members": len(list(members)), "standby": sorted(self.standby),
                "draining": self.draining, "warming": self.warming, "leaving": sorted(self.leaving),
                "requested": self.requested,
                "decision": dict(self.decision), "events": list(self.events)[-10:],
                "event_counts": dict(self.event_counts)}

    # ---- the drain ----------------------------------------------------------------------------

    def start_drain(self, name: str, run: Callable[[], dict]) -> None:
        """Run `run` (the shard's drain call) in a thread; its report lands in drain_report."""
        self.draining, self.drain_report = name, None
        _in_thread(f"raylsm-drain-{name}", run, lambda report: setattr(self, "drain_report", report))

    def start_warm(self, name: str, run: Callable[[], dict]) -> None:
        """Run `run` (the members' hand-over to a joining shard) in a thread; its report lands in
        warm_report."""
        self.warming, self.warm_report = name, None
        _in_thread(f"raylsm-warm-{name}", run, lambda report: setattr(self, "warm_report", report))


def _in_thread(name: str, run: Callable[[], dict], done: Callable[[dict], None]) -> None:
    def body() -> None:
        try:
            report = run()
        except Exception as error:  # noqa: BLE001 (a failed move still lets the shard go on)
            report = {"error": repr(error)}
        done(report if isinstance(report, dict) else {"error": repr(report)})

    threading.Thread(target=body, name=name, daemon=True).start()


def pick_victim(candidates: Mapping[str, tuple[str, int]]) -> str | None:
    """The shard to scale in, from {name: (node id, live bytes)}: one alone on its node first (its node
    can then go), then the one holding the fewest bytes (least to move), then the last name."""
    if not candidates:
        return None
    per_node = collections.Counter(node for node, _ in candidates.values())
    ordered = sorted(candidates, reverse=True)  # min() keeps the first of equals: ties go to the last name
    return min(ordered, key=lambda name: (per_node[candidates[name][0]] > 1, candidates[name][1]))


def newest_record(answers: Mapping[str, Any]) -> dict | None:
    """The ring record with the highest version among the shards' answers (None if none holds one)."""
    records = [answer for answer in answers.values()
               if isinstance(answer, dict) and isinstance(answer.get("version"), int) and answer.get("members")]
    return max(records, key=lambda record: record["version"], default=None)
