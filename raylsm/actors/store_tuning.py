"""A shard's side of the controller's store tuning: the version of the tuning it runs, applying a
pushed tuning, and the window the tuning policy reads (raylsm.controller.tuning).

Owned here: `StoreTuning`. Called by ShardServer's `apply_tuning` and `tuning_window` (so by the
controller through Ray), and by tests without Ray. Thread-safe: one lock orders pushes and reads.
The version lives in memory: a restarted shard reports 0 and runs its configured default until the
controller pushes its tuning again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

from raylsm.store import ShardStore
from raylsm.store.mini_sims import TUNED_FIELDS, candidate_of

logger = logging.getLogger(__name__)


class StoreTuning:
    def __init__(self, store: ShardStore, shard_name: str) -> None:
        self._store = store
        self._name = shard_name
        self._lock = threading.Lock()
        self.version = 0  # of the controller's last tuning applied (0: none since this start)

    def apply(self, changes: dict, version: int | None = None) -> dict:
        """Apply live store config changes (ConfigError, nothing changed, if any field cannot change
        live). `version`: the controller's version of this tuning; a push not newer than the one
        applied is ignored (a late push of a replaced controller). Returns {"version": the version
        applied, "config": the store config}."""
        with self._lock:
            if version is None or version > self.version:
                config = self._store.apply_tuning(changes)
                if version is not None:
                    self.version = version
                    logger.info("shard %s: tuning version %d applied: %s", self._name, version, changes)
            else:
                config = self._store.config
            return {"version": self.version, "config": dataclasses.asdict(config)}

    def window(self) -> dict:
        """{"version": applied, "choice": the candidate configuration the store runs (None if none
        of raylsm.store.mini_sims.CANDIDATES), "config": its tuned fields, "sims": the miniature
        simulations' cumulative counts (None when the workload statistics are off)}."""
        with self._lock:
            config = self._store.config
            return {"version": self.version, "choice": candidate_of(config),
                    "config": {name: getattr(config, name) for name in TUNED_FIELDS},
                    "sims": self._store.drain_sims()}
