"""Crash safety: kill -9 of a writer process at random moments, then reopen. Every batch whose put
returned True before the kill is readable with its exact bytes (unless its segment was evicted),
nothing returns wrong bytes, the torn or preallocated tail is cut, and the store takes new writes.
Also torn tails made by hand, and repeated crash/reopen cycles on one directory."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from raylsm.store import ShardStore, StoreConfig
from raylsm.store import format as fmt
from raylsm.store.segment import Segment

# Shared by the writer subprocess and the checks here: batch i's keys and values.
BATCH_SOURCE = textwrap.dedent("""
    import hashlib
    import numpy as np
    from raylsm.store import page_key

    NAMESPACE = page_key.namespace_id("crash-test")

    def batch(i):
        rng = np.random.default_rng(i)
        n = 1 + i % 6
        keys, values = [], []
        for j in range(n):
            h = hashlib.sha256(f"{i}/{j}".encode()).digest()
            keys.append(page_key.encode(NAMESPACE, h, 0, h))
            values.append(rng.integers(0, 256, size=int(rng.integers(1, 24 * 1024)), dtype=np.uint8))
        return keys, values
""")
_namespace: dict = {}
exec(BATCH_SOURCE, _namespace)
batch = _namespace["batch"]

WRITER_SOURCE = BATCH_SOURCE + textwrap.dedent("""
    import sys
    from raylsm.store import ShardStore, StoreConfig

    root, first, capacity, read_back = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    background, preallocate = sys.argv[5] == "1", sys.argv[6] == "1"
    store = ShardStore.open(root, StoreConfig(segment_bytes=1 << 20, capacity_bytes=capacity,
                                              block_cache_bytes=1 << 20, write_buffer_bytes=1 << 20,
                                              background_reclaim=background, preallocate_segments=preallocate))
    print("ready", flush=True)
    i = first
    while True:
        keys, values = batch(i)
        if all(store.put_batch(keys, values)):
            segments = {p.segment_id for p in store.locate_batch(keys)[2] if p is not None}
            print(i, *sorted(segments), flush=True)
        if read_back and i % 3 == 0 and i - 2 >= first:
            store.get_batch(batch(i - 2)[0])  # reads earn reinsertion at eviction
        i += 1
""")


def _run_and_kill(root: str, first: int, capacity: int, read_back: bool, delay_s: float,
                  background: bool = False, preallocate: bool = False) -> dict[int, set[int]]:
    """Run a writer, SIGKILL it `delay_s` after its first committed batch; {committed batch: its segments}."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER_SOURCE, root, str(first), str(capacity),
                               "1" if read_back else "0", "1" if background else "0", "1" if preallocate else "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        first_line = writer.stdout.readline()
        time.sleep(delay_s)
    finally:
        writer.send_signal(signal.SIGKILL)
        out, err = writer.communicate(timeout=30)
    out = first_line + out
    assert writer.returncode == -signal.SIGKILL, err
    committed = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 2:  # a line cut by the kill has no segment ids: not counted as committed
            committed[int(fields[0])] = {int(s) for s in fields[1:]}
    return committed


def _verify(store: ShardStore, committed: dict[int, set[int]], first: int, check_evicted: bool) -> int:
    """Check every batch from `first` to just past the last committed one; return pages verified."""
    live_segments = set(_segment_ids(store.root))
    batches = range(first, max(committed, default=first) + 3)
    every_key, every_value, owner = [], [], []
    for i in batches:
        keys, values = batch(i)
        every_key += keys
        every_value += values
        owner += [i] * len(keys)
    got = store.get_batch(every_key)
    missing = set()
    for i, value, expected in zip(owner, got, every_value):
        if value is None:
            missing.add(i)
        else:
            assert value.tobytes() == expected.tobytes(), f"batch {i}: wrong bytes"
    must_have = {i for i in committed if not check_evicted or committed[i] <= live_segments}
    assert not must_have & missing, f"committed batches lost: {sorted(must_have & missing)[:10]}"
    return sum(1 + i % 6 for i in must_have)


def _segment_ids(root):
    return [fmt.parse_segment_file_name(n) for n in os.listdir(os.path.join(root, fmt.SEGMENTS_DIR))
            if fmt.parse_segment_file_name(n) is not None]


def _check_segment_files_are_clean(root: str) -> None:
    for segment_id in _segment_ids(root):
        segment = Segment.open_sealed(os.path.join(root, fmt.SEGMENTS_DIR), segment_id)
        try:
            assert segment.file_bytes % fmt.BLOCK_BYTES == 0
            assert segment.written_end() == segment.file_bytes, f"segment {segment_id} has a tail"
        finally:
            segment.close()


def _config(capacity: int, background: bool = False, preallocate: bool = False) -> StoreConfig:
    return StoreConfig(segment_bytes=1 << 20, capacity_bytes=capacity, block_cache_bytes=1 << 20,
                       write_buffer_bytes=1 << 20, background_reclaim=background, preallocate_segments=preallocate)


# Segments are not preallocated by default; the no-eviction case preallocates, so that recovery's
# cut of a preallocated (zero) tail stays covered as well as that of a torn extending write.
@pytest.mark.parametrize("capacity, read_back, background, preallocate", [
    (1 << 30, False, False, True), (3 << 20, True, False, False), (4 << 20, True, True, False)],
    ids=["no_eviction_preallocated", "eviction_and_reinsertion", "background_reclaim"])
