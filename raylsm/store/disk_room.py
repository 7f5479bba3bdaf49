"""Room on disk: whether a store, or the disk budget pool it belongs to, needs a segment freed, and
which store frees it.

Owned here: `RoomState` and the functions over one ShardStore that answer it (`room_state`), list
its sealed segments (`sealed_segment_ids`, the eviction candidates) and bring a lowered budget back
(`enforce_capacity`). Called by ShardStore (its roll, its open, `apply_tuning`) and by the segment
reclaimer. A store alone frees its own oldest segment whenever `room_segments` more would pass its capacity;
in a pool (raylsm/store/budget_pool.py) the budget is the live members' sum and the member holding
the pool's oldest sealed segment frees it. Reads the store's segment table without its write lock
(one atomic copy of the dict); imports no Ray, SGLang or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from raylsm.store.budget_pool import POOL_ROOM_SEGMENTS

if TYPE_CHECKING:
    from raylsm.store.shard_store import ShardStore


class RoomState(NamedTuple):
    needs_room: bool  # the reclaimer should free a segment: less than `room_segments` of room left
    full: bool  # one more segment would pass the budget: a roll waits
    my_turn: bool  # this store is the one to free a segment (alone: always)
    others_sealed: bool  # another pool member could free one
    disk_bytes: int  # what the budget bounds now: the store's disk bytes, or the pool's
    capacity_bytes: int  # the budget: the store's capacity, or the sum of the pool's members'
    pool_members: int = 0  # live members of its pool (0: alone)


# A budget of at least this many segments keeps POOL_ROOM_SEGMENTS free even for one store (a second
# free segment costs it at most 1/32 of its capacity; the benches give a shard 256).
ROOM_MIN_SEGMENTS = 32
# A budget of at least this many segments keeps one more free (at most 1/128 of its capacity).
# NOTE: packaged trace, 0.25 of its conversations, capacity 0.10, 1 shard of 256 segments of 6.45 MB
# (a 128-page put is 6 MB: about one roll per put): with two free segments 72-74 rolls waited for
# the reclaimer, 2.1-2.4 s in all, and the store's put p99 was in its 50 ms bucket; with three, 38
# waited 0.99 s and the p99 was in its 25 ms bucket; hit ratio 0.209 both (one run each).
ROOM_EXTRA_SEGMENTS = 128


def room_segments(members: int, capacity_bytes: int, segment_bytes: int) -> int:
    """Free segments the reclaimers keep: POOL_ROOM_SEGMENTS in a pool of two or more, or where the
    budget holds ROOM_MIN_SEGMENTS segments, one more where it holds ROOM_EXTRA_SEGMENTS; else one
    (a small store keeps its capacity)."""
    if capacity_bytes >= ROOM_EXTRA_SEGMENTS * segment_bytes:
        return POOL_ROOM_SEGMENTS + 1
    if members >= 2 or capacity_bytes >= ROOM_MIN_SEGMENTS * segment_bytes:
        return POOL_ROOM_SEGMENTS
    return 1


def sealed_segment_ids(store: "ShardStore") -> list[int]:
    """Ids of the store's sealed segments (every segment but the active one), oldest first."""
    active = store._active
    return sorted(segment_id for segment_id in list(store._segments)  # (list: one atomic copy)
                  if active is None or segment_id != active.segment_id)


def room_state(store: "ShardStore") -> RoomState:
    """The store's room, and who may free more. In a pool this publishes the store's figures (its
    heartbeat) and wakes the member whose turn it is when the pool is short of room."""
    disk = store._disk_bytes() - store._freeing_bytes  # (an eviction in progress: see evict_oldest)
    segment = store._config.segment_bytes
    pool = store._pool
    if pool is None:
        capacity = store._config.capacity_bytes
        return RoomState(disk + room_segments(1, capacity, segment) * segment > capacity, disk + segment > capacity,
                         True, False, disk, capacity)
    sealed = sealed_segment_ids(store)
    segments = store._segments
    oldest = segments.get(sealed[0]) if sealed else None
    pool.publish(store._config.capacity_bytes, disk, oldest.sealed_at if oldest is not None else None)
    view = pool.view()
    # The reclaimers keep `room_segments` of room in the pool (a large store alone too), so a roll finds
    # room while the member holding the oldest segment is woken and frees one. A roll waits only when
    # not even its own segment fits.
    # NOTE: with one segment of room a store alone (or a pool of one) had only the writes into one
    # segment to free the next (walk, read and re-append the kept pages, commit): full packaged
    # trace, 1 shard, capacity 0.1, py-spy 30 s on the shard: puts waited for room in 29 samples, and
    # the store's put p99 was in its 50-100 ms bucket.
    room = room_segments(view.members, view.capacity_bytes, segment)
    needs_room = view.disk_bytes + room * segment > view.capacity_bytes
    if needs_room and not view.my_turn:
        pool.wake(view.oldest_member)
    return RoomState(needs_room, view.disk_bytes + segment > view.capacity_bytes, view.my_turn,
                     view.others_sealed, view.disk_bytes, view.capacity_bytes, view.members)


def enforce_capacity(store: "ShardStore") -> None:
    """Evict oldest sealed segments (no reinsertion) until disk use is within the budget, after it
    was lowered; in a pool, only while this store holds the pool's oldest (the others do the rest)."""
    from raylsm.store.segment_reclaimer import evict_oldest

    while sealed_segment_ids(store):
        room = room_state(store)
        if room.disk_bytes <= room.capacity_bytes or not room.my_turn:
            return
        evict_oldest(store, [0])
