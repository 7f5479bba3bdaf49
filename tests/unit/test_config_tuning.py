"""StoreConfig.validate and ShardStore.apply_tuning: out-of-range, unknown, mistyped and reopen-only
fields raise ConfigError naming the field and change nothing; live fields change behaviour at once."""

from __future__ import annotations

import dataclasses

import pytest

from raylsm.errors import ConfigError
from raylsm.store import ShardStore, StoreConfig
from raylsm.store.config import LIVE, NEXT_SEGMENT, REOPEN, applies

MiB = 1 << 20
GiB = 1 << 30


def test_the_defaults_are_valid():
    assert StoreConfig().validate() == StoreConfig()


@pytest.mark.parametrize("field, value", [
    ("segment_bytes", 256 * 1024 - 4096),
    ("segment_bytes", 1 * MiB + 1),
    ("segment_bytes", 32 * GiB),
    ("capacity_bytes", 2 * 256 * MiB - 1),
    ("durability", "disk"),
    ("admission_policy", "lru"),
    ("admission_ghost_entries", 0),
    ("admission_ghost_entries", 2**26 + 1),
    ("reinsertion_policy", "always"),
    ("reinsertion_budget_fraction", -0.1),
    ("reinsertion_budget_fraction", 1.01),
    ("reinsertion_read_credits", 0),
    ("reinsertion_read_credits", 256),
    ("reinsertion_read_credits", 2.0),
    ("merge_gap_bytes", -1),
    ("merge_gap_bytes", 16 * MiB + 1),
    ("block_cache_bytes", MiB - 1),
    ("write_buffer_bytes", 4 * GiB + 1),
])
def test_validate_names_the_field_out_of_range(field, value):
    config = dataclasses.replace(StoreConfig(), **{field: value})
    with pytest.raises(ConfigError, match=repr(field)):
        config.validate()


def test_open_validates_and_creates_nothing_for_a_bad_config(tmp_path):
    with pytest.raises(ConfigError, match="capacity_bytes"):
        ShardStore.open(str(tmp_path / "s"), StoreConfig(segment_bytes=MiB, capacity_bytes=MiB))
    assert not (tmp_path / "s").exists()


def test_every_field_says_how_it_applies():
    for f in dataclasses.fields(StoreConfig):
        assert applies(f.name) in (LIVE, NEXT_SEGMENT, REOPEN)
    assert applies("block_cache_bytes") == REOPEN
    with pytest.raises(ConfigError, match="no_such_field"):
        applies("no_such_field")


@pytest.mark.parametrize("changes, field", [
    ({"no_such_field": 1}, "no_such_field"),
    ({"block_cache_bytes": 2 * MiB}, "block_cache_bytes"),        # reopen-only
    ({"merge_gap_bytes": "64k"}, "merge_gap_bytes"),                # wrong type
    ({"merge_gap_bytes": True}, "merge_gap_bytes"),                 # bool is not an int here
    ({"direct_io": 1}, "direct_io"),
    ({"reinsertion_budget_fraction": 1.5}, "reinsertion_budget_fraction"),  # out of range
    ({"admission_policy": "nope"}, "admission_policy"),
    ({"capacity_bytes": MiB}, "capacity_bytes"),
    ({"merge_gap_bytes": 0, "segment_bytes": 12345}, "segment_bytes"),  # one bad field spoils the batch
])
def test_apply_tuning_refuses_naming_the_field_and_changes_nothing(store, kit, changes, field):
    before = store.config
    with pytest.raises(ConfigError, match=field):
        store.apply_tuning(changes)
    assert store.config == before
    assert store.put_batch([kit.key(1)], [b"still works"]) == [True]


def test_apply_tuning_accepts_an_int_for_a_float_field(store):
    assert store.apply_tuning({"reinsertion_budget_fraction": 0}).reinsertion_budget_fraction == 0


def test_apply_tuning_returns_and_keeps_the_new_config(store):
    new = store.apply_tuning({"merge_gap_bytes": 0, "direct_io": False, "write_buffer_bytes": 2 * MiB})
    assert store.config == new
    assert (new.merge_gap_bytes, new.direct_io, new.write_buffer_bytes) == (0, False, 2 * MiB)


def test_live_admission_policy_change_takes_effect_on_the_next_put(store, kit):
    assert store.put_batch([kit.key(1)], [b"a"]) == [True]
    store.apply_tuning({"admission_policy": "second_touch"})
    assert store.put_batch([kit.key(2)], [b"b"]) == [False]  # first offer refused
    assert store.put_batch([kit.key(2)], [b"b"]) == [True]   # second offer stored
    assert kit.counters(store)["puts_rejected"] == 1
    store.apply_tuning({"admission_policy": "admit_all"})
    assert store.put_batch([kit.key(3)], [b"c"]) == [True]
    assert kit.read_all(store, [kit.key(1), kit.key(2), kit.key(3)]) == [b"a", b"b", b"c"]


def test_live_reinsertion_policy_change_takes_effect_at_the_next_eviction(store_factory, kit):
    store = store_factory(capacity_bytes=2 * MiB)
    first = kit.keys(14)
    store.put_batch(first, [kit.value(i, 64 * 1024) for i in range(14)])  # fills segment 0
    assert store.get_batch(first[:1])[0] is not None  # read since written
    store.apply_tuning({"reinsertion_policy": "none"})
    i = 100
    while kit.counters(store)["evicted_segments"] == 0:
        store.put_batch([kit.key(i)], [kit.value(i, 64 * 1024)])
        i += 1
    assert kit.counters(store)["reinserted_pages"] == 0
    assert store.get_batch(first[:1]) == [None]


def test_segment_bytes_change_applies_to_the_next_segment(store_factory, kit):
    store = store_factory(preallocate_segments=True)  # a segment's file size is then its capacity
    store.put_batch([kit.key(0)], [b"x"])
    store.apply_tuning({"segment_bytes": 2 * MiB})
    assert kit.segment_files(store.root) == {0: MiB}  # the active segment keeps its size
    big = kit.value("big", int(1.5 * MiB))  # only fits a 2 MiB segment
    assert store.put_batch([kit.key(1)], [big]) == [True]
    assert kit.segment_files(store.root)[1] == 2 * MiB
    assert kit.read_all(store, [kit.key(0), kit.key(1)]) == [b"x", big.tobytes()]


def test_reopen_field_applies_when_reopened(store_factory, kit, tmp_path):
    store = store_factory()
    store.put_batch([kit.key(1)], [b"a"])
    store.close()
    store = store_factory(block_cache_bytes=2 * MiB)
    assert store.config.block_cache_bytes == 2 * MiB
    assert kit.read_all(store, [kit.key(1)]) == [b"a"]
