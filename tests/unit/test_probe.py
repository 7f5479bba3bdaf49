"""probe(keys): the number of consecutive present pages from the start, with locality (chains whose
extents hold several pages, chains branching inside one extent) and without (extent id = page hash)."""

from __future__ import annotations

import dataclasses
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raylsm.store import ShardStore, StoreConfig, page_key

# Probes are answered from an in-memory set of key digests (resident_index) or from RocksDB by
# seek-and-scan / multi-get; both paths must give the same answers.
PROBE_PATHS = ([{"resident_index": True}, {"resident_index": False}]
               if "resident_index" in {f.name for f in dataclasses.fields(StoreConfig)} else [{}])
PROBE_IDS = [("resident" if p.get("resident_index") else "rocksdb") if p else "default" for p in PROBE_PATHS]


@pytest.fixture(params=PROBE_PATHS, ids=PROBE_IDS)
def store(request, store_factory):
    return store_factory(**request.param)


def test_probe_without_locality(store, kit):
    keys = kit.keys(10)
    store.put_batch(keys[:4] + keys[5:], [b"v"] * 9)
    assert store.probe(keys) == 4
    assert store.probe(keys[:4]) == 4
    assert store.probe(keys[5:]) == 5
    assert store.probe(keys[4:]) == 0
    assert store.probe([keys[0], keys[0], keys[1]]) == 3


def test_probe_of_one_chain_across_extents(store, kit):
    chain = kit.chain("a", 18, extent_pages=4)
    assert len({page_key.extent_prefix(k) for k in chain}) == 5
    for present in (0, 1, 3, 4, 5, 8, 17, 18):
        store.clear()
        store.put_batch(chain[:present], [b"p"] * present)
        assert store.probe(chain) == present
    # A hole in the middle of an extent stops the count there, even if later pages are present.
    store.clear()
    store.put_batch(chain, [b"p"] * 18)
    store.delete_batch([chain[6]])
    assert store.probe(chain) == 6
    assert store.probe(chain[7:]) == 11


def test_probe_of_chains_branching_inside_one_extent(store, kit):
    a = kit.chain("a", 12, extent_pages=8)
    b = kit.chain("b", 12, extent_pages=8, shared_with=a, shared_pages=3)  # branch at depth 3 of extent 0
    assert page_key.extent_prefix(a[5]) == page_key.extent_prefix(b[5])
    assert a[3] != b[3] and page_key.decode(a[3]).depth == page_key.decode(b[3]).depth
    store.put_batch(a, [b"a"] * 12)
    assert store.probe(a) == 12
    assert store.probe(b) == 3  # shares pages 0-2; b's own page 3 is absent though a's page 3 is
    store.put_batch(b[3:6], [b"b"] * 3)
    assert store.probe(b) == 6
    assert store.probe(a) == 12
    store.put_batch(b[6:], [b"b"] * 6)
    assert store.probe(b) == 12
    store.delete_batch([a[4]])
    assert (store.probe(a), store.probe(b)) == (4, 12)
    # A third chain interleaving at every depth of the extent.
    c = kit.chain("c", 12, extent_pages=8, shared_with=a, shared_pages=1)
    store.put_batch(c[:2] + c[3:], [b"c"] * 11)
    assert store.probe(c) == 2


@pytest.mark.parametrize("path", PROBE_PATHS, ids=PROBE_IDS)
def test_probe_counts_only_pages_in_live_segments_and_counts_calls(store_factory, kit, path):
    store = store_factory(capacity_bytes=2 * 1024 * 1024, reinsertion_policy="none", **path)
    chain = kit.chain("old", 8, extent_pages=4)
    store.put_batch(chain, [kit.value(i, 100 * 1024) for i in range(8)])
    i = 0
    while kit.counters(store)["evicted_segments"] == 0:
        store.put_batch([kit.key(i)], [kit.value(i, 100 * 1024)])
        i += 1
    assert store.probe(chain) == 0
    c = kit.counters(store)
    assert c["probe_calls"] == 1 and c["probe_keys"] == 8 and c["probe_hits"] == 0


def test_probe_rejects_bad_keys(store, kit):
    with pytest.raises(ValueError, match=r"\bkey 1\b"):
        store.probe([kit.key(0), b"short"])


# ---- model-based: probe equals the leading run of present keys ---------------------------------

def _draw_chains_and_present_set(data, kit):
    extent_pages = data.draw(st.sampled_from([1, 2, 4, 8]), label="extent_pages")
    chains = [kit.chain("root", data.draw(st.integers(1, 14)), extent_pages)]
    for n in range(data.draw(st.integers(0, 3))):
        parent = data.draw(st.sampled_from(chains))
        shared = data.draw(st.integers(0, len(parent)))
        length = data.draw(st.integers(max(shared, 1), 14))
        chains.append(kit.chain(("branch", n), length, extent_pages, shared_with=parent, shared_pages=shared))
    every_key = sorted({key for chain in chains for key in chain})
    present = data.draw(st.sets(st.sampled_from(every_key)), label="present")
    return chains, present


@pytest.fixture(scope="module", params=PROBE_PATHS, ids=PROBE_IDS)
def shared_store(kit, request):
    with tempfile.TemporaryDirectory() as root:
        with ShardStore.open(root, kit.config(**request.param)) as store:
            yield store


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_probe_matches_a_model(kit, shared_store, data):
    store = shared_store
    store.clear()
    chains, present = _draw_chains_and_present_set(data, kit)
    keys = sorted(present)
    assert store.put_batch(keys, [b"x"] * len(keys)) == [True] * len(keys)
    for chain in chains:
        expected = 0
        while expected < len(chain) and chain[expected] in present:
            expected += 1
        assert store.probe(chain) == expected
