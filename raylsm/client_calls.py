"""The shard calls of TierClient: issuing one call per shard at once and collecting the answers.

Owned here: `ShardCalls`, a mixin of TierClient (its state is the client's: see client.py) with the
fan-out (`_submit`, `_collect`, `_fan_out`), the split between shards on this node and the others,
the stalled-shard checks, the counting of every failure by cause, and the helpers that classify a
failed call. Called through TierClient only; thread-safe as TierClient is.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, NamedTuple

import ray

from raylsm.errors import ShardUnavailableError

logger = logging.getLogger(__name__)


class _Chunk(NamedTuple):
    """The key of one of several object-path get calls to one shard: its slots start at `start`."""

    shard: str
    start: int


def _shard_of(call_key: "str | _Chunk") -> str:
    return call_key.shard if isinstance(call_key, _Chunk) else call_key


# Writes: the calls a shard marked stalled by a late read still gets, and whose own lateness marks
# it stalled for writes too (raylsm.shard_health).
_WRITE_METHODS = frozenset({"put_batch", "delete_batch"})


class _Unsettled(NamedTuple):
    """A put call that passed its deadline: the client answered False for its pages, so whatever it
    stored when it lands late is deleted again."""

    ref: Any
    shard: str
    keys: list[bytes]


def _failure_cause(error: BaseException) -> str:
    """How a failed shard call is counted: the shard is down (its actor died or is restarting),
    the input was bad (the shard refused it: a typed ValueError, never a shard being down), or
    another error."""
    if isinstance(error, ray.exceptions.RayTaskError):
        return "bad_input" if isinstance(error, ValueError) else "error"
    if isinstance(error, ray.exceptions.RayActorError):
        return "shard_down"
    return "error"


class _ShardGone(ShardUnavailableError):
    """The shard's actor could not be looked up (it is being replaced)."""


def _retryable(value: Any) -> bool:
    """A put call that failed fast because its actor was gone or restarting (worth one retry)."""
    return isinstance(value, (ray.exceptions.RayActorError, _ShardGone))


