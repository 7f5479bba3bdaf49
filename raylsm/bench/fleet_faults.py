"""Faults under load for `raylsm bench fleet --faults`: the schedule that injects them and the analysis.

Owned here: `FaultSchedule`, run by the fleet driver while the raylsm replicas replay: at 1/3 of the
run, kill -9 of one shard's process (Ray restarts the detached actor on its node, which recovers its
store); at 2/3, removal of another shard's node (as a node failure, not a graceful drain), and the
node back with the same disk label `rejoin_after_s` later (the controller puts the shard, named after
its disk, back in the ring at its old place). Each event records the trace time it happened at and,
where it has one, when the shard served again (`back_t_s`). And `analyze`: per event, the errors and
wrong pages of the requests around it, the hit ratio of the requests before, the dip after and the
recovery time, from the replicas' per-request records.

Called by `raylsm.bench.fleet`. The schedule runs in the driver's thread (it only sleeps and calls Ray).
"""

from __future__ import annotations

import bisect
import logging
import os
import signal
import time
from typing import Any, Sequence

logger = logging.getLogger(__name__)

POLL_S = 0.2
BACK_TIMEOUT_S = 120.0
BEFORE_REQUESTS = 50  # the requests before an event that set its hit ratio "before" (and those after it)
PROBE_REQUESTS = 20  # consecutive requests whose hit ratio must be back to RECOVERED x before
RECOVERED = 0.9


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


def hit_ratio(records: Sequence[dict]) -> float | None:
    """L3 token hit ratio of `records` (None when they asked nothing)."""
    asked = sum(record["asked_pages"] for record in records)
    return sum(record["hit_pages"] for record in records) / asked if asked else None


def analyze(events: Sequence[dict], records: Sequence[dict], window_requests: int = BEFORE_REQUESTS,
            probe_requests: int = PROBE_REQUESTS) -> list[dict]:
    """Each event with: `errors` and `wrong_pages` of the `window_requests` requests before it and
    after it (by trace time); `hit_before`, the hit ratio of the `window_requests` before it;
    `hit_dip`, how far below hit_before (as a fraction: 0.1 = 10% lower) the lowest hit ratio of
    `probe_requests` consecutive requests fell among the `window_requests` after it; and
    `recovery_s`: trace seconds from the shard being back (`back_t_s`, else the event) to the first
    request of the first `probe_requests` run, starting at or after that point, whose hit ratio is
    >= RECOVERED x hit_before (0 when already there; None when never within the run).

    NOTE: windows count requests, not seconds: a sampled trace has well under one request per trace
    second (the --quick sample: 0.2), so a 10 s window would hold two requests and say nothing."""
    ordered = sorted(records, key=lambda record: record["trace_s"])
    times = [record["trace_s"] for record in ordered]
    out = []
    for event in events:
        if "t_s" not in event:
            out.append(dict(event))
            continue
        at = bisect.bisect_left(times, event["t_s"])
        before_window = ordered[max(0, at - window_requests):at]
        after_window = ordered[at:at + window_requests]
        before = hit_ratio(before_window)
        probes = [hit_ratio(after_window[index:index + probe_requests])
                  for index in range(0, max(1, len(after_window) - probe_requests + 1))]
        probes = [value for value in probes if value is not None]
        lowest = min(probes) if probes else None
        reference = event.get("back_t_s") or event["t_s"]
        recovery = None
        if before is not None:
            first = bisect.bisect_left(times, reference)
            for index in range(first, len(ordered) - probe_requests + 1):
                value = hit_ratio(ordered[index:index + probe_requests])
                if value is not None and value >= RECOVERED * before:
                    recovery = round(max(0.0, times[index] - reference), 3)
                    break
        near = before_window + after_window
        out.append({**event, "errors": sum(record["errors"] for record in near),
                    "wrong_pages": sum(record["wrong_pages"] for record in near),
                    "hit_before": None if before is None else round(before, 4),
                    "hit_dip": (None if not before or lowest is None else round(max(0.0, 1 - lowest / before), 4)),
                    "lowest_probe_hit": None if lowest is None else round(lowest, 4),
                    "recovery_s": recovery, "window_requests": window_requests, "probe_requests": probe_requests})
    return out
