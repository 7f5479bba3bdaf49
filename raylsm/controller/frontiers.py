"""The frontier relay of eviction forwarding (raylsm.actors.forwarding, docs/placement.md).

Owned here: `FrontierRelay`, which each reconcile round hands every serving shard the frontier
reports all shards gave in the previous round and keeps their new ones: one call per shard per
round (`exchange_frontiers`), so a shard's view is at most one round (`reconcile_period_s`) stale,
which the forwarding slack absorbs. Called by the Controller's loop; not thread-safe (the loop is one
thread).
"""

from __future__ import annotations

from typing import Any


class FrontierRelay:
    def __init__(self) -> None:
        self._reports: dict[str, dict] = {}

    def reconcile(self, api: Any, handles: dict[str, Any], timeout_s: float) -> None:
        """Exchange with every shard in `handles` (the serving ones); a shard that fails, does not
        answer or has forwarding off drops out of the reports until it answers again."""
        answers = api.call_all(handles, "exchange_frontiers", timeout_s, dict(self._reports))
        self._reports = {name: answer for name, answer in answers.items() if isinstance(answer, dict)}
