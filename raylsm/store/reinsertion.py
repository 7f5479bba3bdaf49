"""Reinsertion policies: which pages of a segment being evicted earn a re-append. Chosen by name.

Called by the shard store's eviction under its write lock, once per live page of the evicted
segment, with the number of reads the page served since it was written (kept in memory, so it
starts at zero after a reopen). The byte budget is the mechanism's, not the policy's.
"""

from __future__ import annotations

from typing import Callable, Protocol

from raylsm.store.config import StoreConfig


class ReinsertionPolicy(Protocol):
    def should_reinsert(self, key: bytes, reads_since_written: int) -> bool: ...


class NeverReinsert:
    """Plain FIFO: an evicted segment takes all its pages with it."""

    def should_reinsert(self, key: bytes, reads_since_written: int) -> bool:
        return False


class ReadSinceWritten:
    """Keep pages that served at least one read since they were written (FIFO with a second chance)."""

    def should_reinsert(self, key: bytes, reads_since_written: int) -> bool:
        return reads_since_written > 0


REINSERTION_POLICIES: dict[str, Callable[[StoreConfig], ReinsertionPolicy]] = {
    "none": lambda config: NeverReinsert(),
    "read_since_written": lambda config: ReadSinceWritten(),
}


def make_reinsertion_policy(config: StoreConfig) -> ReinsertionPolicy:
    return REINSERTION_POLICIES[config.reinsertion_policy](config)