class ShardCalls:
    """Mixin of TierClient: calls to the shards (see the module docstring)."""

    # ---- plumbing -----------------------------------------------------------------------------

    def _split_local(self, groups: dict[str, list[int]]) -> tuple[dict, dict]:
        if not self._config.client.same_node_fast_path:
            return {}, groups
        shards = self._ring_info["shards"]
        local = {s: slots for s, slots in groups.items() if shards.get(s, {}).get("node_id") == self._node_id}
        remote = {s: slots for s, slots in groups.items() if s not in local}
        return local, remote

    def _fan_out(self, calls: dict[str, tuple[str, tuple]]) -> dict[str, Any]:
        """Call method(*args) on every shard at once; wait at most call_timeout_s in total. The value
        per shard, or an exception (RayError; ShardUnavailableError for a stalled shard or one whose
        actor is gone; TimeoutError for one that did not answer). One failing shard never fails the
        others."""
        return self._collect(self._submit(calls))

    def _submit(self, calls: dict[Any, tuple[str, tuple]]) -> tuple[dict, dict[Any, Any]]:
        """Issue the calls of `_fan_out` without waiting: (refs by call key, failures so far). A call
        key is a shard name, or a `_Chunk` for one of several calls to a shard. A stalled shard's
        calls fail at once."""
        refs = {}
        results: dict[Any, Any] = {}
        for call_key, (method, args) in calls.items():
            pages = len(args[0]) if args and isinstance(args[0], list) else 0
            shard = _shard_of(call_key)
            if self._health.is_stalled(shard, writes=method in _WRITE_METHODS):
                results[call_key] = ShardUnavailableError(f"shard {shard} is stalled")
                self._count(stalled_calls=1)
                self._metrics.failed(shard, method, "stalled", pages)
                continue
            try:
                handle = self._handle(shard)
            except Exception as error:  # the actor is gone (ValueError from get_actor)
                results[call_key] = _ShardGone(f"shard {shard} is gone: {error}")
                self._count_failure(shard, method, pages, "shard_down")
                continue
            refs[getattr(handle, method).remote(*args)] = (call_key, method, pages, args)
        return refs, results

    def _collect(self, submitted: tuple[dict, dict[Any, Any]], on_result: Callable[[Any, Any], None] | None = None,
                 deadline: float | None = None, settle_late: bool = False) -> dict[Any, Any]:
        """Wait for submitted calls until `deadline` (default: call_timeout_s from now); the value or
        exception per call key. `on_result(call_key, value)` runs for each answer as it arrives.
        A call still running at the deadline marks its shard stalled (for writes too if it was one:
        `_WRITE_METHODS`); it is cancelled, or with `settle_late` (puts) kept so that what it stores
        when it lands late is deleted again."""
        refs, results = submitted
        if deadline is None:
            deadline = time.monotonic() + self._config.client.call_timeout_s
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1 if on_result else len(pending),
                                      timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            for ref in ready:
                call_key, method, pages, _ = refs[ref]
                try:
                    results[call_key] = ray.get(ref)
                except Exception as error:
                    results[call_key] = error
                    self._count_failure(_shard_of(call_key), method, pages, _failure_cause(error))
                    if isinstance(error, ray.exceptions.ActorDiedError):
                        # Dead for good: the controller starts a new actor under the same name; look
                        # it up again on the next call instead of calling the dead one forever.
                        with self._handles_lock:
                            self._handles.pop(_shard_of(call_key), None)
                if on_result is not None:
                    on_result(call_key, results[call_key])
        for ref in pending:
            call_key, method, pages, args = refs[ref]
            shard = _shard_of(call_key)
            results[call_key] = TimeoutError(f"shard {shard} did not answer in time")
            self._count(timeouts=1)
            self._metrics.failed(shard, method, "timeout", pages)
            self._health.mark(shard, writes=method in _WRITE_METHODS)
            if settle_late:
                with self._unsettled_lock:
                    self._unsettled.append(_Unsettled(ref, shard, list(args[0])))
            else:
                ray.cancel(ref)
        return results

    def _check_stalled(self) -> None:
        """Clear stalled shards that answer their health check with no call stuck longer than the
        longest a call may legitimately run (put_timeout_s or call_timeout_s)."""
        timeout_s = max(self._config.client.call_timeout_s, self._config.client.put_timeout_s)

        def ask(shards: dict[str, None]) -> dict[str, Any]:
            refs = {}
            for shard in shards:
                try:
                    refs[self._handle(shard).health.remote()] = shard
                except Exception:
                    continue
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=min(1.0, timeout_s)) if refs else ([], [])
            answers = {}
            for ref in ready:
                try:
                    answers[refs[ref]] = ray.get(ref)
                except Exception as error:
                    answers[refs[ref]] = error
            return answers

        for shard in self._health.check(ask, timeout_s):
            logger.info("raylsm: shard %s answers again", shard)

    def _health_loop(self) -> None:
        """Check stalled shards when their check is due (raylsm.shard_health), off the data path."""
        health = self._health
        while not self._closed.is_set():
            due_in = health.due_in()
            health.wake.wait(self._config.client.ring_refresh_s if due_in is None else due_in)
            health.wake.clear()
            if self._closed.is_set():
                return
            try:
                self._check_stalled()
            except Exception:  # noqa: BLE001 (the thread must outlive any one failure)
                logger.exception("raylsm: health check failed")

    def _count_failure(self, shard: str, method: str, pages: int, cause: str) -> None:
        self._count(**{cause if cause != "error" else "call_errors": 1})
        self._metrics.failed(shard, method, cause, pages)
        logger.debug("raylsm: shard %s call %s failed: %s", shard, method, cause)

    def _count(self, **deltas: int) -> None:
        with self._counters_lock:
            self._counters.update(deltas)

    def stats(self) -> dict:
        with self._counters_lock:
            counters = dict(self._counters)
        return {"ring_version": self.ring_version, "shards": len(self._ring_info["shards"]),
                "split_extents": len(self._split_extents), "counters": counters,
                "stalled_shards": self._health.stalled(), "breaker": self._health.totals()}
