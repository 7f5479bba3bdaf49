"""Reads, probes and writes from several threads while eviction frees segments: no exception, and a
hit always has exactly the bytes put (a read pins its segment, so eviction cannot swap the file under
it). Bounded by operation counts, not by time."""

from __future__ import annotations

import threading

import numpy as np

KiB = 1 << 10
MiB = 1 << 20


def test_reads_during_eviction_never_see_wrong_bytes(store_factory, kit):
    store = store_factory(capacity_bytes=2 * MiB)
    keys = [kit.key(("c", i)) for i in range(400)]
    sizes = [4 * KiB + (i * 997) % (40 * KiB) for i in range(400)]
    values = [kit.value(("c", i), sizes[i]) for i in range(400)]
    written = [0]  # keys[:written[0]] have been put
    errors: list[BaseException] = []
    hits = [0]

    def writer():
        try:
            for start in range(0, 400, 4):
                assert store.put_batch(keys[start:start + 4], values[start:start + 4]) == [True] * 4
                written[0] = start + 4
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    def reader(seed: int):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                upto = max(written[0], 1)
                picks = sorted(set(rng.integers(0, upto, 8).tolist()))
                batch = [keys[i] for i in picks]
                outs = [np.empty(sizes[i], np.uint8) for i in picks]
                for i, ok, out in zip(picks, store.get_batch_into(batch, outs), outs):
                    if ok:
                        assert out.tobytes() == values[i].tobytes(), f"wrong bytes for page {i}"
                        hits[0] += 1
                store.probe(batch)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    c = kit.counters(store)
    assert c["evicted_segments"] > 0 and hits[0] > 0
    assert c["gets_miss_corrupt"] == 0 and c["gets_miss_io"] == 0
