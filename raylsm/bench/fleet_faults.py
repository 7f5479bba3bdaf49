"""Faults under load for `raylsm bench fleet --faults`: the schedule that injects them and the analysis.

Owned here: `FaultSchedule`, run by the fleet driver while the raylsm replicas replay: at 1/3 of the
run, kill -9 of one shard's process (Ray restarts the detached actor on its node, which recovers its
store); at 2/3, removal of another shard's node (as a node failure, not a graceful drain), and the
node back with the same disk label `rejoin_after_s` later (the controller puts the shard, named after
its disk, back in the ring at its old place). Each event records the trace time it happened at and,
where it has one, when the shard served again (`back_t_s`). And `analyze`: per event, the errors and
wrong pages of the requests around it, the hit ratio of the window before, the dip after and the
recovery time, from the replicas' per-request records.

Called by `raylsm.bench.fleet`. The schedule runs in the driver's thread (it only sleeps and calls Ray).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any, Sequence

logger = logging.getLogger(__name__)

POLL_S = 0.2
BACK_TIMEOUT_S = 120.0
RECOVERY_WINDOW_S = 10.0  # trace seconds: the window whose hit ratio must be back to RECOVERED of before
RECOVERED = 0.9
MIN_WINDOW_REQUESTS = 3


def _trace_s(wall: float, origin: float, speedup: float) -> float:
    return round((wall - origin) * speedup, 3)


def _shard_label(name: str) -> str:
    """The disk label a shard is named after (`shard-<label>-<index>`, raylsm.actors.placement)."""
    return name[len("shard-"):name.rindex("-")]


class FaultSchedule:
    """kill -9 a shard at 1/3 of `run_wall_s`, remove another shard's node at 2/3, add it back after
    `rejoin_after_s` (default: 5% of the run, at least 2 s). `events` holds what happened."""

    def __init__(self, cluster: Any, run_wall_s: float, speedup: float, rejoin_after_s: float | None = None) -> None:
        self.cluster = cluster
        self.run_wall_s = run_wall_s
        self.speedup = speedup
        self.rejoin_after_s = rejoin_after_s if rejoin_after_s is not None else max(2.0, 0.05 * run_wall_s)
        self.events: list[dict] = []

    def run(self, origin: float) -> None:
        import ray

        from raylsm.controller.controller_actor import get_controller

        def sleep_until(wall: float) -> None:
            time.sleep(max(0.0, wall - time.time()))

        controller = get_controller("raylsm")
        shards = sorted(ray.get(controller.ring.remote(), timeout=30)["shards"])
        if len(shards) < 2:
            self.events.append({"kind": "skipped", "why": f"{len(shards)} shard(s) in the ring; faults need 2"})
            return
        try:
            sleep_until(origin + self.run_wall_s / 3)
            self._kill(shards[0], origin)
            sleep_until(origin + 2 * self.run_wall_s / 3)
            self._remove_and_return(shards[1], origin, controller)
        except Exception as error:  # noqa: BLE001 (the run goes on; the report says the schedule broke)
            logger.exception("fault schedule failed")
            self.events.append({"kind": "schedule_failed", "why": repr(error)})

    def _kill(self, name: str, origin: float) -> None:
        import ray

        handle = ray.get_actor(name, namespace="raylsm")
        pid = ray.get(handle.info.remote(), timeout=30)["pid"]
        os.kill(pid, signal.SIGKILL)  # the shard actor runs on this machine (a simulated node)
        killed = time.time()
        event = {"kind": "kill_shard", "shard": name, "t_s": _trace_s(killed, origin, self.speedup), "back_t_s": None}
        self.events.append(event)
        while time.time() - killed < BACK_TIMEOUT_S:
            try:
                if ray.get(handle.info.remote(), timeout=2)["pid"] != pid:
                    event["back_t_s"] = _trace_s(time.time(), origin, self.speedup)
                    return
            except Exception:  # noqa: BLE001 (restarting: not reachable yet)
                pass
            time.sleep(POLL_S)

    def _remove_and_return(self, name: str, origin: float, controller: Any) -> None:
        import ray

        label = _shard_label(name)
        self.cluster.remove(label)
        removed = time.time()
        self.events.append({"kind": "remove_node", "shard": name, "disk": label,
                            "t_s": _trace_s(removed, origin, self.speedup), "back_t_s": None})
        time.sleep(max(0.0, removed + self.rejoin_after_s - time.time()))
        node = self.cluster.add(label)
        added = time.time()
        event = {"kind": "add_node", "shard": name, "disk": label, "t_s": _trace_s(added, origin, self.speedup),
                 "back_t_s": None}
        self.events.append(event)
        while time.time() - added < BACK_TIMEOUT_S:
            try:
                entry = ray.get(controller.ring.remote(), timeout=5)["shards"].get(name)
                if entry and entry.get("node_id") == node.node_id:
                    event["back_t_s"] = _trace_s(time.time(), origin, self.speedup)
                    return
            except Exception:  # noqa: BLE001
                pass
            time.sleep(POLL_S)


def hit_ratio(records: Sequence[dict], start_s: float, end_s: float) -> tuple[float | None, int]:
    """(L3 token hit ratio, requests) of the requests whose trace time is in [start_s, end_s)."""
    asked = hits = count = 0
    for record in records:
        if start_s <= record["trace_s"] < end_s:
            asked += record["asked_pages"]
            hits += record["hit_pages"]
            count += 1
    return (hits / asked if asked else None), count


def analyze(events: Sequence[dict], records: Sequence[dict], window_s: float, end_s: float) -> list[dict]:
    """Each event with: `errors` and `wrong_pages` of the requests within window_s of it, `hit_before`
    (hit ratio of the window_s before it), `hit_dip` (the lowest hit ratio of a RECOVERY_WINDOW_S
    window starting in the window_s after it, as a fraction of hit_before: 0.1 = 10% lower) and
    `recovery_s`: trace seconds from the shard being back (`back_t_s`, else the event) to the start of
    the first RECOVERY_WINDOW_S window whose hit ratio is >= RECOVERED x hit_before (None: never
    within the run). Windows with fewer than MIN_WINDOW_REQUESTS requests are skipped."""
    out = []
    for event in events:
        if "t_s" not in event:
            out.append(dict(event))
            continue
        at = event["t_s"]
        near = [record for record in records if at - window_s <= record["trace_s"] < at + window_s]
        before, _ = hit_ratio(records, at - window_s, at)
        lowest = None
        step = RECOVERY_WINDOW_S / 2
        start = at
        while start < min(at + window_s, end_s):
            value, count = hit_ratio(records, start, start + RECOVERY_WINDOW_S)
            if value is not None and count >= MIN_WINDOW_REQUESTS:
                lowest = value if lowest is None else min(lowest, value)
            start += step
        reference = event.get("back_t_s") or at
        recovery = None
        if before is not None:
            start = reference
            while start < end_s:
                value, count = hit_ratio(records, start, start + RECOVERY_WINDOW_S)
                if value is not None and count >= MIN_WINDOW_REQUESTS and value >= RECOVERED * before:
                    recovery = round(start - reference, 3)
                    break
                start += 1.0
        out.append({**event, "errors": sum(record["errors"] for record in near),
                    "wrong_pages": sum(record["wrong_pages"] for record in near),
                    "hit_before": None if before is None else round(before, 4),
                    "hit_dip": (None if before in (None, 0) or lowest is None
                                else round(max(0.0, 1 - lowest / before), 4)),
                    "lowest_window_hit": None if lowest is None else round(lowest, 4),
                    "recovery_s": recovery})
    return out
