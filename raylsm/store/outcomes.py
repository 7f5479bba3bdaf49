"""Per-page outcomes of a put, shared by the shard store, the shard actor and the tier client.

A put answers one code per page. The store's `put_batch` folds them into a bool ("the page is in the
store"); the actor returns the codes themselves so that the client can tell a page it just stored
from one that was already there (a timed-out put that lands late is undone only where it stored),
and a page the admission policy declined (SGLang must go on backing up the sequence) from one that
failed. Pure data, thread-safe.
"""

from __future__ import annotations

from enum import IntEnum


class PutOutcome(IntEnum):
    FAILED = 0      # an I/O error (ENOSPC, EIO) kept it off the disk
    STORED = 1      # written by this call
    PRESENT = 2     # already stored: skipped
    DECLINED = 3    # the admission policy did not admit it (not stored; not a failure)
    TOO_LARGE = 4   # larger than a segment can hold (input error)
    BAD_VALUE = 5   # not a contiguous buffer (input error)
    EXPIRED = 6     # the call's deadline had passed before it could be written
    RETIRED = 7     # its namespace id was cleared (an older generation): never stored again


IN_STORE = frozenset({PutOutcome.STORED, PutOutcome.PRESENT})
# What the client may answer True for: in the store, or declined by admission on purpose (a refusal
# that SGLang took for a failure would stop its backup of the whole sequence).
ACCEPTED = IN_STORE | {PutOutcome.DECLINED}
