"""`raylsm bench memory` end to end on a small store: it reports both opens, the clean one from the
snapshot and the other from a scan, and every probed page is found after each."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_memory_measures_a_snapshot_open_and_a_scanning_open(tmp_path):
    out = tmp_path / "memory.json"
    result = subprocess.run([sys.executable, "-m", "raylsm.cli", "bench", "memory", "--pages", "3000",
                             "--dir", str(tmp_path / "data"), "--json", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["clean_open_used_snapshot"] is True and report["scan_open_used_snapshot"] is False
    assert report["probes_found"][0] == report["probes_found"][1] == report["probes_found"][2] > 0
    assert not (tmp_path / "data" / "store").exists()  # removed afterwards
