"""tests/unit runs without Ray, and the storage core imports no Ray, SGLang or torch."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_ray_init_fails_in_unit_tests():
    import ray
    with pytest.raises(RuntimeError, match="tests/unit"):
        ray.init()


def test_the_store_imports_no_ray_sglang_or_torch():
    code = ("import sys, raylsm.store, raylsm.store.shard_store, raylsm.store.local_reader; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'sglang', 'torch')); "
            "print(','.join(bad))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
