"""The resident digest set against a plain Python set, under random adds, discards, merges and
snapshots (raylsm.store.digest_set)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from raylsm.store.digest_set import DigestSet

DIGESTS = st.integers(0, 2**64 - 1)
OPS = st.lists(st.tuples(st.sampled_from(["add", "discard", "merge", "snapshot"]), st.lists(DIGESTS, max_size=8)),
               max_size=60)


@settings(max_examples=200, deadline=None)
@given(ops=OPS, probes=st.lists(DIGESTS, max_size=20), small_merge=st.booleans())
def test_the_digest_set_answers_as_a_python_set_does(ops, probes, small_merge):
    min_merge = 3 if small_merge else 1 << 16
    mine, truth = DigestSet(min_merge=min_merge), set()
    for op, digests in ops:
        if op == "add":
            mine.update(digests)
            truth.update(digests)
        elif op == "discard":
            for digest in digests:
                mine.discard(digest)
                truth.discard(digest)
        elif op == "merge":
            mine.merge()
        else:
            mine = DigestSet(mine.sorted_array().copy(), min_merge)  # a snapshot reloaded
        everything = list(truth) + probes + [d for _, ds in ops for d in ds]
        assert mine.contains_many(everything) == [d in truth for d in everything]
        assert all((d in mine) == (d in truth) for d in everything[:10])
    assert list(mine.sorted_array()) == sorted(truth)
    assert len(mine) == len(truth)


def test_it_holds_about_eight_bytes_per_digest_once_merged():
    digests = DigestSet()
    digests.update(range(1, 300_001))
    digests.merge()
    assert digests.nbytes() == 8 * 300_000
    digests.clear()
    assert len(digests) == 0 and 5 not in digests


def test_a_digest_written_again_and_discarded_leaves_the_set():
    # A reinsertion re-appends a live page: its digest is added while already in the base.
    digests = DigestSet()
    digests.update([7, 8])
    digests.merge()
    digests.update([7])
    digests.discard_many([7])
    assert 7 not in digests and digests.contains_many([7, 8]) == [False, True]
    assert list(digests.sorted_array()) == [8]


def test_discard_many_matches_discarding_one_at_a_time():
    one, many = DigestSet(min_merge=4), DigestSet(min_merge=4)
    for digests in (one, many):
        digests.update(range(0, 40, 2))
        digests.merge()
        digests.update(range(0, 60, 3))
    for digest in range(0, 60, 5):
        one.discard(digest)
    many.discard_many(list(range(0, 60, 5)))
    assert list(one.sorted_array()) == list(many.sorted_array())
    assert 0 not in many and 6 in many and 10 not in many


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=300))
def test_from_digests_holds_each_digest_once_in_any_input_order(digests):
    import numpy as np

    held = DigestSet.from_digests(np.array(digests, dtype=np.uint64))
    assert held.sorted_array().tolist() == sorted(set(digests))
    assert len(held) == len(set(digests))
    assert held.contains_many(digests + [12345]) == [True] * len(digests) + [12345 in digests]
