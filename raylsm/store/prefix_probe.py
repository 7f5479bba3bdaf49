"""Prefix probes: how many leading keys of a batch a store holds (SGLang's batch_exists).

Owned here: the three ways to answer, cheapest first: the in-memory resident digest set; for runs of
ascending keys of one extent, one RocksDB seek and a forward scan; for the rest, one multi-get.
Present means a pointer into a live segment; no bytes are read. Called by ShardStore.probe and
probe_located, from any thread (RocksDB reads and set lookups need no lock). No Ray, SGLang or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Container, Sequence

from raylsm.store import format as fmt
from raylsm.store.page_key import extent_prefix, key_digests
from raylsm.store.pointer_index import PointerIndex

if TYPE_CHECKING:
    from raylsm.store.digest_set import DigestSet


def count_present_prefix(index: PointerIndex, keys: Sequence[bytes], resident: "DigestSet | None",
                         live_segments: Container[int], digests: Sequence[int] | None = None) -> int:
    """The number of leading `keys` with a pointer into a segment of `live_segments`. `digests`:
    the keys' `key_digest`s if the caller has them."""
    if resident is not None:
        # NOTE: the resident set answers a 128-key probe in tens of microseconds (one vectorised search); the RocksDB
        # seek-and-scan below ran at ~240k keys/s (bench store), barely above HiCacheFile's
        # stat() per page with a warm dentry cache.
        present = resident.contains_many(digests if digests is not None else key_digests(keys))
        return present.index(False) if False in present else len(keys)
    count = 0
    for use_scan, group in probe_groups(keys):
        found = (_present_by_scan(index, group, live_segments) if use_scan
                 else _present_by_multiget(index, group, live_segments))
        count += found
        if found < len(group):
            break
    return count


def _live(raw: bytes, live_segments: Container[int]) -> bool:
    pointer = fmt.decode_pointer(raw)
    return pointer is not None and pointer.segment_id in live_segments


def _present_by_multiget(index: PointerIndex, keys: Sequence[bytes], live_segments: Container[int]) -> int:
    for found, raw in enumerate(index.get_many(keys)):
        if raw is None or not _live(raw, live_segments):
            return found
    return len(keys)


def _present_by_scan(index: PointerIndex, keys: Sequence[bytes], live_segments: Container[int]) -> int:
    """Keys are ascending and share an extent prefix: one seek, then next() per key, with a re-seek
    only where another chain's page of the same extent sits in between."""
    scan = index.scan_from(keys[0])
    found = 0
    for key in keys:
        entry = next(scan, None)
        if entry is not None and entry[0] != key:
            scan = index.scan_from(key)
            entry = next(scan, None)
        if entry is None or entry[0] != key or not _live(entry[1], live_segments):
            return found
        found += 1
    return found


def probe_groups(keys: Sequence[bytes]) -> list[tuple[bool, Sequence[bytes]]]:
    """Split a probe batch, in order, into runs of ascending keys of one extent (answered by a scan)
    and stretches of keys without such neighbours (answered together by one multi-get)."""
    groups: list[tuple[bool, Sequence[bytes]]] = []
    start = 0
    lone_start = None
    while start < len(keys):
        end = start + 1
        prefix = extent_prefix(keys[start])
        while end < len(keys) and keys[end] > keys[end - 1] and extent_prefix(keys[end]) == prefix:
            end += 1
        if end - start == 1:
            lone_start = start if lone_start is None else lone_start
        else:
            if lone_start is not None:
                groups.append((False, keys[lone_start:start]))
                lone_start = None
            groups.append((True, keys[start:end]))
        start = end
    if lone_start is not None:
        groups.append((False, keys[lone_start:]))
    return groups
