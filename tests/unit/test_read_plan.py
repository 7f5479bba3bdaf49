"""read_plan.plan_reads: sorted by location, merged within merge_gap_bytes, never across segments,
gaps as scratch parts, bounded parts per run."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from raylsm.store.format import Pointer
from raylsm.store.read_plan import MAX_PARTS_PER_RUN, ReadRun, plan_reads


def _p(segment_id, offset, length):
    return Pointer(segment_id, offset, length, 0)


def test_empty_batch_plans_no_reads():
    assert plan_reads([], 65536) == []


def test_sorted_and_merged_within_the_gap():
    wanted = [(0, _p(1, 8192, 100)), (1, _p(1, 0, 5000)), (2, _p(1, 12288, 4096))]
    assert plan_reads(wanted, merge_gap_bytes=4096) == [
        ReadRun(1, 0, [(1, 5000), (-1, 3192), (0, 100), (-1, 3996), (2, 4096)])]


def test_gap_larger_than_merge_gap_starts_a_new_run():
    wanted = [(0, _p(1, 0, 100)), (1, _p(1, 8192, 100))]
    assert plan_reads(wanted, merge_gap_bytes=8091) == [ReadRun(1, 0, [(0, 100)]), ReadRun(1, 8192, [(1, 100)])]
    assert plan_reads(wanted, merge_gap_bytes=8092) == [ReadRun(1, 0, [(0, 100), (-1, 8092), (1, 100)])]


def test_adjacent_pages_merge_without_a_gap_part_even_with_zero_merge_gap():
    wanted = [(0, _p(2, 4096, 4096)), (1, _p(2, 0, 4096))]
    assert plan_reads(wanted, merge_gap_bytes=0) == [ReadRun(2, 0, [(1, 4096), (0, 4096)])]


def test_never_merges_across_segments():
    # Same offsets in two segments, and a page of segment 2 right where segment 1's page ends.
    wanted = [(0, _p(1, 0, 4096)), (1, _p(2, 4096, 4096)), (2, _p(2, 0, 4096)), (3, _p(1, 4096, 10))]
    runs = plan_reads(wanted, merge_gap_bytes=1 << 20)
    assert runs == [ReadRun(1, 0, [(0, 4096), (3, 10)]), ReadRun(2, 0, [(2, 4096), (1, 4096)])]


def test_the_same_page_twice_reads_it_twice_without_overlapping_parts():
    wanted = [(0, _p(1, 4096, 500)), (1, _p(1, 4096, 500))]
    runs = plan_reads(wanted, merge_gap_bytes=1 << 20)
    assert sorted(slot for run in runs for slot, _ in run.parts if slot >= 0) == [0, 1]
    assert all(nbytes >= 0 for run in runs for _, nbytes in run.parts)


def test_runs_are_split_below_iov_max():
    wanted = [(i, _p(0, i * 8192, 100)) for i in range(3000)]
    runs = plan_reads(wanted, merge_gap_bytes=1 << 20)
    assert len(runs) > 1
    assert all(len(run.parts) <= MAX_PARTS_PER_RUN for run in runs)
    assert sorted(slot for run in runs for slot, _ in run.parts if slot >= 0) == list(range(3000))


pointer_sets = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 64), st.integers(0, 3 * 4096)), min_size=0, max_size=60,
    unique_by=lambda t: (t[0], t[1]))


@settings(max_examples=200)
@given(pointer_sets, st.integers(0, 5 * 4096))
def test_plan_covers_every_page_once_at_its_offset(pointers, merge_gap_bytes):
    # Pages at distinct 4096-block indices, spaced so that they never overlap.
    wanted = [(slot, _p(segment_id, block * 4 * 4096, length))
              for slot, (segment_id, block, length) in enumerate(pointers)]
    by_slot = dict(wanted)
    runs = plan_reads(wanted, merge_gap_bytes)
    seen = []
    previous = None
    for run in runs:
        assert len(run.parts) <= MAX_PARTS_PER_RUN
        assert previous is None or (run.segment_id, run.offset) > previous
        previous = (run.segment_id, run.offset)
        cursor = run.offset
        for index, (slot, nbytes) in enumerate(run.parts):
            if slot < 0:
                assert 0 < nbytes <= merge_gap_bytes
                assert 0 < index < len(run.parts) - 1  # gaps only between pages
            else:
                assert by_slot[slot].segment_id == run.segment_id
                assert by_slot[slot].offset == cursor
                assert by_slot[slot].length == nbytes
                seen.append(slot)
            cursor += nbytes
    assert sorted(seen) == sorted(by_slot)
    # Maximal merging: consecutive runs of one segment are split only by a gap too large.
    for before, after in zip(runs, runs[1:]):
        if before.segment_id == after.segment_id and len(before.parts) + 2 <= MAX_PARTS_PER_RUN:
            end = before.offset + sum(nbytes for _, nbytes in before.parts)
            assert after.offset - end > merge_gap_bytes or after.offset < end


def test_pages_of_several_parts_count_every_iovec_against_the_limit():
    wanted = [(i, _p(0, i * 8192, 100)) for i in range(600)]
    parts = {i: 3 for i in range(600)}  # e.g. pages read into K, V and a third buffer
    runs = plan_reads(wanted, merge_gap_bytes=1 << 20, buffers_per_slot=parts)
    for run in runs:
        iovecs = sum(parts[slot] if slot >= 0 else 1 for slot, _ in run.parts)
        assert iovecs <= MAX_PARTS_PER_RUN
    assert len(runs) >= 3
    assert sorted(slot for run in runs for slot, _ in run.parts if slot >= 0) == list(range(600))
