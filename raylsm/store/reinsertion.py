"""Reinsertion policies: which pages of a segment being evicted earn a re-append. Chosen by name.

Called by the shard store's eviction under its write lock, once per live page of the evicted
segment, with the number of reads the page served since it was written, plus the reads it banked
at its last re-append (StoreConfig.reinsertion_read_credits; kept in memory, so it starts at zero
after a reopen) and a callable telling whether a deeper page of its extent lives in a
newer segment (the page is a prefix that live pages need; an index seek, so only policies that use
it pay for it). The byte budget is the mechanism's, not the policy's.
"""

from __future__ import annotations

from typing import Callable, Protocol

from raylsm.store.config import StoreConfig

PrefixOfLive = Callable[[], bool]


class ReinsertionPolicy(Protocol):
    def should_reinsert(self, key: bytes, reads_since_written: int, prefix_of_live: PrefixOfLive) -> bool: ...


class NeverReinsert:
    """Plain FIFO: an evicted segment takes all its pages with it."""

    def should_reinsert(self, key: bytes, reads_since_written: int, prefix_of_live: PrefixOfLive) -> bool:
        return False


class ReadSinceWritten:
    """Keep pages that served at least one read since they were written (FIFO with a second chance)."""

    def should_reinsert(self, key: bytes, reads_since_written: int, prefix_of_live: PrefixOfLive) -> bool:
        return reads_since_written > 0


class PrefixAware:
    """Keep pages read since written, and pages that newer pages of their chain depend on.

    FIFO frees a chain's oldest pages first, but a prefix page is worth most: every deeper page is a
    miss without it (SGLang counts a prefix hit). And the hottest prefix pages are served by the host
    tier above, so the store sees no reads of them. Keeping the prefixes of live extents fixes both.
    """

    def should_reinsert(self, key: bytes, reads_since_written: int, prefix_of_live: PrefixOfLive) -> bool:
        return reads_since_written > 0 or prefix_of_live()


REINSERTION_POLICIES: dict[str, Callable[[StoreConfig], ReinsertionPolicy]] = {
    "none": lambda config: NeverReinsert(),
    "read_since_written": lambda config: ReadSinceWritten(),
    "prefix_aware": lambda config: PrefixAware(),
}


def make_reinsertion_policy(config: StoreConfig) -> ReinsertionPolicy:
    return REINSERTION_POLICIES[config.reinsertion_policy](config)
