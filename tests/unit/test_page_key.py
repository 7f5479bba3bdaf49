"""Page keys: encode/decode roundtrip, index order (depth order inside an extent, extents contiguous),
validation of bad keys naming the index."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raylsm.store import page_key

namespaces = st.binary(min_size=8, max_size=8)
extent_hashes = st.binary(min_size=16, max_size=32)
page_hashes = st.binary(min_size=32, max_size=32)
depths = st.integers(min_value=0, max_value=page_key.MAX_DEPTH)


@given(namespaces, extent_hashes, depths, page_hashes)
def test_encode_decode_roundtrip(namespace, extent_hash, depth, page_hash):
    key = page_key.encode(namespace, extent_hash, depth, page_hash)
    assert type(key) is bytes and len(key) == page_key.KEY_BYTES
    assert page_key.is_page_key(key)
    decoded = page_key.decode(key)
    assert decoded == page_key.PageKey(namespace, extent_hash[:16], depth, page_hash)
    assert page_key.extent_prefix(key) == bytes([page_key.PAGE_KEY_TAG]) + namespace + extent_hash[:16]
    page_key.validate_keys([key])  # accepted


@given(namespaces, extent_hashes, st.lists(st.tuples(depths, page_hashes), min_size=2, max_size=20))
def test_keys_of_one_extent_sort_by_depth(namespace, extent_hash, pages):
    keys = [page_key.encode(namespace, extent_hash, depth, h) for depth, h in pages]
    ordered = sorted(keys)
    assert [page_key.decode(k).depth for k in ordered] == sorted(depth for depth, _ in pages)


@given(st.lists(st.tuples(namespaces, st.binary(min_size=16, max_size=16)), min_size=2, max_size=6, unique=True),
       st.data())
@settings(max_examples=60)
def test_extents_are_contiguous_in_key_order(extents, data):
    """No key of another extent sorts between two keys of one extent (a probe scan stays inside)."""
    keys = []
    for namespace, extent_id in extents:
        for depth, h in data.draw(st.lists(st.tuples(depths, page_hashes), min_size=1, max_size=8)):
            keys.append(page_key.encode(namespace, extent_id, depth, h))
    ordered = sorted(keys)
    seen_prefixes = []
    for key in ordered:
        prefix = page_key.extent_prefix(key)
        if not seen_prefixes or seen_prefixes[-1] != prefix:
            assert prefix not in seen_prefixes, "an extent's keys are split by another extent's key"
            seen_prefixes.append(prefix)
    assert len(seen_prefixes) == len(extents)


def test_page_keys_sort_after_meta_keys_and_inside_scan_bounds():
    from raylsm.store import format as fmt
    key_low = page_key.encode(b"\0" * 8, b"\0" * 16, 0, b"\0" * 32)
    key_high = page_key.encode(b"\xff" * 8, b"\xff" * 16, page_key.MAX_DEPTH, b"\xff" * 32)
    for meta in (fmt.META_FORMAT_VERSION, fmt.META_LOW_WATERMARK, fmt.META_CLEAN_SHUTDOWN):
        assert meta < page_key.FIRST_PAGE_KEY <= key_low
    assert key_high < page_key.END_OF_PAGE_KEYS


@pytest.mark.parametrize("args, field", [
    ((b"\0" * 7, b"\0" * 16, 0, b"\0" * 32), "namespace"),
    ((b"\0" * 8, b"\0" * 15, 0, b"\0" * 32), "extent"),
    ((b"\0" * 8, b"\0" * 16, 0, b"\0" * 31), "page hash"),
    ((b"\0" * 8, b"\0" * 16, -1, b"\0" * 32), "depth"),
    ((b"\0" * 8, b"\0" * 16, 2**32, b"\0" * 32), "depth"),
])
def test_encode_rejects_bad_parts(args, field):
    with pytest.raises(ValueError, match=field):
        page_key.encode(*args)


NON_KEYS = [b"", b"\x01" * 60, b"\x01" * 62, b"\x00" + b"\x01" * 60, bytearray(b"\x01" * 61), "\x01" * 61,
            None, 7]


@pytest.mark.parametrize("bad", NON_KEYS)
def test_validate_rejects_non_keys_naming_the_index(bad):
    good = page_key.encode(b"n" * 8, b"e" * 16, 1, b"h" * 32)
    assert not page_key.is_page_key(bad)
    with pytest.raises(ValueError, match=r"\bkey 2\b"):
        page_key.validate_keys([good, good, bad, good])


@pytest.mark.parametrize("bad", NON_KEYS[:6])
def test_decode_rejects_non_keys(bad):
    with pytest.raises(ValueError):
        page_key.decode(bad)


@pytest.mark.parametrize("bad", [None, 7])
def test_decode_rejects_non_sliceable_with_value_error(bad):
    with pytest.raises(ValueError):
        page_key.decode(bad)


def test_namespace_ids_are_stable_and_distinct():
    a = page_key.namespace_id("Llama-3.1-8B|page_first|bf16|tp0of2")
    assert a == page_key.namespace_id("Llama-3.1-8B|page_first|bf16|tp0of2")
    assert len(a) == page_key.NAMESPACE_ID_BYTES
    assert a != page_key.namespace_id("Llama-3.1-8B|page_first|bf16|tp1of2")


def test_page_hash_from_hex():
    h = bytes(range(32))
    assert page_key.page_hash_from_hex(h.hex()) == h
    with pytest.raises(ValueError):
        page_key.page_hash_from_hex(h.hex()[:-2])
    with pytest.raises(ValueError):
        page_key.page_hash_from_hex("zz" * 32)
