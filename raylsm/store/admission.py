"""Admission policies: which offered pages a put stores. Chosen by name from a registry.

Called by the shard store under its write lock (so policies need no locking of their own). A policy
sees only the key and size of each offered page and answers admit or not; a rejected page is
reported False by put_batch and counted as `puts_rejected`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Protocol

from raylsm.store.config import StoreConfig


class AdmissionPolicy(Protocol):
    def admit(self, key: bytes, nbytes: int) -> bool: ...


class AdmitAll:
    """Store every offered page."""

    def admit(self, key: bytes, nbytes: int) -> bool:
        return True


class SecondTouch:
    """Store a page the second time it is offered within a bounded window of recent offers.

    Most pages of a chat trace are never read again (63% of the conversation trace's blocks): writing
    them only evicts pages that would be. The ghost window remembers the last `capacity` offered keys.
    """

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._ghosts: OrderedDict[bytes, None] = OrderedDict()

    def admit(self, key: bytes, nbytes: int) -> bool:
        if key in self._ghosts:
            del self._ghosts[key]
            return True
        self._ghosts[key] = None
        if len(self._ghosts) > self._capacity:
            self._ghosts.popitem(last=False)
        return False


ADMISSION_POLICIES: dict[str, Callable[[StoreConfig], AdmissionPolicy]] = {
    "admit_all": lambda config: AdmitAll(),
    "second_touch": lambda config: SecondTouch(config.admission_ghost_entries),
}


def make_admission_policy(config: StoreConfig) -> AdmissionPolicy:
    return ADMISSION_POLICIES[config.admission_policy](config)
