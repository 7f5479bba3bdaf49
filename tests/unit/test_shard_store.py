"""ShardStore basics: open/close, locking, format version, put/get of every buffer kind, skipping
present pages, duplicates in a batch, merged reads, locate, delete, clear, closed-store errors, stats."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from rocksdict import Options, Rdict

from raylsm.errors import FormatVersionError, RayLSMError, StoreClosedError, StoreLockedError
from raylsm.store import ShardStore
from raylsm.store import format as fmt
from raylsm.store import segment as segment_module


def _raw_index(root) -> Rdict:
    return Rdict(os.path.join(str(root), fmt.INDEX_DIR), Options(raw_mode=True))


# ---- lifecycle ----------------------------------------------------------------------------------

def test_open_creates_the_layout_and_records_the_format_version(tmp_path, kit):
    root = tmp_path / "s"
    ShardStore.open(str(root), kit.config()).close()
    assert (root / fmt.INDEX_DIR).is_dir() and (root / fmt.SEGMENTS_DIR).is_dir()
    db = _raw_index(root)
    try:
        assert fmt.decode_u32(db[fmt.META_FORMAT_VERSION]) == fmt.FORMAT_VERSION
        assert db.get(fmt.META_CLEAN_SHUTDOWN) is not None
    finally:
        db.close()


def test_second_open_in_process_is_locked_until_close(tmp_path, kit):
    root = str(tmp_path / "s")
    store = ShardStore.open(root, kit.config())
    with pytest.raises(StoreLockedError):
        ShardStore.open(root, kit.config())
    store.put_batch([kit.key(1)], [b"one"])
    store.close()
    store.close()  # idempotent
    with ShardStore.open(root, kit.config()) as again:
        assert kit.read_all(again, [kit.key(1)]) == [b"one"]
        assert again.recovery.clean_shutdown


def test_open_held_by_another_process_is_locked(tmp_path, kit):
    root = str(tmp_path / "s")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from raylsm.store import ShardStore, StoreConfig
        store = ShardStore.open({root!r}, StoreConfig(segment_bytes=1 << 20, capacity_bytes=8 << 20,
                                block_cache_bytes=1 << 20, write_buffer_bytes=1 << 20))
        print("ready", flush=True)
        sys.stdin.read()
        store.close()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError):
            ShardStore.open(root, kit.config())
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    ShardStore.open(root, kit.config()).close()


def test_incompatible_format_version_is_refused_and_releases_the_directory(tmp_path, kit):
    root = tmp_path / "s"
    with ShardStore.open(str(root), kit.config()) as store:
        assert store.put_batch([kit.key(1)], [b"kept"]) == [True]
    db = _raw_index(root)
    db[fmt.META_FORMAT_VERSION] = fmt.encode_u32(fmt.FORMAT_VERSION + 1)
    db.close()
    with pytest.raises(FormatVersionError, match=str(fmt.FORMAT_VERSION + 1)):
        ShardStore.open(str(root), kit.config())
    # The failed open released the lock: the directory can be repaired and opened.
    db = _raw_index(root)
    db[fmt.META_FORMAT_VERSION] = fmt.encode_u32(fmt.FORMAT_VERSION)
    db.close()
    with ShardStore.open(str(root), kit.config()) as store:
        assert kit.read_all(store, [kit.key(1)]) == [b"kept"]


def test_malformed_format_version_is_a_typed_error(tmp_path, kit):
    root = tmp_path / "s"
    ShardStore.open(str(root), kit.config()).close()
    db = _raw_index(root)
    db[fmt.META_FORMAT_VERSION] = b"\x01\x00"
    db.close()
    with pytest.raises(RayLSMError):
        ShardStore.open(str(root), kit.config())


def test_closed_store_refuses_every_operation(store, kit):
    store.put_batch([kit.key(1)], [b"x"])
    store.close()
    key = kit.key(1)
    for call in (lambda: store.put_batch([key], [b"x"]), lambda: store.get_batch_into([key], [bytearray(1)]),
                 lambda: store.get_batch([key]), lambda: store.probe([key]), lambda: store.delete_batch([key]),
                 lambda: store.clear(), lambda: store.locate_batch([key]),
                 lambda: store.apply_tuning({"merge_gap_bytes": 0})):
        with pytest.raises(StoreClosedError):
            call()


# ---- put and get ----------------------------------------------------------------------------------

def _value_kinds(kit):
    base = kit.value("kinds", 3 * 8192)
    return {
        "bytes": base[:5000].tobytes(),
        "bytearray": bytearray(base[:4096].tobytes()),
        "numpy_uint8": base[:12288].copy(),
        "numpy_2d_float16": base[:8192].copy().view(np.float16).reshape(64, 64),
        "memoryview_slice": memoryview(base.tobytes())[3:3 + 7000],  # unaligned address
        "empty": b"",
        "one_byte": b"\x7f",
    }


@pytest.mark.parametrize("direct_io", [True, False])
def test_put_and_get_every_buffer_kind(store_factory, kit, direct_io):
    store = store_factory(direct_io=direct_io)
    kinds = _value_kinds(kit)
    keys = [kit.key(name) for name in kinds]
    assert store.put_batch(keys, list(kinds.values())) == [True] * len(kinds)
    expected = [bytes(memoryview(v).cast("B")) for v in kinds.values()]
    assert kit.read_all(store, keys) == expected
    # get_batch_into with output buffers of several kinds.
    outs = []
    for value in expected:
        n = len(value)
        outs.append(np.full(n, 0xEE, np.uint8) if n % 2 else np.full(n // 2, -1, np.int16))
    outs[0] = bytearray(len(expected[0]))
    assert store.get_batch_into(keys, outs) == [True] * len(keys)
    assert [bytes(memoryview(o).cast("B")) for o in outs] == expected
    c = kit.counters(store)
    assert c["puts_pages"] == len(kinds) and c["puts_bytes"] == sum(len(v) for v in expected)
    assert c["gets_hit"] == 2 * len(kinds) and c["gets_hit_bytes"] == 2 * sum(len(v) for v in expected)


def test_get_batch_returns_writable_arrays_and_none_for_misses(store, kit):
    store.put_batch([kit.key(1)], [b"abc"])
    got = store.get_batch([kit.key(1), kit.key(2), kit.key(1)])
    assert got[1] is None
    for value in (got[0], got[2]):
        assert isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.flags.writeable
        assert value.tobytes() == b"abc"
    assert got[0] is not got[2]
    assert store.get_batch([]) == [] and store.get_batch_into([], []) == []
    assert store.put_batch([], []) == [] and store.probe([]) == 0 and store.delete_batch([]) == 0
    c = kit.counters(store)
    assert c["gets_hit"] == 2 and c["gets_miss_absent"] == 1


def test_present_pages_are_skipped_and_keep_their_bytes(store, kit):
    key = kit.key(1)
    assert store.put_batch([key], [b"first"]) == [True]
    space = store.stats()["space"]
    assert store.put_batch([key, kit.key(2)], [b"second", b"other"]) == [True, True]
    assert kit.read_all(store, [key]) == [b"first"]
    c = kit.counters(store)
    assert c["puts_existing"] == 1 and c["puts_pages"] == 2
    assert store.stats()["space"]["live_bytes"] == space["live_bytes"] + len(b"other")


def test_duplicates_inside_one_batch_store_the_page_once(store, kit):
    a, b = kit.key("a"), kit.key("b")
    assert store.put_batch([a, b, a, a], [b"a-first", b"b", b"a-second", b"a-third"]) == [True] * 4
    assert kit.read_all(store, [a, b]) == [b"a-first", b"b"]
    c = kit.counters(store)
    assert c["puts_pages"] == 2 and c["puts_bytes"] == len(b"a-first") + 1
    assert store.stats()["space"]["live_bytes"] == len(b"a-first") + 1


def test_a_value_of_exactly_the_limit_fits(store_factory, kit):
    store = store_factory()
    limit = store.config.segment_bytes - fmt.header_bytes_for(1)
    big = kit.value("big", limit)
    assert store.put_batch([kit.key(1), kit.key(2)], [b"small", big]) == [True, True]
    assert kit.read_all(store, [kit.key(2), kit.key(1)]) == [big.tobytes(), b"small"]


def test_many_pages_round_trip_in_any_order_across_segments(store, kit):
    keys = kit.keys(300)
    values = [kit.value(i, 1000 + 37 * i) for i in range(300)]
    for start in range(0, 300, 50):
        assert store.put_batch(keys[start:start + 50], values[start:start + 50]) == [True] * 50
    assert store.stats()["space"]["segments"] >= 3
    order = np.random.default_rng(5).permutation(300)
    got = kit.read_all(store, [keys[i] for i in order])
    assert got == [values[i].tobytes() for i in order]


def _count_preadv_calls(monkeypatch):
    calls = []
    real = segment_module.full_preadv

    def counting(fd, views, offset):
        calls.append(len(views))
        return real(fd, views, offset)

    monkeypatch.setattr(segment_module, "full_preadv", counting)
    return calls


def test_reads_of_neighbouring_pages_are_merged(store, kit, monkeypatch):
    keys = kit.keys(10)
    values = [kit.value(i, 5000) for i in range(10)]  # 5000 bytes: 3192 bytes of padding between pages
    store.put_batch(keys[:5], values[:5])
    store.put_batch(keys[5:], values[5:])  # a second record: its header sits between the two runs
    calls = _count_preadv_calls(monkeypatch)
    outs = [np.zeros(5000, np.uint8) for _ in keys]
    assert store.get_batch_into(keys[::-1], outs[::-1]) == [True] * 10
    assert len(calls) == 1  # one vectored read for all ten pages (gaps <= 64 KiB)
    assert [o.tobytes() for o in outs] == [v.tobytes() for v in values]
    # merge_gap_bytes is live: with no gap allowed every page is its own read.
    store.apply_tuning({"merge_gap_bytes": 0})
    calls.clear()
    assert store.get_batch_into(keys, [np.zeros(5000, np.uint8) for _ in keys]) == [True] * 10
    assert len(calls) == 10


def test_locate_batch_points_at_verifiable_bytes(store, kit):
    keys = kit.keys(3)
    values = [kit.value(i, 3000 * (i + 1)) for i in range(3)]
    store.put_batch(keys, values)
    segments_dir, low_watermark, pointers = store.locate_batch(keys + [kit.key(99)])
    assert pointers[3] is None and low_watermark == 0
    assert segments_dir == os.path.join(store.root, fmt.SEGMENTS_DIR)
    for pointer, value in zip(pointers[:3], values):
        with open(os.path.join(segments_dir, fmt.segment_file_name(pointer.segment_id)), "rb") as f:
            f.seek(pointer.offset)
            data = f.read(pointer.length)
        assert data == value.tobytes() and fmt.checksum(data) == pointer.checksum


def test_pages_given_as_parts(store, kit):
    """A page may be a list of buffers (e.g. K and V halves), on put and on get."""
    keys = kit.keys(3)
    k_half, v_half = kit.value("k", 3000), kit.value("v", 5000)
    whole = k_half.tobytes() + v_half.tobytes()
    assert store.put_batch(keys, [[k_half, v_half], (memoryview(b"ab"), b"", bytearray(b"cd")), whole]) == [True] * 3
    assert kit.read_all(store, keys) == [whole, b"abcd", whole]
    out_k, out_v = np.zeros(5000, np.uint8), np.zeros(3000, np.uint8)
    out_whole = bytearray(8000)
    assert store.get_batch_into([keys[0], keys[2]], [out_whole, [out_k, out_v]]) == [True, True]
    assert bytes(out_whole) == whole and out_k.tobytes() + out_v.tobytes() == whole
    # Parts that do not add up to the page's size are a bad buffer: untouched, counted.
    short = [np.full(3000, 7, np.uint8), np.full(4999, 7, np.uint8)]
    assert store.get_batch_into([keys[0]], [short]) == [False]
    assert all((part == 7).all() for part in short)
    assert kit.counters(store)["gets_miss_bad_buffer"] == 1
    # A page of no parts is a bad value: that page only is refused.
    assert store.put_batch(kit.keys(2, start=10), [b"ok", []]) == [True, False]
    assert store.probe(kit.keys(2, start=10)) == 1 and kit.counters(store)["puts_bad_value"] == 1


# ---- delete and clear ------------------------------------------------------------------------------

def test_delete_batch(store, kit):
    keys = kit.keys(4)
    store.put_batch(keys, [b"a" * 100, b"b" * 200, b"c" * 300, b"d" * 400])
    live = store.stats()["space"]["live_bytes"]
    assert store.delete_batch([keys[1], kit.key(77), keys[3]]) == 2
    assert kit.read_all(store, keys) == [b"a" * 100, None, b"c" * 300, None]
    assert store.probe(keys) == 1
    space = store.stats()["space"]
    assert space["live_bytes"] == live - 600
    assert kit.counters(store)["deleted_pages"] == 2
    assert store.delete_batch([keys[1]]) == 0
    # A deleted page can be put again, with new bytes.
    assert store.put_batch([keys[1]], [b"new"]) == [True]
    assert kit.read_all(store, [keys[1]]) == [b"new"]


def test_delete_batch_with_a_repeated_key_counts_it_once(store, kit):
    keys = kit.keys(2)
    store.put_batch(keys, [b"a" * 100, b"b" * 100])
    assert store.delete_batch([keys[0], keys[0]]) == 1
    space = store.stats()["space"]
    assert (space["live_bytes"], space["live_pages"]) == (100, 1)


def test_deletes_survive_reopen(store_factory, kit, tmp_path):
    store = store_factory()
    keys = kit.keys(3)
    store.put_batch(keys, [b"1", b"2", b"3"])
    store.delete_batch([keys[0]])
    store.close()
    store = store_factory()
    assert kit.read_all(store, keys) == [None, b"2", b"3"]


def test_clear_removes_every_page_and_file(store_factory, kit, tmp_path):
    store = store_factory()
    keys = kit.keys(40)
    store.put_batch(keys, [kit.value(i, 60000) for i in range(40)])
    assert len(kit.segment_files(store.root)) >= 2
    store.clear()
    assert kit.segment_files(store.root) == {}
    assert store.get_batch(keys) == [None] * 40 and store.probe(keys) == 0
    space = store.stats()["space"]
    assert space == {**space, "live_bytes": 0, "segment_bytes": 0, "segments": 0}
    assert space["disk_bytes"] == space["index_bytes"] > 0  # only the index is left
    assert store.put_batch(keys[:2], [b"x", b"y"]) == [True, True]
    store.close()
    store = store_factory()
    assert kit.read_all(store, keys[:3]) == [b"x", b"y", None]
    assert store.put_batch([keys[5]], [b"z"]) == [True]
    assert kit.read_all(store, [keys[5]]) == [b"z"]


# ---- stats ----------------------------------------------------------------------------------------

def test_stats_counts_and_space(store, kit):
    keys = kit.keys(5)
    values = [kit.value(i, 10000) for i in range(5)]
    store.put_batch(keys[:4], values[:4])
    store.get_batch(keys)  # 4 hits, 1 absent
    store.probe(keys)
    store.delete_batch(keys[:1])
    stats = store.stats()
    c = stats["counters"]
    assert (c["puts_pages"], c["puts_bytes"]) == (4, 40000)
    assert (c["gets_hit"], c["gets_hit_bytes"], c["gets_miss_absent"]) == (4, 40000, 1)
    assert (c["probe_calls"], c["probe_keys"], c["probe_hits"]) == (1, 5, 4)
    assert c["deleted_pages"] == 1
    space = stats["space"]
    assert space["live_bytes"] == 30000
    written = fmt.plan_batch([10000] * 4).batch_bytes
    assert space["dead_bytes"] == written - 30000
    assert space["segment_bytes"] == store.config.segment_bytes  # the active segment counts whole
    assert space["disk_bytes"] == space["segment_bytes"] + space["index_bytes"] and space["index_bytes"] > 0
    assert space["capacity_bytes"] == store.config.capacity_bytes and space["segments"] == 1
    assert sum(stats["latency"]["put"]["counts"]) == 1
    assert sum(stats["latency"]["get"]["counts"]) == 1
    assert sum(stats["latency"]["probe"]["counts"]) == 1


def test_live_bytes_are_recomputed_on_reopen(store_factory, kit):
    store = store_factory()
    keys = kit.keys(6)
    store.put_batch(keys, [kit.value(i, 7000 + i) for i in range(6)])
    store.delete_batch(keys[:2])
    live = store.stats()["space"]["live_bytes"]
    store.close()
    store = store_factory()
    assert store.stats()["space"]["live_bytes"] == live == sum(7000 + i for i in range(2, 6))


@pytest.mark.parametrize("durability", ["process", "machine"])
def test_durability_modes_round_trip(store_factory, kit, durability):
    store = store_factory(durability=durability)
    keys = kit.keys(3)
    assert store.put_batch(keys, [b"a", b"b" * 5000, b"c"]) == [True] * 3
    store.apply_tuning({"durability": "machine" if durability == "process" else "process"})
    assert store.put_batch([kit.key(9)], [b"d"]) == [True]
    store.close()
    store = store_factory()
    assert kit.read_all(store, keys + [kit.key(9)]) == [b"a", b"b" * 5000, b"c", b"d"]


def test_delete_namespace_removes_only_that_namespace(store_factory, kit):
    from raylsm.store import page_key
    store = store_factory()
    ns_a, ns_b = page_key.namespace_id("model-a"), page_key.namespace_id("model-b")
    keys_a = [kit.key(i, namespace=ns_a) for i in range(5)]
    keys_b = [kit.key(i, namespace=ns_b) for i in range(3)]
    store.put_batch(keys_a + keys_b, [b"a" * 1000] * 5 + [b"b" * 10] * 3)
    assert store.stats()["space"]["live_pages"] == 8
    assert store.delete_namespace(ns_a) == 5
    assert store.get_batch(keys_a) == [None] * 5
    assert kit.read_all(store, keys_b) == [b"b" * 10] * 3
    space = store.stats()["space"]
    assert (space["live_pages"], space["live_bytes"]) == (3, 30)
    assert store.delete_namespace(ns_a) == 0
    with pytest.raises(ValueError, match="namespace"):
        store.delete_namespace(b"short")
    store.close()
    store = store_factory()
    assert store.get_batch(keys_a) == [None] * 5 and store.probe(keys_b) == 3
    assert store.stats()["space"]["live_pages"] == 3


def test_live_pages_follow_puts_deletes_evictions_and_reopen(store_factory, kit):
    store = store_factory(capacity_bytes=2 * 1024 * 1024, reinsertion_policy="none")
    keys = kit.keys(15)
    store.put_batch(keys, [kit.value(i, 64 * 1024) for i in range(15)])  # fills segment 0
    store.delete_batch(keys[:2])
    assert store.stats()["space"]["live_pages"] == 13
    i = 0
    while kit.counters(store)["evicted_segments"] == 0:
        store.put_batch([kit.key(("fill", i))], [kit.value(("fill", i), 64 * 1024)])
        i += 1
    space = store.stats()["space"]
    assert space["live_pages"] == i and space["live_bytes"] == i * 64 * 1024
    store.close()
    store = store_factory()
    assert store.stats()["space"]["live_pages"] == i


def test_a_batch_of_more_buffers_than_one_vectored_io_takes_is_stored_and_read_back(store_factory, kit):
    """600 pages given as K/V halves are 1,200 buffers in one record, beyond IOV_MAX (1024) for one
    pwritev/preadv: written and read in several calls, byte for byte."""
    store = store_factory(capacity_bytes=32 << 20, segment_bytes=8 << 20)
    keys = [kit.key(("halves", i)) for i in range(600)]
    values = [kit.value(("halves", i), 8192) for i in range(600)]
    assert store.put_batch(keys, [[value[:4096], value[4096:]] for value in values]) == [True] * 600
    out = [[np.zeros(4096, np.uint8), np.zeros(4096, np.uint8)] for _ in range(600)]
    assert store.get_batch_into(keys, out) == [True] * 600
    assert all(np.array_equal(np.concatenate(parts), value) for parts, value in zip(out, values))
