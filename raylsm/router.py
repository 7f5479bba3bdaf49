"""Routing: the consistent-hash ring of shards and the mapping of a page batch to extents and shards.

Owns: `HashRing` (shards with virtual nodes on a 64-bit xxh64 circle; immutable, versioned, published
by the controller as a msgpack-friendly dict), the extent rule (which page anchors a page's extent,
`ExtentConfig`), the routing key of an extent, and the encoded store key of every page, so that the
shard a page is routed to and the key it is indexed under always agree.

Called by the TierClient (every batch), the controller (ring versions), and the benchmarks. Owns no
data. Every object here is immutable and every function pure: thread-safe. Hashes are xxh64 with seed
0 over bytes, never Python's `hash()`, so every process on every node routes a key the same way.

Extents (design, "Keys and locality"): a page at depth d belongs to the extent that starts at
`anchor_depth(d)`; the extent's anchor is the page hash at that depth in the chain
(`prefix_hashes + page_hashes`) and its routing key is xxh64(namespace id || anchor hash). Plain
extents start every E pages. Hot-anchor splitting: the first `shallow_depth_pages` of every chain are
cut into finer extents of `shallow_extent_pages`, and the regular E-page extents start at depth
`shallow_depth_pages`, so no regular extent is anchored on a page that every prompt shares.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import AbstractSet, Any, Mapping, Sequence

import xxhash

from raylsm.errors import ConfigError, ShardUnavailableError
from raylsm.store import page_key

RING_FORMAT = 1


class EmptyRingError(ShardUnavailableError):
    """The ring has no shards: nothing can be routed (the caller treats it as every shard unavailable)."""


def _vnode_point(shard: str, index: int) -> int:
    return xxhash.xxh64_intdigest(shard.encode("utf-8") + b"\x00" + index.to_bytes(4, "big"))


class HashRing:
    """An immutable consistent-hash ring: `virtual_nodes` points per shard on the xxh64 circle.

    A key goes to the shard owning the first point at or after xxh64(key), wrapping around. Adding a
    shard to N moves about 1/(N+1) of the keys (all to the new shard); removing one moves only its
    keys. Two rings built from the same shard set and virtual_nodes route identically in any process.
    """

    __slots__ = ("_shards", "_virtual_nodes", "_version", "_points", "_owners")

    def __init__(self, shards: Sequence[str], virtual_nodes: int = 128, version: int = 0) -> None:
        shards = tuple(shards)
        if not isinstance(virtual_nodes, int) or not 1 <= virtual_nodes <= 65536:
            raise ConfigError(f"virtual_nodes must be an int in [1, 65536], got {virtual_nodes!r}")
        if not isinstance(version, int) or version < 0:
            raise ConfigError(f"version must be an int >= 0, got {version!r}")
        for shard in shards:
            if not isinstance(shard, str) or not shard:
                raise ConfigError(f"shards must be non-empty strings, got {shard!r}")
        if len(set(shards)) != len(shards):
            raise ConfigError(f"shards must be unique, got {list(shards)}")
        # Sorting (point, shard) makes a (vanishingly rare) point collision resolve the same way
        # whatever order the shards were given in.
        ring = sorted((_vnode_point(shard, i), shard) for shard in shards for i in range(virtual_nodes))
        self._shards = shards
        self._virtual_nodes = virtual_nodes
        self._version = version
        self._points = [point for point, _ in ring]
        self._owners = [shard for _, shard in ring]

    @property
    def shards(self) -> tuple[str, ...]:
        return self._shards

    @property
    def virtual_nodes(self) -> int:
        return self._virtual_nodes

    @property
    def version(self) -> int:
        return self._version

    def __len__(self) -> int:
        return len(self._shards)

    def __repr__(self) -> str:
        return f"HashRing(version={self._version}, shards={list(self._shards)}, virtual_nodes={self._virtual_nodes})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HashRing):
            return NotImplemented
        return (
            self._version == other._version
            and self._virtual_nodes == other._virtual_nodes
            and set(self._shards) == set(other._shards)
        )

    def __hash__(self) -> int:
        return hash((self._version, self._virtual_nodes, frozenset(self._shards)))

    def shard_for_point(self, point: int) -> str:
        """The shard owning a 64-bit point. EmptyRingError if the ring has no shards."""
        if not self._points:
            raise EmptyRingError(f"ring version {self._version} has no shards")
        index = bisect.bisect_left(self._points, point)
        return self._owners[index if index < len(self._points) else 0]

    def shard_for(self, routing_key: bytes) -> str:
        """The shard of a routing key (xxh64 of the bytes). EmptyRingError if the ring has no shards."""
        return self.shard_for_point(xxhash.xxh64_intdigest(routing_key))

    def moved_fraction(self, other: "HashRing") -> float:
        """The fraction of the 64-bit key circle whose owner differs between this ring and `other`:
        what a change from one to the other remaps, for uniformly hashed keys (adding a shard to N
        moves about 1/(N+1)). 0.0 for two empty rings, 1.0 when only one is empty."""
        if not self._points or not other._points:
            return 0.0 if not self._points and not other._points else 1.0
        space = 1 << 64
        cuts = sorted(set(self._points) | set(other._points))
        moved = 0
        for index, point in enumerate(cuts):
            # The keys in (previous cut, point] go, in each ring, to its first point >= `point`: no
            # point of either ring lies strictly between the two cuts.
            previous = cuts[index - 1] if index else cuts[-1] - space
            if self.shard_for_point(point) != other.shard_for_point(point):
                moved += point - previous
        return moved / space

    def with_shards(self, shards: Sequence[str]) -> "HashRing":
        """A new ring over `shards`, same virtual_nodes, version + 1."""
        return HashRing(shards, self._virtual_nodes, self._version + 1)

    def with_shard_added(self, shard: str) -> "HashRing":
        return self.with_shards(self._shards + (shard,))

    def with_shard_removed(self, shard: str) -> "HashRing":
        if shard not in self._shards:
            raise ConfigError(f"shard {shard!r} is not in ring version {self._version}")
        return self.with_shards(tuple(s for s in self._shards if s != shard))

    def to_dict(self) -> dict[str, Any]:
        """A msgpack/JSON-friendly description; `from_dict` rebuilds an identical ring."""
        return {
            "format": RING_FORMAT,
            "version": self._version,
            "virtual_nodes": self._virtual_nodes,
            "shards": list(self._shards),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HashRing":
        """Inverse of `to_dict`. ConfigError if the dict is not a ring description of a known format."""
        try:
            ring_format = data.get("format", RING_FORMAT)
            if ring_format != RING_FORMAT:
                raise ConfigError(f"ring format {ring_format!r} is not supported (expected {RING_FORMAT})")
            return cls(list(data["shards"]), int(data["virtual_nodes"]), int(data["version"]))
        except (KeyError, TypeError, AttributeError) as error:
            raise ConfigError(f"not a ring description: {error!r}") from error


# --- extents -----------------------------------------------------------------------------------


def extent_of(depth: int, extent_pages: int) -> int:
    """Depth of the first page of the plain extent holding `depth`: E * floor(depth / E)."""
    if extent_pages < 1:
        raise ConfigError(f"extent_pages must be >= 1, got {extent_pages}")
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    return depth - depth % extent_pages


# NOTE: chosen with `python -m raylsm.bench.balance` on the packaged conversation trace, 8 shards x 128
# virtual nodes, 64-token pages (stored max/mean, shards touched per request):
#   plain E = 128 pages (8192 tokens), no split          3.87  1.76  (first extent of every prompt on one shard)
#   plain E = 8 pages (512 tokens)                       1.10  5.85
#   first 8 pages one extent, then E = 128  (default)    1.06  2.52
#   first 8 pages one extent, then E = 256               1.06  2.13
#   first 8 pages one extent, then E = 2**20 (no cut)    1.10  1.79  (512-token pages)
#   first 8 pages as 8 one-page extents, then E = 128    1.06  6.43  (finer head: balance same, fan-out x2.5)
#   first 4 pages one extent, then E = 128               4.03  2.63  (head shorter than the shared prefix)
#   first 16 pages one extent, then E = 128              1.23  2.39  (head longer: private pages pile up)
# Every request of that trace starts with the same 512-token block (8 pages): a head that ends exactly
# where the shared prefix ends removes the hot anchor and keeps the long private chains whole. E = 128
# pages is one SGLang batch (<= 128 pages per call), so a batch reads one or two shards in parallel.
# With 16 / 32 shards the default gives 1.18 / 1.26 (fewer extents per shard, more variance).
# For another page size use ExtentConfig.from_tokens(page_tokens) (same token spans); for another
# workload set shallow_depth_pages to its shared system-prompt length. Changing the extents re-keys
# (and re-routes) pages: stored pages become unreachable misses until evicted, like a reopen.
DEFAULT_EXTENT_PAGES = 128
DEFAULT_SHALLOW_DEPTH_PAGES = 8
DEFAULT_SHALLOW_EXTENT_PAGES = 8
# Pages per sub-extent of a split (hot) extent: see `page_anchors` and docs/placement.md.
DEFAULT_SPLIT_EXTENT_PAGES = 16


@dataclass(frozen=True)
class ExtentConfig:
    """Where extents start along a page chain. Depths and sizes are in pages.

    Extent starts: 0, e, 2e, ... below depth S (`shallow_depth_pages`, step e = `shallow_extent_pages`),
    then S, S + E, S + 2E, ... (E = `extent_pages`). S = 0 gives plain extents E * floor(d / E).
    """

    # Pages per regular extent. Larger: a prompt touches fewer shards and reads are longer runs;
    # smaller: better balance of stored bytes. Default 128 (8192 tokens at 64-token pages).
    extent_pages: int = DEFAULT_EXTENT_PAGES
    # Depth (pages) of the shallow head cut into finer extents: the shared prefix (system prompt) of
    # every request. Default 8 (one 512-token block at 64-token pages). 0 disables the split.
    shallow_depth_pages: int = DEFAULT_SHALLOW_DEPTH_PAGES
    # Pages per shallow extent; must divide shallow_depth_pages. Default 8 (the head is one extent).
    shallow_extent_pages: int = DEFAULT_SHALLOW_EXTENT_PAGES
    # Pages per sub-extent when a regular extent is split because many chains diverge inside it
    # (a hot shared prefix): each sub-extent is anchored on its own first page and routed alone.
    # Capped at extent_pages.
    split_extent_pages: int = DEFAULT_SPLIT_EXTENT_PAGES

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.extent_pages, int) or not 1 <= self.extent_pages <= 1 << 20:
            raise ConfigError(f"extent_pages must be an int in [1, 2**20], got {self.extent_pages!r}")
        if not isinstance(self.shallow_depth_pages, int) or not 0 <= self.shallow_depth_pages <= 1 << 20:
            raise ConfigError(
                f"shallow_depth_pages must be an int in [0, 2**20], got {self.shallow_depth_pages!r}"
            )
        if not isinstance(self.shallow_extent_pages, int) or self.shallow_extent_pages < 1:
            raise ConfigError(f"shallow_extent_pages must be an int >= 1, got {self.shallow_extent_pages!r}")
        if not isinstance(self.split_extent_pages, int) or not 1 <= self.split_extent_pages <= 1 << 20:
            raise ConfigError(f"split_extent_pages must be an int in [1, 2**20], got {self.split_extent_pages!r}")
        if self.shallow_depth_pages % self.shallow_extent_pages:
            raise ConfigError(
                f"shallow_extent_pages ({self.shallow_extent_pages}) must divide "
                f"shallow_depth_pages ({self.shallow_depth_pages})"
            )

    @classmethod
    def plain(cls, extent_pages: int) -> "ExtentConfig":
        """Plain extents E * floor(d / E), no hot-head split."""
        return cls(extent_pages=extent_pages, shallow_depth_pages=0, shallow_extent_pages=1)

    @classmethod
    def from_tokens(
        cls,
        page_tokens: int,
        extent_tokens: int = DEFAULT_EXTENT_PAGES * 64,
        shallow_depth_tokens: int = DEFAULT_SHALLOW_DEPTH_PAGES * 64,
        shallow_extent_tokens: int | None = None,
    ) -> "ExtentConfig":
        """The same extents for another page size (sizes in tokens, rounded up to whole pages)."""
        if page_tokens < 1:
            raise ConfigError(f"page_tokens must be >= 1, got {page_tokens}")

        def pages(tokens: int) -> int:
            return -(-tokens // page_tokens)

        shallow_depth = pages(shallow_depth_tokens)
        shallow_extent = shallow_depth if shallow_extent_tokens is None else pages(shallow_extent_tokens)
        return cls(max(1, pages(extent_tokens)), shallow_depth, max(1, shallow_extent) if shallow_depth else 1,
                   max(1, pages(DEFAULT_SPLIT_EXTENT_PAGES * 64)))

    def anchor_depth(self, depth: int) -> int:
        """Depth of the page that anchors (starts) the extent holding the page at `depth`."""
        shallow = self.shallow_depth_pages
        if depth < shallow:
            return depth - depth % self.shallow_extent_pages
        return shallow + extent_of(depth - shallow, self.extent_pages)

    def to_dict(self) -> dict[str, int]:
        return {
            "extent_pages": self.extent_pages,
            "shallow_depth_pages": self.shallow_depth_pages,
            "shallow_extent_pages": self.shallow_extent_pages,
            "split_extent_pages": self.split_extent_pages,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExtentConfig":
        try:
            fields = {name: int(data[name]) for name in cls().to_dict() if name != "split_extent_pages"}
            return cls(**fields, split_extent_pages=int(data.get("split_extent_pages", DEFAULT_SPLIT_EXTENT_PAGES)))
        except (KeyError, TypeError) as error:
            raise ConfigError(f"not an extent config: {error!r}") from error


def routing_key(namespace_id: bytes, anchor_hash: bytes) -> bytes:
    """The ring key of an extent: namespace id || the extent id the index uses (anchor's first 16 B)."""
    return namespace_id + anchor_hash[: page_key.EXTENT_ID_BYTES]


def page_anchors(
    page_hashes: Sequence[bytes], prefix_hashes: Sequence[bytes] | None, extents: ExtentConfig,
    split_extents: AbstractSet[bytes] = frozenset(),
) -> list[tuple[int, bytes]]:
    """(depth, anchor hash) of every page of a batch.

    With `prefix_hashes` (the chain before the batch, from the sequence start) page i is at depth
    len(prefix_hashes) + i and its anchor is the chain's page at `extents.anchor_depth(depth)`.
    With None the depth is unknown: every page is depth 0 and anchors itself (correct, no locality).

    `split_extents` holds extent ids (an anchor hash's first EXTENT_ID_BYTES) of regular extents
    that are split: a page in one is anchored on the first page of its sub-extent of
    `extents.split_extent_pages` pages instead. A shared prefix ending inside an extent makes every
    chain that continues it write its own pages under the shared anchor, all to one shard (the agentic
    workload put 2.7x the mean of the distinct pages on one shard of 8); splitting the extent sends
    each chain's continuation to its own sub-extents. Which extents are split the controller learns
    from the shards and publishes with the ring (docs/placement.md).
    """
    if prefix_hashes is None:
        return [(0, page) for page in page_hashes]
    base = len(prefix_hashes)
    shallow = extents.shallow_depth_pages
    step = min(extents.split_extent_pages, extents.extent_pages)
    anchors: list[tuple[int, bytes]] = []

    def at(depth: int) -> bytes:
        return page_hashes[depth - base] if depth >= base else prefix_hashes[depth]

    for index in range(len(page_hashes)):
        depth = base + index
        anchor = extents.anchor_depth(depth)
        anchor_hash = at(anchor)
        if split_extents and depth >= shallow and anchor_hash[: page_key.EXTENT_ID_BYTES] in split_extents:
            anchor_hash = at(anchor + (depth - anchor) // step * step)
        anchors.append((depth, anchor_hash))
    return anchors


def page_keys(
    namespace_id: bytes,
    page_hashes: Sequence[bytes],
    prefix_hashes: Sequence[bytes] | None,
    extent_pages: int | ExtentConfig,
    split_extents: AbstractSet[bytes] = frozenset(),
) -> list[bytes]:
    """The encoded store keys (raylsm.store.page_key) of a batch, in order; they agree with routing.

    `extent_pages` is an ExtentConfig, or an int for plain extents of that many pages. ValueError if a
    hash is not 32 bytes or a depth does not fit the key.
    """
    extents = extent_pages if isinstance(extent_pages, ExtentConfig) else ExtentConfig.plain(extent_pages)
    return [
        page_key.encode(namespace_id, anchor_hash, depth, page)
        for page, (depth, anchor_hash) in zip(
            page_hashes, page_anchors(page_hashes, prefix_hashes, extents, split_extents))
    ]


class ExtentRouter:
    """Routes page batches: ring + extent rule. Immutable; a new ring version means a new router."""

    __slots__ = ("ring", "extents", "split_extents")

    def __init__(self, ring: HashRing, extent_pages: int | ExtentConfig = ExtentConfig(),
                 split_extents: AbstractSet[bytes] = frozenset()) -> None:
        self.ring = ring
        self.extents = (
            extent_pages if isinstance(extent_pages, ExtentConfig) else ExtentConfig.plain(extent_pages)
        )
        self.split_extents = frozenset(split_extents)

    def shard_of_anchor(self, namespace_id: bytes, anchor_hash: bytes) -> str:
        return self.ring.shard_for(routing_key(namespace_id, anchor_hash))

    def shard_of_key(self, key: bytes) -> str:
        """The shard of an encoded page key (e.g. one found on a draining shard): its routing key is
        the key's namespace id and extent id, so this agrees with `route_batch` for the same page."""
        return self.ring.shard_for(page_key.extent_prefix(key)[1:])

    def route_pages(
        self, namespace_id: bytes, page_hashes: Sequence[bytes], prefix_hashes: Sequence[bytes] | None
    ) -> list[str]:
        """The shard of every page of a batch, in order. EmptyRingError if the ring has no shards."""
        shard_of: dict[bytes, str] = {}  # consecutive pages mostly share an anchor: hash it once
        shards: list[str] = []
        for _, anchor_hash in page_anchors(page_hashes, prefix_hashes, self.extents, self.split_extents):
            shard = shard_of.get(anchor_hash)
            if shard is None:
                shard = shard_of[anchor_hash] = self.shard_of_anchor(namespace_id, anchor_hash)
            shards.append(shard)
        return shards

    def route_batch(
        self, namespace_id: bytes, page_hashes: Sequence[bytes], prefix_hashes: Sequence[bytes] | None
    ) -> list[tuple[str, list[int]]]:
        """Group a batch by shard: [(shard, slots)], shards in order of first appearance, each shard's
        slots (indices into page_hashes) ascending. EmptyRingError if the ring has no shards (an empty
        batch routes to [] even then)."""
        if not page_hashes:
            return []
        groups: dict[str, list[int]] = {}
        for slot, shard in enumerate(self.route_pages(namespace_id, page_hashes, prefix_hashes)):
            groups.setdefault(shard, []).append(slot)
        return list(groups.items())

    def page_keys(
        self, namespace_id: bytes, page_hashes: Sequence[bytes], prefix_hashes: Sequence[bytes] | None
    ) -> list[bytes]:
        return page_keys(namespace_id, page_hashes, prefix_hashes, self.extents, self.split_extents)

