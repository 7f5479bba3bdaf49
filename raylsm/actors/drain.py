"""Handing a draining shard's pages to their new ring owners (scale-in; docs/elastic.md).

Owned here: `drain_pages`, the plan (this shard's newest pages up to a byte budget, each to the shard
that owns it in the ring without this one) and the transfer (batches read from this store into one
buffer and put to their owner with `handover=True`; the next batch is read while the last put is in
flight). Called by `ShardServer.drain`, which the controller calls on the shard it scales in, while
the shard is still in the ring and serving. Pages put here after the plan was made stay behind.

Why the newest pages, and how many: a tier of N shards that loses one keeps (N-1)/N of its bytes.
Each shard evicts oldest first (FIFO or CLOCK over segments), so the pages that deserve to stay are
the newest (N-1)/N of every shard's: the receivers evict their oldest share to take the drained
shard's newest share (docs/elastic.md). The controller passes that fraction.

Routing: a page's owner is the ring owner of its routing key (raylsm.router.routing_key): the routing
id of its namespace (the id its client routes it by, learned from the client's puts; a namespace
without one routes by its own id) and its extent id, both read from the page key.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import ray

from raylsm.router import HashRing, routing_key
from raylsm.store import page_key
from raylsm.store.io_buffers import aligned_empty
from raylsm.store.outcomes import PutOutcome

logger = logging.getLogger(__name__)

BATCH_BYTES = 32 << 20  # one put per owner of at most this many bytes (the client's chunk size)
_NS = slice(1, 1 + page_key.NAMESPACE_ID_BYTES)
_EXTENT = slice(1 + page_key.NAMESPACE_ID_BYTES, page_key.EXTENT_PREFIX_BYTES)


def owners_of(keys: Sequence[bytes], members: Sequence[str], virtual_nodes: int,
              routes: Mapping[bytes, bytes]) -> dict[str, list[int]]:
    """{owner shard: indices into keys} under the ring of `members`; pages of one extent together."""
    ring = HashRing(sorted(members), virtual_nodes)
    groups: dict[str, list[int]] = {}
    owner_of: dict[bytes, str] = {}
    for index, key in enumerate(keys):
        prefix = key[: page_key.EXTENT_PREFIX_BYTES]
        owner = owner_of.get(prefix)
        if owner is None:
            namespace = key[_NS]
            owner = owner_of[prefix] = ring.shard_for(routing_key(routes.get(namespace, namespace), key[_EXTENT]))
        groups.setdefault(owner, []).append(index)
    return groups


def pace_delay(elapsed_s: float, moved_bytes: int, bytes_per_s: float) -> float:
    """Seconds to wait so that `moved_bytes` in `elapsed_s` stays within `bytes_per_s` (0: no limit)."""
    if bytes_per_s <= 0:
        return 0.0
    return max(0.0, moved_bytes / bytes_per_s - elapsed_s)


def drain_pages(store: Any, members: Sequence[str], virtual_nodes: int, routes: Mapping[bytes, bytes],
                max_bytes: int, handle_of: Callable[[str], Any], deadline_s: float,
                batch_bytes: int = BATCH_BYTES, only: str | None = None, bytes_per_s: float = 0.0) -> dict:
    """Move this store's newest pages, at most `max_bytes`, to their owners among `members` (the ring
    after this shard leaves), until `deadline_s` (monotonic). Pages go oldest of the chosen first, so
    the newest arrive last and are the receivers' newest. A second pass then moves every page
    written during the first (the shard serves all along, and the newest pages are the hottest). With
    `only`, just the pages that shard owns move (a warm join: `members` is the ring with it, and this
    shard is one of them), and the report's "planned_*" count those. `bytes_per_s` (0: none) caps
    the rate this shard reads and sends at, so that a hand-over does not starve the reads it serves
    meanwhile.

    Returns {"planned_pages", "planned_bytes", "pages", "bytes", "present", "failed", "complete",
    "seconds", "by_owner", "second_pass_pages"}: pages stored on a receiver, pages it already held,
    pages that could not be read here or were refused or lost there (an unreachable owner fails its
    batches; the move goes on with the others), and whether both passes ran before the deadline."""
    started = time.monotonic()
    report = {"planned_pages": 0, "planned_bytes": 0, "pages": 0, "bytes": 0, "present": 0, "failed": 0,
              "complete": True, "seconds": 0.0, "by_owner": {}, "second_pass_pages": 0}
    chosen, newest = store.newest_pages(max_bytes)
    pace = {"started": started, "bytes_per_s": bytes_per_s, "read": 0}  # bytes read for moving, both passes
    _pass(store, chosen[::-1], members, virtual_nodes, routes, handle_of, deadline_s, batch_bytes, only, report, pace)
    if report["complete"] and members:
        planned = report["planned_pages"]
        since, _ = store.newest_pages(1 << 62, after=newest)
        _pass(store, since[::-1], members, virtual_nodes, routes, handle_of, deadline_s, batch_bytes, only, report,
              pace)
        report["second_pass_pages"] = report["planned_pages"] - planned
    report["seconds"] = round(time.monotonic() - started, 3)
    return report


def _pass(store: Any, chosen: list[tuple[bytes, int]], members: Sequence[str], virtual_nodes: int,
          routes: Mapping[bytes, bytes], handle_of: Callable[[str], Any], deadline_s: float, batch_bytes: int,
          only: str | None, report: dict, pace: dict) -> None:
    """One pass of `drain_pages` over `chosen` (oldest first), adding to `report`; `pace`: when the
    drain started, its byte rate cap and the bytes it read so far (updated)."""
    keys = [key for key, _ in chosen]
    sizes = [size for _, size in chosen]
    if not keys:
        return
    if not members:
        report["planned_pages"] += len(keys)
        report["planned_bytes"] += int(sum(sizes))
        report.update(failed=report["failed"] + len(keys), complete=False)
        return
    groups = owners_of(keys, members, virtual_nodes, routes)
    if only is not None:
        groups = {owner: indices for owner, indices in groups.items() if owner == only}
    report["planned_pages"] += sum(len(indices) for indices in groups.values())
    report["planned_bytes"] += int(sum(sizes[i] for indices in groups.values() for i in indices))
    batches: list[tuple[str, list[int]]] = []
    for owner, indices in groups.items():
        batch, total = [], 0
        for index in indices:
            if batch and total + sizes[index] > batch_bytes:
                batches.append((owner, batch))
                batch, total = [], 0
            batch.append(index)
            total += sizes[index]
        batches.append((owner, batch))
    batches.sort(key=lambda item: item[1][0])  # oldest first across owners too
    in_flight = None  # (owner, keys, sizes, ref)
    for owner, batch in batches:
        wait = pace_delay(time.monotonic() - pace["started"], pace["read"], pace["bytes_per_s"])
        if time.monotonic() + wait >= deadline_s:
            report["complete"] = False
            break
        time.sleep(wait)
        pace["read"] += sum(sizes[i] for i in batch)
        read = _read(store, [keys[i] for i in batch], [sizes[i] for i in batch])
        if in_flight is not None:
            _settle(in_flight, report, deadline_s)
        batch_keys, batch_sizes, values, unread = read
        report["failed"] += unread
        in_flight = None
        if batch_keys:
            try:
                ref = handle_of(owner).put_batch.remote(batch_keys, values, None, None, handover=True)
                in_flight = (owner, batch_keys, batch_sizes, ref)
            except Exception as error:  # noqa: BLE001 (an owner we cannot reach fails its batch only)
                logger.warning("drain: owner %s unreachable (%r)", owner, error)
                report["failed"] += len(batch_keys)
    if in_flight is not None:
        _settle(in_flight, report, deadline_s)


def _read(store: Any, keys: list[bytes], sizes: list[int]) -> tuple[list[bytes], list[int], list[np.ndarray], int]:
    """The batch read into one buffer: (keys read, their sizes, a view per page, pages not read)."""
    buffer = aligned_empty(max(int(sum(sizes)), 1))
    views, offset = [], 0
    for size in sizes:
        views.append(buffer[offset: offset + size])
        offset += size
    hits = store.get_batch_into(keys, views)
    kept = [slot for slot, hit in enumerate(hits) if hit]
    return [keys[s] for s in kept], [sizes[s] for s in kept], [views[s] for s in kept], len(keys) - len(kept)


def _settle(in_flight: tuple, report: dict, deadline_s: float) -> None:
    owner, keys, sizes, ref = in_flight
    try:
        outcomes = ray.get(ref, timeout=max(deadline_s - time.monotonic(), 1.0))
    except Exception as error:  # noqa: BLE001 (a lost batch is counted, the drain goes on)
        logger.warning("drain: %d pages to %s failed (%r)", len(keys), owner, error)
        report["failed"] += len(keys)
        return
    stored = [outcome == PutOutcome.STORED for outcome in outcomes]
    present = sum(outcome == PutOutcome.PRESENT for outcome in outcomes)
    report["pages"] += sum(stored)
    report["bytes"] += sum(size for size, ok in zip(sizes, stored) if ok)
    report["present"] += present
    report["failed"] += len(keys) - sum(stored) - present
    report["by_owner"][owner] = report["by_owner"].get(owner, 0) + sum(stored)
