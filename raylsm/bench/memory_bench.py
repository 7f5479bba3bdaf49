"""`raylsm bench memory`: a shard store's resident memory per stored page and its open time per
million pages, with millions of small pages (issue 13; the budget is in docs/memory.md).

Owned here: the three measured phases, each in its own fresh process so that RSS is the store's and
not an earlier phase's heap:
1. fill: open an empty store, put N pages of `page_bytes` (1,024 per batch), close (cleanly);
2. open: reopen (a clean close's snapshot is loaded), probe a sample of the keys; RSS over the same
   process before the open, and over an empty store's open;
3. scan: reopen after voiding the snapshot, as after a crash (every pointer scanned).
Called by the CLI. Writes only under its data directory, removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from raylsm.store import format as fmt

BATCH = 1024
PROBES = 2000


@dataclass(frozen=True)
class MemoryBenchConfig:
    pages: int = 2_000_000
    page_bytes: int = 512
    data_dir: str = ""
    json_path: str | None = None


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    return 0


def _key(index: int) -> bytes:
    import hashlib

    from raylsm.store import page_key

    namespace = page_key.namespace_id("bench-memory")
    anchor = hashlib.blake2b(b"extent %d" % (index // 128), digest_size=32).digest()
    return page_key.encode(namespace, anchor, index % 128, hashlib.blake2b(b"page %d" % index, digest_size=32).digest())


def _store_config(pages: int, page_bytes: int):
    """Room for every page (nothing is evicted), in 256 MiB segments."""
    from raylsm.store.config import StoreConfig

    segment = 256 << 20
    need = pages * (fmt.align_up(page_bytes) + fmt.ENTRY_BYTES) * 2 + 4 * segment
    return StoreConfig(capacity_bytes=need // 4096 * 4096, segment_bytes=segment)


def _child(phase: str, root: str, pages: int, page_bytes: int) -> dict:
    """One phase, in this process; returns its figures."""
    import numpy as np

    from raylsm.store import ShardStore

    before = _rss()
    if phase == "fill":
        started = time.perf_counter()
        store = ShardStore.open(root, _store_config(pages, page_bytes))
        value = np.random.default_rng(0).integers(0, 256, page_bytes, dtype=np.uint8)
        for start in range(0, pages, BATCH):
            keys = [_key(index) for index in range(start, min(pages, start + BATCH))]
            store.put_batch(keys, [value] * len(keys))
        put_s = time.perf_counter() - started
        rss = _rss()
        store.close()
        return {"put_pages_per_s": pages / put_s, "rss_after_puts_bytes": rss - before}
    started = time.perf_counter()
    store = ShardStore.open(root, _store_config(pages, page_bytes))
    open_s = time.perf_counter() - started
    step = max(1, pages // PROBES)
    found = sum(store.probe([_key(index)]) for index in range(0, pages, step)) if pages else 0
    figures = {"open_s": open_s, "from_snapshot": store.recovery.from_snapshot, "rss_bytes": _rss() - before,
               "live_pages": store.stats()["space"]["live_pages"], "probed": len(range(0, pages, step)),
               "found": found}
    store.close()
    return figures


def _spawn(phase: str, root: str, pages: int, page_bytes: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "raylsm.bench.memory_bench", phase, root, str(pages), str(page_bytes)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(config: MemoryBenchConfig) -> dict:
    root = os.path.join(config.data_dir or os.path.join(".raylsm", "bench", f"memory-{os.getpid()}"), "store")
    empty = root + "-empty"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(empty, ignore_errors=True)
    try:
        print(f"raylsm bench memory: {config.pages} pages of {config.page_bytes} B", file=sys.stderr)
        fill = _spawn("fill", root, config.pages, config.page_bytes)
        baseline = _spawn("open", empty, 0, config.page_bytes)
        clean = _spawn("open", root, config.pages, config.page_bytes)
        os.remove(os.path.join(root, fmt.RESIDENT_SNAPSHOT_FILE))  # voids the snapshot: the next open scans
        scanned = _spawn("open", root, config.pages, config.page_bytes)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(empty, ignore_errors=True)
    per_million = 1e6 / max(1, config.pages)
    report = {
        "pages": config.pages, "page_bytes": config.page_bytes,
        "put_pages_per_s": round(fill["put_pages_per_s"]),
        "rss_per_page_after_clean_open": round((clean["rss_bytes"] - baseline["rss_bytes"]) / max(1, config.pages), 1),
        "rss_per_page_after_scan_open": round((scanned["rss_bytes"] - baseline["rss_bytes"]) / max(1, config.pages), 1),
        "rss_per_page_while_filling": round(fill["rss_after_puts_bytes"] / max(1, config.pages), 1),
        "empty_store_rss_bytes": baseline["rss_bytes"],
        "clean_open_s_per_million": round(clean["open_s"] * per_million, 3),
        "scan_open_s_per_million": round(scanned["open_s"] * per_million, 3),
        "clean_open_used_snapshot": clean["from_snapshot"], "scan_open_used_snapshot": scanned["from_snapshot"],
        "probes_found": [clean["found"], scanned["found"], clean["probed"]],
    }
    print(f"put {report['put_pages_per_s']} pages/s; resident memory per page: {report['rss_per_page_after_clean_open']} B "
          f"after a clean open, {report['rss_per_page_after_scan_open']} B after a scanning open "
          f"({report['rss_per_page_while_filling']} B while filling, with RocksDB's fixed write buffers); "
          f"open: {report['clean_open_s_per_million']} s per million pages (clean close's snapshot), "
          f"{report['scan_open_s_per_million']} s (scan, as after a crash); probes found "
          f"{clean['found']}/{clean['probed']} and {scanned['found']}/{scanned['probed']}")
    if config.json_path:
        with open(config.json_path, "w") as out:
            json.dump(report, out, indent=2)
    return report


if __name__ == "__main__":
    phase, root, pages, page_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(_child(phase, root, pages, page_bytes)))
