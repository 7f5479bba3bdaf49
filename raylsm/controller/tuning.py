"""The tuning policy: each shard's stats window in, each shard's store configuration out (issue 10,
section 2). A pure function, unit-tested on recorded windows; the controller runs it each tuning
period and pushes what changed (raylsm.controller.controller).

Owned here: `ShardTuning` (a shard's chosen configuration, its version, and the policy's memory),
`TuningParams`, `window_of` (a shard's window from two cumulative readings of its miniature
simulations) and `tune`. Imports no Ray.

The evidence is the shard's own miniature simulations (raylsm.store.mini_sims): for each candidate
configuration, the sampled references of the window and the hits that configuration would have
served. Scores are hit ratios over an exponentially decayed window (`decay` per window: recent
windows weigh most, so a phase change shows within a few periods). Hysteresis, so that two close
candidates never make it oscillate: a candidate replaces the current choice only after it leads it
by `margin_abs` and `margin_rel` (relative to the current score), in the decayed scores and in the
window alone (there also by `significance` standard errors of the difference of two binomial
ratios: sampling noise is no lead), in `confirm_windows` consecutive windows of at least
`min_references` sampled references; a window with fewer references changes nothing. A change gets a new version (`next_version`, above every version given before).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

from raylsm.store.mini_sims import CANDIDATES

Window = Mapping[str, tuple[int, int]]  # candidate -> (sampled references, hits) in the window


@dataclass(frozen=True)
class TuningParams:
    decay: float = 0.5  # weight of the past per window, in [0, 1)
    min_references: int = 256  # sampled references a window needs to count
    margin_abs: float = 0.005  # hit ratio a challenger must lead by...
    margin_rel: float = 0.03  # ...and this fraction of the current choice's score
    confirm_windows: int = 2  # ...in this many windows in a row
    significance: float = 2.0  # ...and by this many standard errors of the window's difference
    # The candidate a tie goes to after the current choice: the shard's configured default (what
    # the operator chose), not whichever comes first in CANDIDATES.
    preferred: str | None = None


@dataclass(frozen=True)
class ShardTuning:
    choice: str  # a CANDIDATES name
    version: int = 0  # 0: the shard's configured default, never pushed
    scores: Mapping[str, float] = field(default_factory=dict)  # decayed hit ratio per candidate
    weight: float = 0.0  # decayed references behind the scores
    challenger: str | None = None  # a candidate leading the choice past the margins
    streak: int = 0  # consecutive windows it has led

    def changes(self) -> dict:
        """The StoreConfig changes the choice stands for."""
        return dict(CANDIDATES[self.choice])


def window_of(before: Mapping | None, now: Mapping) -> dict[str, tuple[int, int]] | None:
    """The window between two `tuning_window()["sims"]` readings of one shard, or None when there
    is no earlier reading or the counts went back (the shard restarted: `now` is a first reading)."""
    if not before or not now or before.get("incarnation") != now.get("incarnation"):
        return None
    old, new = before.get("candidates", {}), now.get("candidates", {})
    window = {}
    for name, counts in new.items():
        previous = old.get(name)
        if previous is None:
            return None
        references = counts["references"] - previous["references"]
        hits = counts["hits"] - previous["hits"]
        if references < 0 or hits < 0:
            return None
        window[name] = (references, hits)
    return window


def tune(windows: Mapping[str, Window], current: Mapping[str, ShardTuning], params: TuningParams,
         next_version: Callable[[], int]) -> dict[str, ShardTuning]:
    """New tunings for the shards in `current` (a shard without a window keeps its tuning)."""
    return {name: _tune_one(windows.get(name), tuning, params, next_version) for name, tuning in current.items()}


def _tune_one(window: Window | None, tuning: ShardTuning, params: TuningParams,
              next_version: Callable[[], int]) -> ShardTuning:
    if not window:
        return tuning
    references = max(counts[0] for counts in window.values())
    if references < params.min_references:
        return tuning
    past = params.decay * tuning.weight
    scores = {}
    for name, (refs, hits) in window.items():
        if name not in CANDIDATES or refs <= 0:
            continue
        old = tuning.scores.get(name)
        scores[name] = (past * old + hits) / (past + refs) if old is not None else hits / refs
    updated = dataclasses.replace(tuning, scores=scores, weight=past + references)
    if tuning.choice not in scores:
        return dataclasses.replace(updated, challenger=None, streak=0)
    current = scores[tuning.choice]
    # The best; on a tie the current choice, then the preferred one, then CANDIDATES order.
    # NOTE: models restarted from one state (a rebase) tie until their evictions differ; with ties
    # going to CANDIDATES order, `bench adaptive` (1/8 of the trace) moved a shard leaving
    # second-touch to FIFO, which it kept through most of the agents phase.
    order = list(CANDIDATES)
    best = max(scores, key=lambda name: (scores[name], name == tuning.choice, name == params.preferred,
                                         -order.index(name)))
    margin = max(params.margin_abs, params.margin_rel * current)
    refs, hits = window[best]
    own_refs, own_hits = window[tuning.choice]
    challenger_ratio, own_ratio = hits / refs, own_hits / max(own_refs, 1)
    # Sampling noise of the window's difference (two binomial ratios): a lead inside
    # `significance` standard errors is no lead.
    noise = params.significance * math.sqrt((challenger_ratio * (1 - challenger_ratio) / refs)
                                            + own_ratio * (1 - own_ratio) / max(own_refs, 1))
    # It must lead in the decayed scores and in this window alone (a past spike that decays
    # does not count as a lead).
    if (best == tuning.choice or scores[best] - current < margin
            or challenger_ratio - own_ratio < max(margin, noise)):
        return dataclasses.replace(updated, challenger=None, streak=0)
    streak = tuning.streak + 1 if tuning.challenger == best else 1
    if streak < params.confirm_windows:
        return dataclasses.replace(updated, challenger=best, streak=streak)
    return dataclasses.replace(updated, choice=best, version=next_version(), challenger=None, streak=0)
