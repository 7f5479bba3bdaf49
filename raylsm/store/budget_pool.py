"""A disk budget pooled by the shard stores of one disk, so that they evict as one cache.

Owned here: the pool file (a small table in shared memory, one 64-byte slot per member store) and
the two questions a member asks it: does the pool need room, and is it this member's turn to free
a segment. Called by ShardStore (its roll, its reclaimer, its open) when it was opened with a pool
path; the shard actor gives every shard of one disk the same path (`<data_dir>/.<disk>.pool`).

Why: shards that split one disk into fixed partitions each evict on their own schedule. A partition
that receives more new pages than its share cycles them out sooner than one cache would, while a
quieter partition keeps older pages: at the same total capacity 8 partitions hit 0.61-0.90 of one
store (docs/placement.md). Pooled, the members' capacities add up to one budget, and whenever the
pool needs room the member holding the oldest sealed segment frees it: one eviction order (oldest
segment first, with each store's own reinsertion) across every shard of the disk.

How it works: each member publishes, in its own slot, its capacity, its disk bytes, the seal time of
its oldest sealed segment (wall clock: comparable across processes) and a heartbeat. A member whose
heartbeat is older than `STALE_S` (dead, hung) or that left (closed) counts for neither capacity nor
disk, and is never asked to evict. Reads and writes are plain loads and stores of aligned 8-byte
fields: a reader may see a neighbour's slot one update late, which delays an eviction by one poll,
never doubles it (a member re-publishes before it decides again). Joining takes an flock. A member
that needs room sends the member holding the oldest segment a one-byte datagram (a Linux abstract
unix socket named after the pool and the member) that wakes its reclaimer at once; the poll is the
fallback (another network namespace, a lost datagram).

Costs: one 16 KiB file per disk; per decision one read of 255 slots (microseconds); members poll
every 50 ms while they run (ShardStore's reclaimer), plus one datagram per wake. Bounds: the pool's
disk use exceeds the sum of its live members' capacities by at most one segment per member (a
writer whose pool found no room within roll_wait_s drops its own oldest segment; one with none
sealed rolls anyway).
Imports no Ray, SGLang or torch.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import socket
import threading
import time
from typing import Callable, NamedTuple

import numpy as np
import xxhash

logger = logging.getLogger(__name__)

MAGIC = b"RLSMPOOL"
VERSION = 1
HEADER_BYTES = 64
SLOTS = 255
STALE_S = 10.0  # a member silent this long is treated as gone
POLL_S = 0.05  # how often a pooled store's reclaimer looks at the pool
# Free segments the members keep in the pool (and a store alone keeps): a roll finds room while the
# member holding the oldest segment is woken. NOTE: direct replay of the agentic workload (6,000
# requests, capacity 0.05, 8 pooled stores, 1 MiB segments, no Ray): one per member (8) hit 0.127 in
# 63 s, 2 hit 0.130 in 75 s, 1 hit 0.130 in 131 s (rolls waited on the wake and the eviction).
POOL_ROOM_SEGMENTS = 2

SLOT = np.dtype([("member", "<u8"), ("heartbeat", "<f8"), ("capacity", "<u8"), ("disk", "<u8"),
                 ("oldest", "<f8"), ("pid", "<u8"), ("reserved", "<u8", (2,))])
assert SLOT.itemsize == 64
FILE_BYTES = HEADER_BYTES + SLOTS * SLOT.itemsize


class PoolFullError(RuntimeError):
    """Every slot of the pool file is held by a live member."""


class PoolView(NamedTuple):
    members: int  # live members, this one included
    capacity_bytes: int  # sum of the live members' capacities
    disk_bytes: int  # sum of the live members' disk bytes
    my_turn: bool  # this member holds the oldest sealed segment of the pool
    others_sealed: bool  # another live member has a sealed segment it could free
    oldest_member: int  # id of the live member holding the oldest sealed segment (0: none)


class BudgetPool:
    """One member's handle on a pool file. `join` it; `publish` then `view`; `leave` on close.
    Thread-safe for one member's threads (each call writes only this member's slot)."""

    def __init__(self, path: str, member: str, fd: int, table: np.ndarray, mapping: mmap.mmap, slot: int,
                 on_wake: Callable[[], None] | None):
        self.path = path
        self.member = member
        self._fd = fd
        self._mapping = mapping
        self._table = table
        self._slot = slot
        self._id = member_id(member)
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._listener: socket.socket | None = None
        if on_wake is not None:
            try:
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                listener.bind(_wake_address(path, self._id))
                listener.settimeout(0.5)
                self._listener = listener
                threading.Thread(target=self._listen, args=(listener, on_wake), name="raylsm-pool-wake",
                                 daemon=True).start()
            except OSError as error:  # (an old incarnation still bound: the poll does the job)
                logger.info("budget pool %s: no wake socket for %s (%r); polling only", path, member, error)

    @classmethod
    def join(cls, path: str, member: str, on_wake: Callable[[], None] | None = None) -> "BudgetPool":
        """Open (creating it) the pool file at `path` and take this member's slot: the one it held
        before, else a free or stale one. `on_wake` is called (on a thread of the pool) when another
        member asks this one to free room. Raises PoolFullError, or OSError if the file cannot be
        created or mapped, or ValueError if it is not a pool file of this version."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                size = os.fstat(fd).st_size
                if size == 0:
                    header = MAGIC + VERSION.to_bytes(4, "little")
                    os.pwrite(fd, header + bytes(FILE_BYTES - len(header)), 0)
                elif size != FILE_BYTES or os.pread(fd, len(MAGIC) + 4, 0) != MAGIC + VERSION.to_bytes(4, "little"):
                    raise ValueError(f"{path} is not a raylsm budget pool file of version {VERSION}")
                mapping = mmap.mmap(fd, FILE_BYTES)
                table = np.frombuffer(mapping, dtype=SLOT, count=SLOTS, offset=HEADER_BYTES)
                slot = _choose_slot(table, member_id(member), time.time())
                if slot is None:
                    del table
                    mapping.close()
                    raise PoolFullError(f"{path}: all {SLOTS} slots are held by live members")
                table[slot] = (member_id(member), time.time(), 0, 0, 0.0, os.getpid(), (0, 0))
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, member, fd, table, mapping, slot, on_wake)

    def publish(self, capacity_bytes: int, disk_bytes: int, oldest_sealed_at: float | None) -> None:
        """Write this member's figures and heartbeat (`oldest_sealed_at`: wall-clock seal time of its
        oldest sealed segment, None without one)."""
        if self._table[self._slot]["member"] != self._id:
            self._rejoin()  # taken for stale (hung past STALE_S) and its slot given to another
        row = self._table[self._slot]
        row["capacity"] = capacity_bytes
        row["disk"] = disk_bytes
        row["oldest"] = oldest_sealed_at or 0.0
        row["heartbeat"] = time.time()

    def _rejoin(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            slot = _choose_slot(self._table, self._id, time.time())
            if slot is None:
                raise PoolFullError(f"{self.path}: all {SLOTS} slots are held by live members")
            self._table[slot] = (self._id, time.time(), 0, 0, 0.0, os.getpid(), (0, 0))
            self._slot = slot
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def view(self) -> PoolView:
        """The pool as its live members last published it."""
        table = self._table.copy()
        now = time.time()
        live = (table["member"] != 0) & (now - table["heartbeat"] <= STALE_S)
        live[self._slot] = True
        sealed = live & (table["oldest"] > 0)
        others = sealed.copy()
        others[self._slot] = False
        oldest_member = 0
        if sealed.any():  # the oldest seal time, ties to the lower member id
            candidates = np.flatnonzero(sealed)
            order = np.lexsort((table["member"][candidates], table["oldest"][candidates]))
            oldest_member = int(table["member"][candidates[order[0]]])
        return PoolView(int(live.sum()), int(table["capacity"][live].sum()), int(table["disk"][live].sum()),
                        oldest_member == self._id, bool(others.any()), oldest_member)

    def wake(self, member: int) -> None:
        """Ask `member` (an id from `view`) to free room now; best effort, never blocks."""
        if member and member != self._id:
            try:
                self._sender.sendto(b"w", _wake_address(self.path, member))
            except OSError:
                pass  # not listening (polling only), or its queue is full: it polls anyway

    def _listen(self, listener: socket.socket, on_wake: Callable[[], None]) -> None:
        while self._listener is listener:
            try:
                listener.recv(64)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                on_wake()
            except Exception:  # noqa: BLE001 (the listener must outlive one failure)
                logger.exception("budget pool %s: wake handler failed", self.path)

    def leave(self) -> None:
        """Give up the slot (a closed store is neither capacity nor an eviction candidate). Idempotent."""
        if self._mapping.closed:
            return
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self._sender.close()
        row = self._table[self._slot]
        if row["member"] == self._id:
            row["member"] = 0
        del row
        self._table = None
        self._mapping.close()
        os.close(self._fd)


def member_id(member: str) -> int:
    """A member's nonzero 64-bit id in the pool file."""
    return xxhash.xxh3_64_intdigest(member.encode()) or 1


def _choose_slot(table: np.ndarray, member: int, now: float) -> int | None:
    mine = np.flatnonzero(table["member"] == member)
    if mine.size:
        return int(mine[0])
    free = np.flatnonzero((table["member"] == 0) | (now - table["heartbeat"] > STALE_S))
    return int(free[0]) if free.size else None


def _wake_address(path: str, member: int) -> bytes:
    """The abstract unix socket name (no file) of a member's wake listener."""
    return b"\0raylsm-pool-%016x-%016x" % (xxhash.xxh3_64_intdigest(os.path.abspath(path).encode()), member)


def pool_path(data_dir: str, disk: str) -> str:
    """Where the shards of disk `disk` under `data_dir` keep their pool file."""
    return os.path.join(data_dir, f".{disk}.pool")