def test_kill_9_at_random_moments(tmp_path, capacity, read_back, background, preallocate, kit):
    root = str(tmp_path / "store")
    rng = random.Random(capacity)
    verified = 0
    for round_number in range(3):
        first = round_number * 1_000_000
        committed = _run_and_kill(root, first, capacity, read_back, delay_s=rng.uniform(0.01, 0.25),
                                  background=background, preallocate=preallocate)
        assert committed, "the writer committed nothing before the kill"
        newest, tail_bytes = _newest_segment_tail(root)
        store = ShardStore.open(root, _config(capacity, background, preallocate))
        try:
            assert not store.recovery.clean_shutdown
            # The kill usually leaves the active segment's preallocated (or torn) tail; recovery cuts
            # exactly that. (A kill inside a roll leaves a sealed newest segment: nothing to cut.)
            assert store.recovery.truncated_bytes == tail_bytes
            assert os.path.getsize(os.path.join(root, fmt.SEGMENTS_DIR, fmt.segment_file_name(newest))) \
                % fmt.BLOCK_BYTES == 0
            if capacity >= 1 << 30:
                assert min(_segment_ids(root)) == 0, "unexpected eviction"
            verified += _verify(store, committed, first, check_evicted=capacity < 1 << 30)
            # The store takes new writes after recovery.
            keys, values = batch(first + 999_999)
            assert store.put_batch(keys, values) == [True] * len(keys)
            assert [v.tobytes() for v in store.get_batch(keys)] == [v.tobytes() for v in values]
            assert sum(kit.segment_files(root).values()) <= capacity + (1 << 20)  # (a file freed meanwhile: skipped)
        finally:
            store.close()
        _check_segment_files_are_clean(root)
    assert verified > 0


def _newest_segment_tail(root: str) -> tuple[int, int]:
    """(newest segment id, bytes after its last intact record), read before recovery runs."""
    newest = max(_segment_ids(root))
    segment = Segment.open_sealed(os.path.join(root, fmt.SEGMENTS_DIR), newest)
    try:
        return newest, segment.file_bytes - segment.written_end()
    finally:
        segment.close()


# ---- torn tails made by hand ---------------------------------------------------------------------

def _store_with_batches(root: str, count: int) -> None:
    with ShardStore.open(root, _config(1 << 30)) as store:
        for i in range(count):
            keys, values = batch(i)
            assert store.put_batch(keys, values) == [True] * len(keys)


@pytest.mark.parametrize("tail", ["zeros", "garbage", "torn_record", "header_only"])
def test_torn_tail_is_truncated_and_committed_pages_survive(tmp_path, tail):
    root = str(tmp_path / "store")
    _store_with_batches(root, 20)
    path = os.path.join(root, fmt.SEGMENTS_DIR, fmt.segment_file_name(max(_segment_ids(root))))
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        first_record = f.read(fmt.plan_batch([len(v) for v in batch(0)[1]]).batch_bytes)
    appended = {
        "zeros": bytes(3 * fmt.BLOCK_BYTES),
        "garbage": np.random.default_rng(3).integers(0, 256, 10_000, dtype=np.uint8).tobytes(),
        "torn_record": first_record[: len(first_record) - 100],   # header intact, values cut short
        "header_only": first_record[: fmt.BLOCK_BYTES],
    }[tail]
    with open(path, "ab") as f:
        f.write(appended)
    with ShardStore.open(root, _config(1 << 30)) as store:
        assert store.recovery.truncated_bytes == len(appended)
        assert os.path.getsize(path) == size
        _verify(store, {i: {0} for i in range(20)}, 0, check_evicted=False)
        keys, values = batch(500)
        assert store.put_batch(keys, values) == [True] * len(keys)
    with ShardStore.open(root, _config(1 << 30)) as store:
        assert store.recovery.truncated_bytes == 0 and store.recovery.clean_shutdown
        _verify(store, {**{i: {0} for i in range(20)}, 500: set()}, 0, check_evicted=False)


def test_a_record_whose_header_landed_but_values_did_not_is_never_served(tmp_path):
    """A record goes out in one write, header first: a crash can leave its header intact and its
    values torn. Its pointers were never committed, so it is dead space: its keys stay misses, the
    pages committed before it are served, and eviction frees its segment without reading it."""
    root = str(tmp_path / "store")
    _store_with_batches(root, 20)
    torn_segment = max(_segment_ids(root))
    path = os.path.join(root, fmt.SEGMENTS_DIR, fmt.segment_file_name(torn_segment))
    keys, values = batch(900)
    layout = fmt.plan_batch([len(v) for v in values])
    header = fmt.encode_batch_header(layout, keys, [len(v) for v in values])
    torn_values = np.random.default_rng(9).integers(0, 256, layout.batch_bytes - layout.header_bytes, dtype=np.uint8)
    with open(path, "ab") as f:
        f.write(header.tobytes() + torn_values.tobytes())
    with ShardStore.open(root, _config(3 << 20)) as store:
        assert store.recovery.truncated_bytes == 0  # the walk cannot tell it from a good record
        assert store.get_batch(keys) == [None] * len(keys) and store.probe(keys) == 0
        _verify(store, {i: {0} for i in range(20)}, 0, check_evicted=False)
        for i in range(1000, 1400):  # enough to evict the segment holding the torn record
            more_keys, more_values = batch(i)
            assert store.put_batch(more_keys, more_values) == [True] * len(more_keys)
        assert torn_segment not in _segment_ids(root)
        assert store.get_batch(keys) == [None] * len(keys)
        _verify(store, {i: set() for i in range(1390, 1400)}, 1390, check_evicted=False)
