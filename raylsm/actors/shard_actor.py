"""ShardServer: the body of one shard actor, wrapping one ShardStore on one node-local directory.

Owned here: opening the store when Ray (re)starts the actor, the call surface the tier client uses,
and turning store stats into metrics. Holds no policy: tuning arrives from the controller.
Called by TierClient (data path) and the controller (health, stats, tuning) through Ray; a plain
class, made an actor by `raylsm.actors.placement`. Thread-safety: runs as a threaded actor
(`max_concurrency` threads); ShardStore is thread-safe and its reads release the GIL.

Payloads: values arrive as numpy arrays (out of band, zero-copy views of the object store) and the
bytes of a get leave as one numpy array, which the caller maps zero-copy from the object store.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import ray

from raylsm.actors.metrics import ShardMetrics
from raylsm.config import ShardConfig
from raylsm.errors import StoreLockedError
from raylsm.store import ShardStore
from raylsm.store.io_buffers import aligned_empty

logger = logging.getLogger(__name__)


class ShardServer:
    def __init__(self, shard_name: str, config: ShardConfig):
        self._name = shard_name
        self._path = os.path.join(os.path.abspath(config.data_dir), shard_name)
        self._store = open_with_retry(self._path, config, shard_name)
        context = ray.get_runtime_context()
        self._node_id = context.get_node_id()
        with warnings.catch_warnings():  # Ray warns about an internal call of its own here
            warnings.simplefilter("ignore")
            self._restarted = context.was_current_actor_reconstructed
        self._metrics = ShardMetrics(shard_name)
        self._thread_buffers = threading.local()
        recovery = self._store.recovery
        logger.info("shard %s opened %s (restarted=%s, clean=%s, dropped pointers=%d, truncated bytes=%d)",
                    shard_name, self._path, self._restarted, recovery.clean_shutdown,
                    recovery.dropped_pointers, recovery.truncated_bytes)

    # ---- control ------------------------------------------------------------------------------

    def info(self) -> dict:
        return {"shard": self._name, "node_id": self._node_id, "path": self._path, "pid": os.getpid(),
                "restarted": self._restarted}

    def ping(self) -> bool:
        return True

    def stats(self) -> dict:
        stats = self._store.stats()
        self._metrics.sync(stats)
        return {**stats, **self.info()}

    def apply_tuning(self, changes: dict) -> dict:
        """Apply live store config changes (ConfigError if any field cannot change live)."""
        import dataclasses
        return dataclasses.asdict(self._store.apply_tuning(changes))

    def shutdown(self) -> None:
        """Close the store cleanly before the actor is killed (`raylsm down`)."""
        self._store.close()

    # ---- data path ----------------------------------------------------------------------------

    def put_batch(self, keys: Sequence[bytes], values: Sequence[Any]) -> list[bool]:
        started = time.perf_counter()
        results = self._store.put_batch(keys, values)
        self._after_call("put", started)
        return results

    def get_batch(self, keys: Sequence[bytes], page_bytes: Sequence[int]) -> tuple[list[bool], np.ndarray]:
        """Read pages into one new array (page i at sum(page_bytes[:i])); hits per page."""
        started = time.perf_counter()
        buffer = self._read_buffer(int(sum(page_bytes)))
        views, offset = [], 0
        for nbytes in page_bytes:
            views.append(buffer[offset : offset + nbytes])
            offset += nbytes
        hits = self._store.get_batch_into(keys, views)
        self._after_call("get", started)
        return hits, buffer

    def probe(self, keys: Sequence[bytes]) -> int:
        started = time.perf_counter()
        count = self._store.probe(keys)
        self._after_call("probe", started)
        return count

    def locate_batch(self, keys: Sequence[bytes]) -> tuple[str, int, list]:
        """Pointers for a same-node reader: (segments dir, low watermark, pointer or None per key)."""
        started = time.perf_counter()
        located = self._store.locate_batch(keys)
        self._after_call("locate", started)
        return located

    def probe_located(self, keys: Sequence[bytes], reads: Mapping[int, Sequence[int]] | None = None
                      ) -> tuple[str, int, list]:
        """`probe` for a same-node reader: (segments dir, low watermark, pointers of the leading
        present keys); the reader skips the locate call of its get. `reads`: value offsets by
        segment of pages the reader read from earlier pointers, counted as `note_reads` does."""
        started = time.perf_counter()
        if reads:
            self._store.note_reads(reads)
        located = self._store.probe_located(keys)
        self._after_call("probe", started)
        return located

    def note_reads(self, offsets_by_segment: Mapping[int, Sequence[int]]) -> None:
        """Reads a same-node reader did from probe_located pointers, sent without waiting when no
        probe_located call carried them."""
        self._store.note_reads(offsets_by_segment)

    def delete_batch(self, keys: Sequence[bytes]) -> int:
        return self._store.delete_batch(keys)

    def clear(self) -> None:
        self._store.clear()

    def delete_namespace(self, namespace: bytes) -> int:
        return self._store.delete_namespace(namespace)

    def _read_buffer(self, nbytes: int) -> np.ndarray:
        """A per-thread aligned buffer for get_batch's reply. Reusing it is safe: Ray copies a
        returned array into the object store on this thread before the thread runs another call.
        NOTE: a fresh 32 MiB array per call paid its page faults on every read."""
        buffer = getattr(self._thread_buffers, "buffer", None)
        if buffer is None or buffer.nbytes < nbytes:
            buffer = aligned_empty(max(nbytes, 1 << 20))
            self._thread_buffers.buffer = buffer
        return buffer[:nbytes]

    def _after_call(self, op: str, started: float) -> None:
        self._metrics.observe_call(op, (time.perf_counter() - started) * 1e3)
        # NOTE: one stats snapshot per call (~tens of microseconds), not per page.
        self._metrics.sync(self._store.stats())


def open_with_retry(path: str, config: ShardConfig, shard_name: str) -> ShardStore:
    """Open the shard's store, retrying while a previous incarnation still holds the lock."""
    deadline = time.monotonic() + config.open_retry_s
    delay = 0.1
    while True:
        try:
            return ShardStore.open(path, config.store)
        except StoreLockedError:
            if time.monotonic() >= deadline:
                raise
            logger.warning("shard %s: %s is still locked; retrying in %.1fs", shard_name, path, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
