"""A clean close leaves a snapshot (live counts, resident digests) that the next open loads instead of
scanning every pointer; a damaged snapshot, or an open after a crash, scans; answers are the same
either way (raylsm.store.recovery)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np

from raylsm.store import ShardStore, StoreConfig
from raylsm.store import format as fmt
from raylsm.store import page_key

NAMESPACE = page_key.namespace_id("snapshot-test")
CONFIG = StoreConfig(segment_bytes=1 << 20, capacity_bytes=6 << 20, block_cache_bytes=1 << 20,
                     write_buffer_bytes=1 << 20, background_reclaim=False)


def keys_of(first: int, count: int) -> list[bytes]:
    return [page_key.encode(NAMESPACE, hashlib.sha256(b"%d" % (i // 16)).digest(), i % 16,
                            hashlib.sha256(b"page %d" % i).digest()) for i in range(first, first + count)]


def fill(store: ShardStore, first: int, count: int) -> list[bytes]:
    keys = keys_of(first, count)
    value = np.arange(20 * 1024, dtype=np.uint8)
    for start in range(0, count, 64):
        store.put_batch(keys[start:start + 64], [value] * len(keys[start:start + 64]))
    return keys


def answers(store: ShardStore, keys: list[bytes]) -> tuple[list[int], dict]:
    space = store.stats()["space"]
    return [store.probe([key]) for key in keys], {name: space[name] for name in ("live_bytes", "live_pages", "segments")}


def test_a_clean_reopen_loads_the_snapshot_and_answers_as_before(tmp_path):
    root = str(tmp_path / "store")
    with ShardStore.open(root, CONFIG) as store:
        keys = fill(store, 0, 600)  # 12 MB into 6 MB: segments were evicted
        store.delete_batch(keys[500:520])
        before = answers(store, keys)
    assert 0 < sum(before[0]) < len(keys)
    with ShardStore.open(root, CONFIG) as store:
        assert store.recovery.from_snapshot and store.recovery.clean_shutdown
        assert answers(store, keys) == before
        more = fill(store, 600, 50)  # and it takes writes
        assert all(store.probe([key]) for key in more)


def test_a_damaged_snapshot_is_not_trusted(tmp_path):
    root = str(tmp_path / "store")
    with ShardStore.open(root, CONFIG) as store:
        keys = fill(store, 0, 300)
        before = answers(store, keys)
    path = os.path.join(root, fmt.RESIDENT_SNAPSHOT_FILE)
    with open(path, "r+b") as snapshot:
        snapshot.seek(8)
        snapshot.write(b"\xff" * 8)
    with ShardStore.open(root, CONFIG) as store:
        assert not store.recovery.from_snapshot  # checksum mismatch: scanned
        assert answers(store, keys) == before


def test_an_open_after_a_crash_scans_even_if_an_older_clean_close_left_a_snapshot(tmp_path):
    root = str(tmp_path / "store")
    with ShardStore.open(root, CONFIG) as store:
        fill(store, 0, 100)
    writer = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_open_snapshot import CONFIG, fill
        from raylsm.store import ShardStore
        store = ShardStore.open({root!r}, CONFIG)
        fill(store, 100, 60)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", writer], timeout=120)
    assert result.returncode == -signal.SIGKILL
    with ShardStore.open(root, CONFIG) as store:
        assert not store.recovery.from_snapshot and not store.recovery.clean_shutdown
        assert all(store.probe([key]) for key in keys_of(100, 60))  # the crashed run's puts are there


def test_a_snapshot_from_an_older_resident_set_version_is_scanned(tmp_path, monkeypatch):
    # Version 1 sets kept reinserted pages resident after their eviction: their snapshots hold them.
    from raylsm.store import recovery

    root = str(tmp_path / "store")
    monkeypatch.setattr(recovery, "DIGESTS_VERSION", 1)
    with ShardStore.open(root, CONFIG) as store:
        keys = fill(store, 0, 300)
        before = answers(store, keys)
    monkeypatch.setattr(recovery, "DIGESTS_VERSION", 2)
    with ShardStore.open(root, CONFIG) as store:
        assert not store.recovery.from_snapshot and store.recovery.clean_shutdown
        assert answers(store, keys) == before
