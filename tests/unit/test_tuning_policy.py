"""The tuning policy (raylsm/controller/tuning.py), a pure function, on windows recorded from the
miniature simulations of shifting workloads and on hand-made windows at its margins: it follows a
lasting shift, ignores a one-window blip and thin windows, never oscillates between close candidates,
and versions each change."""

from __future__ import annotations

import dataclasses
import itertools
import random

from raylsm.controller.tuning import ShardTuning, TuningParams, tune, window_of
from raylsm.store.mini_sims import CANDIDATES, MiniSims

PARAMS = TuningParams(decay=0.5, min_references=100, margin_abs=0.005, margin_rel=0.03, confirm_windows=2)
PAGE = 4096


def _versions():
    counter = itertools.count(1000)
    return lambda: next(counter)


def _window(scores: dict[str, float], references: int = 1000) -> dict[str, tuple[int, int]]:
    base = {name: 0.2 for name in CANDIDATES}
    base.update(scores)
    return {name: (references, round(score * references)) for name, score in base.items()}


def _run(windows, start="clock2"):
    """The tuning after each window, for one shard."""
    tuning, history, version = ShardTuning(start), [], _versions()
    for window in windows:
        tuning = tune({"s": window}, {"s": tuning}, PARAMS, version)["s"]
        history.append(tuning)
    return history


def _recorded_windows(phases, capacity_pages=100, window_refs=1500):
    """Windows of cumulative readings of real models, fed each phase's reference stream."""
    sims = MiniSims(capacity_pages * PAGE, min_rate=1.0, ghost_entries=1 << 20)
    sims.start(PAGE)
    readings = [sims.drain()]
    for stream in phases:
        for start in range(0, len(stream), window_refs):
            for digest in stream[start:start + window_refs]:
                sims.record([(digest, digest)])  # each page its own extent, each reference its own call
            readings.append(sims.drain())
    return [window_of(before, now) for before, now in zip(readings, readings[1:])]


def _chat(n, rng):
    """Pages referenced twice, 50 references apart."""
    stream, pending = [], []
    for step in range(n):
        due = [page for page, at in pending if at <= step]
        if due:
            stream.append(due[0])
            pending = [(page, at) for page, at in pending if page != due[0]]
        else:
            page = rng.randrange(1 << 40)
            stream.append(page)
            pending.append((page, step + 50))
    return stream


def _scan_flood(n, rng):
    """An 80-page hot loop, 3 one-off pages between its references."""
    stream = []
    hot = [rng.randrange(1 << 40) for _ in range(80)]
    while len(stream) < n:
        for page in hot:
            stream.append(page)
            stream.extend(rng.randrange(1 << 40) for _ in range(3))
    return stream[:n]


def test_on_recorded_windows_it_follows_a_lasting_shift_and_comes_back():
    rng = random.Random(3)
    windows = _recorded_windows([_chat(15000, rng), _scan_flood(30000, rng), _chat(15000, rng)])
    history = _run(windows)
    choices = [tuning.choice for tuning in history]
    chat1, scan, chat2 = choices[:10], choices[10:30], choices[30:]
    assert not any(choice.startswith("second_touch") for choice in chat1)
    assert all(choice.startswith("second_touch") for choice in scan[-10:])
    assert not any(choice.startswith("second_touch") for choice in chat2[-4:])
    changes = [tuning for previous, tuning in zip(history, history[1:]) if tuning.choice != previous.choice]
    assert len(changes) <= 4  # to second-touch and back, not a flutter
    assert all(later.version > earlier.version for earlier, later in zip(changes, changes[1:]))


def test_a_one_window_lead_changes_nothing_a_lasting_one_does():
    best = {"clock2": 0.30, "clock4": 0.36}
    blip = _run([_window(best), _window({"clock2": 0.30, "clock4": 0.30}), _window(best)])
    assert [tuning.choice for tuning in blip] == ["clock2"] * 3
    assert blip[0].challenger == "clock4" and blip[0].streak == 1
    assert blip[1].challenger is None
    lasting = _run([_window(best)] * 2)
    assert [tuning.choice for tuning in lasting] == ["clock2", "clock4"]
    assert lasting[1].version > 0 and lasting[1].challenger is None


def test_leaving_a_choice_for_candidates_that_tie_goes_to_the_preferred_one():
    # Models restarted from one state tie: every admit-all candidate leads second-touch equally.
    tied = {name: 0.30 for name in CANDIDATES if not name.startswith("second_touch")}
    windows = [_window({**tied, "second_touch_clock1": 0.10, "second_touch_clock2": 0.10})] * 2
    for preferred in ("clock2", "clock4", "fifo"):
        params = dataclasses.replace(PARAMS, preferred=preferred)
        tuning, version = ShardTuning("second_touch_clock1"), _versions()
        for window in windows:
            tuning = tune({"s": window}, {"s": tuning}, params, version)["s"]
        assert tuning.choice == preferred
    # A preferred candidate that does not lead is never chosen for it.
    params = dataclasses.replace(PARAMS, preferred="second_touch_clock2")
    tuning, version = ShardTuning("second_touch_clock1"), _versions()
    for window in windows:
        tuning = tune({"s": window}, {"s": tuning}, params, version)["s"]
    assert not tuning.choice.startswith("second_touch")


def test_leads_inside_the_margins_never_switch():
    # Two candidates that trade a lead of about 1% (under the 3% relative margin) forever.
    windows = [_window({"clock2": 0.30, "clock4": 0.303 if i % 3 else 0.297}) for i in range(50)]
    history = _run(windows)
    assert {tuning.choice for tuning in history} == {"clock2"}
    assert {tuning.version for tuning in history} == {0}


def test_thin_windows_change_nothing():
    thin = _window({"clock2": 0.1, "second_touch_clock1": 0.9}, references=PARAMS.min_references - 1)
    history = _run([thin] * 5)
    assert all(tuning == ShardTuning("clock2") for tuning in history)


def test_a_shard_without_a_window_keeps_its_tuning_and_changed_ones_take_new_versions():
    lead = _window({"clock4": 0.5})
    tunings = {name: ShardTuning("clock2", streak=1, challenger="clock4") for name in ("a", "b", "c")}
    out = tune({"a": lead, "b": lead}, tunings, PARAMS, _versions())
    assert out["c"] == tunings["c"]
    assert out["a"].choice == out["b"].choice == "clock4"
    assert {out["a"].version, out["b"].version} == {1000, 1001}
    assert out["a"].changes() == CANDIDATES["clock4"]


def test_window_of_refuses_a_restarted_shard_and_a_first_reading():
    first = {"incarnation": 1, "candidates": {"clock2": {"references": 10, "hits": 5}}}
    later = {"incarnation": 1, "candidates": {"clock2": {"references": 30, "hits": 9}}}
    assert window_of(None, first) is None
    assert window_of(first, later) == {"clock2": (20, 4)}
    assert window_of(later, {**later, "incarnation": 2}) is None  # counts started again
    assert window_of(later, first) is None  # counts went back


def test_a_lead_inside_the_sampling_noise_never_switches():
    # 300 references a window: 0.010 against 0.000 clears the margins (0.005, 3%) but not two
    # standard errors (about 0.011); at 3,000 references it does.
    noisy = _run([_window({name: 0.0 for name in CANDIDATES} | {"clock4": 0.01}, 300)] * 5)
    assert {tuning.choice for tuning in noisy} == {"clock2"}
    clear = _run([_window({name: 0.0 for name in CANDIDATES} | {"clock4": 0.01}, 3000)] * 2)
    assert clear[-1].choice == "clock4"
