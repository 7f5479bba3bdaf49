"""Miniature simulations of candidate store configurations on the shard's own sampled references: what
each admission and reinsertion choice would hit on this shard's workload, for the controller's tuning
policy (issue 10, section 2; raylsm.controller.tuning).

Owned here: `MiniSims` and the candidate configurations (`CANDIDATES`). WorkloadStats records the
references of sampled pages of each probe and put (`sample`, then `record`: one list append a call);
`drain` runs the simulations over what was recorded (the controller's pull every few seconds, not
the data path) and returns each candidate's cumulative references and hits. Thread-safe: one lock for
the event buffer, one for the simulations. Imports no Ray, SGLang or torch.

The method is Waldspurger et al.'s miniature simulation ("Cache Modeling and Optimization using
Miniature Simulations", USENIX ATC 2017): a cache of capacity C fed the references of a spatial
sample of rate R (a page is in it iff its key digest mod 2**24 < R x 2**24, as SHARDS samples) behaves
like the full cache fed all references, scaled by R, so one small model per candidate configuration
predicts that configuration's hit ratio on this workload. The rate is chosen at the first write so a
model holds about SIM_PAGES pages (never below the workload statistics' rate): the paper's models
were accurate from about a thousand sampled pages.

What is modelled, page by page: a reference is a hit if the model holds the page and no earlier
sampled page of its extent missed in the same call (SGLang loads a chain's prefix up to its first
miss); a miss is an offer, stored or not by the admission choice ("admit_all"; "second_touch":
stored the second time it is offered within a ghost of the store's admission_ghost_entries x R
offers); eviction takes the oldest
page, and a page read since it was written (plus the reads it banked, up to
reinsertion_read_credits) is re-appended instead ("read_since_written", a CLOCK; "none" is FIFO).
Not modelled: segment granularity (the store evicts and re-appends a segment's pages together),
the reinsertion budget fraction, and prefix semantics beyond the sampled pages of one extent in one
call (a page past an unsampled miss, or in a put of pages no probe asked, counts as a hit if the
model holds it; the models share that optimism, so it shifts them alike).
References are the pages SGLang asks and writes, whatever the running store holds
(raylsm.store.workload_stats): every key of a probe (not only those up to the store's first miss:
each model stops at its own), and a put's pages that no probe asked just before (pages past the
probes SGLang made, written without a probe, or present here past this store's first miss). So
every model sees one stream, the one its policy would have been asked.
NOTE: before, a model saw a probe only up to the running store's first miss, and the put behind it
as a call of its own: the pages a model held past that miss counted as hits of the put (SGLang
loads none of them), and pages this store held past its miss were no references at all. Replayed
straight into one store per candidate (no Ray; capacity 0.05, every page sampled, the models
drained every 100 requests as the controller drains them; a /tmp script), one candidate's
prediction moved with the store it ran in by up to 5.7% (the packaged trace, 0.25 of its
conversations) and 10.2% (the generator's agentic trace); now by up to 2.4% and 5.8%, what the
rebases (below) leave. Without rebases the predictions are the same from every store
(tests/unit/test_mini_sims.py).
NOTE: cost (2 cores, Python 3.11): `drain` ran 0.7 s for 85,000 sampled references and the six
candidates (the generator's agentic trace, one store): about 1.4 us per reference and candidate.
Recording costs a modulus per key, an xxh64 per extent the call touches and one list append.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Mapping, Sequence

import xxhash

from raylsm.store.config import StoreConfig
from raylsm.store.page_key import EXTENT_PREFIX_BYTES

MODULUS = 1 << 24  # sampling: a hash mod MODULUS below rate x MODULUS is sampled

SIM_PAGES = 1024  # pages a model holds at the shard's capacity (sets the sampling rate)
MAX_EVENTS = 1 << 18  # references buffered between drains; more are dropped (counted)
# Cache turnovers of the running configuration's model between rebases (`drain`): long enough for an
# admission choice to pay off (second-touch needs two offers of a page before its hits), short
# enough that a model's past choices stop weighing on it soon after a phase ends.
# NOTE: rebasing every turnover, a scan flood never showed second-touch's worth (its model lost the
# pages it protected at each rebase: tests/ray/test_tuning_cluster.py timed out); without rebasing,
# `raylsm bench adaptive --quick` kept second-touch through most of the agents phase (0.19 L3 hit
# there against 0.25 for the default).
REBASE_TURNOVERS = 4

# The configurations the models compare, by name: StoreConfig changes. The controller may choose any
# of them; `raylsm bench adaptive` runs each as a static configuration.
CANDIDATES: dict[str, dict] = {
    "fifo": {"admission_policy": "admit_all", "reinsertion_policy": "none"},
    "clock1": {"admission_policy": "admit_all", "reinsertion_policy": "read_since_written",
               "reinsertion_read_credits": 1},
    "clock2": {"admission_policy": "admit_all", "reinsertion_policy": "read_since_written",
               "reinsertion_read_credits": 2},
    "clock4": {"admission_policy": "admit_all", "reinsertion_policy": "read_since_written",
               "reinsertion_read_credits": 4},
    "second_touch_clock1": {"admission_policy": "second_touch", "reinsertion_policy": "read_since_written",
                            "reinsertion_read_credits": 1},
    "second_touch_clock2": {"admission_policy": "second_touch", "reinsertion_policy": "read_since_written",
                            "reinsertion_read_credits": 2},
}
TUNED_FIELDS = ("admission_policy", "reinsertion_policy", "reinsertion_read_credits")


def candidate_of(config: StoreConfig) -> str | None:
    """The candidate name `config` runs, or None if it is none of them."""
    for name, changes in CANDIDATES.items():
        if all(getattr(config, field) == value for field, value in changes.items()):
            return name
    return None


class _Model:
    """One candidate's cache: pages in FIFO order with their reads since written and banked reads."""

    def __init__(self, changes: Mapping, ghost_entries: int) -> None:
        self.second_touch = changes["admission_policy"] == "second_touch"
        self.reinsert = changes["reinsertion_policy"] == "read_since_written"
        self.credits = changes.get("reinsertion_read_credits", 1)
        self.pages: OrderedDict[int, list[int]] = OrderedDict()  # digest -> [reads, banked]
        self.ghost: OrderedDict[int, None] = OrderedDict()
        self.ghost_entries = max(1, ghost_entries)
        self.references = 0
        self.hits = 0
        self.inserts = 0  # pages stored (rebase counts its turnovers)

    def call(self, entries: Sequence[tuple[int, int]], capacity: int) -> None:
        """One call's counted references, (extent, page digest) in chain order: a hit if held and
        no earlier page of its extent in this call missed (SGLang stops at a chain's first miss);
        else a miss, and an offer if not held (the page is computed and written back)."""
        broken: set[int] = set()
        for extent, digest in entries:
            self.references += 1
            entry = self.pages.get(digest)
            if extent not in broken:
                if entry is not None:
                    self.hits += 1
                    entry[0] += 1
                    continue
                broken.add(extent)
            if entry is None:
                self._offer(digest, capacity)

    def _offer(self, digest: int, capacity: int) -> None:
        if self.second_touch:
            if digest in self.ghost:
                del self.ghost[digest]
            else:
                self.ghost[digest] = None
                if len(self.ghost) > self.ghost_entries:
                    self.ghost.popitem(last=False)
                return
        pages = self.pages
        pages[digest] = [0, 0]
        self.inserts += 1
        while len(pages) > capacity:
            victim, (reads, banked) = pages.popitem(last=False)
            earned = reads + banked
            if self.reinsert and earned > 0:
                pages[victim] = [0, min(earned, self.credits) - 1]


