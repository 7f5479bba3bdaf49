"""The namespace table: which generation of each namespace is current, and which ids were cleared.

A page's index key starts with an 8-byte namespace id. `clear` of a namespace does not chase its
pages across the tier: it moves the namespace to its next generation, whose id is new, and retires
the old id. Clients of the new generation never ask for the old keys; every shard deletes the retired
id's pages and refuses writes to it; a shard that was down when it happened gets the table before
it serves again (raylsm.actors.shard_actor fences reads until synced). So no process gets a hit on a
page written before the clear, wherever it lived.

Owned here: the table (a small msgpack-friendly dict, versioned by the number of clears), the
generation -> id rule, and merging tables (a restarted controller rebuilds the table from the
shards). Pure functions over plain data; thread-safe. Called by the controller, the shard actor,
the shard store (which persists the table) and the tier client.

Table: {"version": int, "generations": {base id hex: generation}, "retired": [id hex, ...]}.
"""

from __future__ import annotations

from typing import Any, Mapping

import xxhash

EMPTY_TABLE: dict[str, Any] = {"version": 0, "generations": {}, "retired": []}


def generation_id(base_id: bytes, generation: int) -> bytes:
    """The 8-byte namespace id of `base_id` at `generation` (generation 0 is the base id itself, so
    pages stored before any clear keep their keys)."""
    if generation == 0:
        return base_id
    return xxhash.xxh64_digest(base_id + generation.to_bytes(4, "big"))


def cleared(table: Mapping[str, Any], base_id: bytes) -> dict[str, Any]:
    """The table after a clear of `base_id`: its next generation, its current id retired."""
    generations = dict(table["generations"])
    current = generations.get(base_id.hex(), 0)
    generations[base_id.hex()] = current + 1
    retired = sorted(set(table["retired"]) | {generation_id(base_id, current).hex()})
    return {"version": table["version"] + 1, "generations": generations, "retired": retired}


def merged(*tables: Mapping[str, Any] | None) -> dict[str, Any]:
    """One table holding every clear any of `tables` knows of (generations: max; retired: union)."""
    generations: dict[str, int] = {}
    retired: set[str] = set()
    version = 0
    for table in tables:
        if not table:
            continue
        version = max(version, int(table.get("version", 0)))
        for base, generation in table.get("generations", {}).items():
            generations[base] = max(generations.get(base, 0), int(generation))
        retired.update(table.get("retired", ()))
    return {"version": version, "generations": generations, "retired": sorted(retired)}


def retired_ids(table: Mapping[str, Any] | None) -> frozenset[bytes]:
    return frozenset(bytes.fromhex(name) for name in (table or EMPTY_TABLE)["retired"])


def current_ids(table: Mapping[str, Any] | None) -> dict[bytes, bytes]:
    """base id -> id of its current generation, for every namespace that was ever cleared."""
    generations = (table or EMPTY_TABLE)["generations"]
    return {bytes.fromhex(base): generation_id(bytes.fromhex(base), generation)
            for base, generation in generations.items()}