class MiniSims:
    def __init__(self, capacity_bytes: int, min_rate: float, ghost_entries: int,
                 candidates: Mapping[str, Mapping] = CANDIDATES) -> None:
        """`capacity_bytes`: the shard's capacity the models stand for; `min_rate`: the lowest
        sampling rate (the workload statistics'); `ghost_entries`: second_touch's ghost size at full
        scale (StoreConfig.admission_ghost_entries)."""
        self._capacity_bytes = capacity_bytes
        self._min_rate = min_rate
        self._ghost_entries = ghost_entries
        self._candidates = dict(candidates)
        self.threshold = 0  # digests mod 2**24 below this are sampled; 0 until the first write
        self.rate = 0.0
        self._capacity_pages = 0
        self._events: list[tuple[tuple[int, int], ...]] = []
        self._buffered = 0
        self._dropped = 0
        self._events_lock = threading.Lock()
        self._sim_lock = threading.Lock()
        self._models: dict[str, _Model] = {}
        self._incarnation = time.time_ns()  # tells a reader that the counts started again
        self._rebased_at = 0  # the running model's inserts at the last rebase
        self._rebases = 0

    def start(self, page_bytes: int) -> None:
        """Fix the sampling rate from the first written page's size (the caller's lock held)."""
        if self.threshold or page_bytes <= 0:
            return
        pages = max(1, self._capacity_bytes // page_bytes)
        self.rate = min(1.0, max(self._min_rate, SIM_PAGES / pages))
        self.threshold = max(1, round(self.rate * MODULUS))
        self._capacity_pages = max(1, round(pages * self.rate))
        ghost = round(self._ghost_entries * self.rate)
        self._models = {name: _Model(changes, ghost) for name, changes in self._candidates.items()}

    def sample(self, keys: Sequence[bytes], digests: Sequence[int]) -> list[tuple[int, int]]:
        """(extent, page digest) of the sampled keys (by page digest, as the workload statistics
        sample), in chain order, with their extent (the hash of the key's extent prefix): a model
        stops an extent's chain at its first sampled miss in a call, as SGLang stops at a chain's
        first miss.
        NOTE: sampling whole extents instead (by the extent prefix's hash) made the models
        overpredict: on the packaged trace's L3 stream at capacity 0.05, FIFO's model said 0.184
        where the store hit 0.105 (a few large, hot extents in or out of the sample move the
        sampled references far from rate x all). By page, 0.104 against 0.105."""
        threshold = self.threshold
        out: list[tuple[int, int]] = []
        previous, extent = None, 0
        for key, digest in zip(keys, digests):
            if digest % MODULUS >= threshold:
                continue
            prefix = key[:EXTENT_PREFIX_BYTES]
            if prefix != previous:
                previous = prefix
                extent = xxhash.xxh64_intdigest(prefix)
            out.append((extent, digest))
        return out

    def record(self, entries: Sequence[tuple[int, int]]) -> None:
        """One call's references of sampled extents (`sample`): the keys of a probe, or a put's
        pages that no probe asked just before."""
        if not entries:
            return
        with self._events_lock:
            if self._buffered < MAX_EVENTS:
                self._events.append(tuple(entries))
                self._buffered += len(entries)
            else:
                self._dropped += len(entries)

    def drain(self, running: str | None = None) -> dict:
        """Run the models over the references recorded since the last drain. Returns
        {"incarnation", "rate", "capacity_pages", "dropped", "rebases", "candidates": {name:
        {"references", "hits"}}}, counts cumulative since these models started (`incarnation`, a
        nanosecond time), of sampled references (divide by rate for all).

        `running`: the candidate the store runs. Once its model has stored REBASE_TURNOVERS caches'
        worth of pages since the last rebase, every other model restarts from a copy of its pages
        (keeping its own ghost): each then predicts what its policy would do from the store's
        present state, not from the state its own past choices built (which lags a workload that
        shifts: a model that declined a phase's pages keeps missing them long after the phase's
        winner would have changed)."""
        with self._events_lock:
            events, self._events = self._events, []
            self._buffered = 0
            dropped = self._dropped
        with self._sim_lock:
            capacity = self._capacity_pages
            for model in self._models.values():
                reference = model.call
                for entries in events:
                    reference(entries, capacity)
            base = self._models.get(running) if running is not None else None
            if base is not None and base.inserts - self._rebased_at >= REBASE_TURNOVERS * capacity:
                for model in self._models.values():
                    if model is not base:
                        model.pages = OrderedDict((digest, list(entry)) for digest, entry in base.pages.items())
                self._rebased_at = base.inserts
                self._rebases += 1
            return {"incarnation": self._incarnation, "rate": self.rate, "capacity_pages": capacity,
                    "dropped": dropped, "rebases": self._rebases,
                    "candidates": {name: {"references": model.references, "hits": model.hits}
                                   for name, model in self._models.items()}}
