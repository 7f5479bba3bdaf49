"""Benchmarks clean up after themselves: an interrupted run (Ctrl-C, SIGTERM) removes its temporary
data, stops its threads before closing a store, and shuts down the Ray it started; the free-space
check writes nothing. SIGTERM is delivered for real to a subprocess whose benchmark system blocks
(printing "ready" first), so nothing here waits on a timer to decide an outcome."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import raylsm
from raylsm.bench import disk_budget, interrupts
from raylsm.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A store benchmark whose only system is a fake: `mode` "put" blocks in its first put, "get" blocks
# in every get (two reader threads) and reports on close how many gets were still running.
STORE_BENCH_WITH_A_BLOCKING_SYSTEM = textwrap.dedent('''
    import os, sys, threading, time
    from raylsm import cli
    from raylsm.bench import store_bench

    mode = sys.argv[1]

    class Blocking:
        name, ops, read_orders, note = "disk_ceiling", ("put", "get"), None, "a test system"

        def __init__(self):
            self.in_flight, self.lock, self.announced = 0, threading.Lock(), False

        def open(self, directory, plan):
            with open(os.path.join(directory, "data"), "wb") as out:
                out.write(b"x" * (1 << 20))

        def adapt_buffer(self, buffer):
            return buffer

        def announce(self):
            if not self.announced:
                self.announced = True
                print("ready", flush=True)

        def put_batch(self, batch, values):
            if mode == "put":
                self.announce()
                time.sleep(3600)
            return len(values)

        def finish_puts(self):
            pass

        def get_batch_into(self, batch, out):
            with self.lock:
                self.in_flight += 1
                self.announce()
            time.sleep(0.05)
            with self.lock:
                self.in_flight -= 1
            return len(out)

        def close(self):
            print(f"closed with {self.in_flight} gets running", flush=True)

    store_bench.make_system = lambda name: Blocking()
    store_bench.drop_page_cache = lambda: False
    sys.exit(cli.main(["bench", "store", "--pages-64k", "20000", "--pages-1m", "0", "--systems", "disk_ceiling",
                       "--threads", "2", "--no-progress"]))
''')


def run_until_ready_then_signal(tmp_path, mode: str, signum: int) -> tuple[int, str, str]:
    # The child starts with SIGINT's default action, as a command typed at a terminal does: one
    # started from a background job of a shell without job control (`make test &` in a script)
    # inherits SIGINT ignored, and Python then never turns it into a KeyboardInterrupt.
    process = subprocess.Popen([sys.executable, "-c", STORE_BENCH_WITH_A_BLOCKING_SYSTEM, mode], cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = process.stdout.readline()
        assert line.strip() == "ready", (line, process.stderr.read() if process.poll() is not None else "")
        bench_root = tmp_path / ".raylsm" / "bench"
        assert any(path.is_file() for path in bench_root.rglob("*")), "the benchmark wrote nothing"
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out, err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_store_bench_removes_its_data(tmp_path, signum):
    status, out, err = run_until_ready_then_signal(tmp_path, "put", signum)
    assert status == 128 + signum, err
    assert f"interrupted ({signal.Signals(signum).name})" in err and "Traceback" not in err, err
    assert list((tmp_path / ".raylsm" / "bench").iterdir()) == []  # the run's root and its system's data


def test_an_interrupted_read_pass_stops_its_threads_before_the_store_closes(tmp_path):
    status, out, err = run_until_ready_then_signal(tmp_path, "get", signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, err
    assert "closed with 0 gets running" in out, out
    assert list((tmp_path / ".raylsm" / "bench").iterdir()) == []


# ---- the trace replay and the tier benchmark, interrupted in process -----------------------------


def test_an_interrupted_trace_replay_removes_its_data_even_if_stopping_the_tier_fails(tmp_path, monkeypatch):
    pytest.importorskip("torch")  # the replay's host pool
    from raylsm.bench import trace_replay as tr

    def start(self):  # the tier got as far as writing its shards' data, then Ctrl-C
        os.makedirs(os.path.join(self.data_dir, "shards", "disk0"))
        with open(os.path.join(self.data_dir, "shards", "disk0", "segment"), "wb") as out:
            out.write(b"x" * 4096)
        self.owns_controller = True
        raise KeyboardInterrupt

    def stop(self):
        raise RuntimeError("the controller is gone")  # as when Ctrl-C also reached Ray's processes

    monkeypatch.setattr(tr.TierSession, "start", start)
    monkeypatch.setattr(tr.TierSession, "stop", stop)
    data = tmp_path / "replay"
    config = tr.ReplayConfig(data_dir=str(data), systems=("raylsm",), progress=False, page_tokens=256)
    plan = tr.make_plan([], page_tokens=256, host_cache_fraction=0.0)
    shape = tr.pool_shape(config.profile, config.page_tokens, config.payload_scale)
    with pytest.raises(KeyboardInterrupt):
        tr._run_measured(config, plan, shape, 64 << 20, ["raylsm"])
    assert not data.exists()  # made by the run: removed whole


def test_a_trace_replay_keeps_an_existing_dir_but_removes_its_own_data(tmp_path):
    from raylsm.bench import trace_replay as tr

    (tmp_path / "mine").write_text("keep me")
    for name in ("hicache_file", "shards"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "page").write_bytes(b"x")
    tr.remove_run_data(str(tmp_path), made_root=False, tier_started=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine"]


def test_an_interrupted_tier_bench_shuts_down_the_ray_it_started_and_removes_its_data(tmp_path, monkeypatch):
    pytest.importorskip("torch")  # the benchmark's host pool
    from raylsm.bench import tier_bench

    calls = []

    class InterruptedRay:
        @staticmethod
        def init(**kwargs):
            calls.append("init")
            raise KeyboardInterrupt  # Ctrl-C while the local Ray instance starts

        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def shutdown():
            calls.append("shutdown")

    class Lifecycle:  # the real one imports the controller, which needs the real Ray
        up = down = staticmethod(lambda *args, **kwargs: calls.append("lifecycle"))

    monkeypatch.setitem(sys.modules, "raylsm.lifecycle", Lifecycle)
    monkeypatch.setattr(raylsm, "lifecycle", Lifecycle, raising=False)
    monkeypatch.setattr(tier_bench, "ray", InterruptedRay)
    monkeypatch.setattr(tier_bench, "_drop_caches", lambda: "not dropped (test)")
    data = tmp_path / "bench"
    with pytest.raises(KeyboardInterrupt):
        tier_bench.run(tier_bench.TierBenchConfig(batches=1, data_dir=str(data)))
    assert calls == ["init", "shutdown"]
    assert list(data.iterdir()) == []  # the store pass's data and the run's directory are gone


# ---- the free-space check -----------------------------------------------------------------------


def test_the_free_space_check_refuses_more_than_the_disk_has_and_writes_nothing(tmp_path):
    target = tmp_path / "not" / "yet" / "made"
    free = disk_budget.free_bytes(str(target))
    with pytest.raises(ConfigError, match=r"would write ~.* GB under .*made, but only .* GB is free there.*lower X"):
        disk_budget.require_free_space(str(target), free + 1, "a test run", hint="lower X")
    assert not (tmp_path / "not").exists()
    assert disk_budget.require_free_space(str(target), 4096, "a test run", free=2 << 30) == 2 << 30
    with pytest.raises(ConfigError):  # the spare room counts: a disk is never filled to its last GiB
        disk_budget.require_free_space(str(target), 4096, "a test run", free=disk_budget.SPARE_BYTES)


def test_spare_room_and_usable_bytes_are_inverse():
    for free in (0, 1 << 20, 3 << 30, 80 * 10**9):
        usable = disk_budget.usable_bytes(free)
        assert disk_budget.with_spare(usable) <= free or usable == 0
        assert disk_budget.with_spare(usable + (1 << 20)) > free
    assert disk_budget.existing_ancestor("/proc/no/such/dir") == "/proc"


def test_the_trace_check_names_the_capacity_fraction_that_fits(tmp_path):
    from raylsm.bench import trace_replay as tr

    config = tr.ReplayConfig(capacity_fraction=1.0, data_dir=str(tmp_path / "d"))
    distinct_pages, page_bytes = 1_000_000, 48 << 10  # 49 GB of distinct pages, for two systems
    with pytest.raises(ConfigError, match=r"lower --capacity-fraction to 0\.\d+ or less") as refused:
        tr.check_disk_space(config, distinct_pages, page_bytes, distinct_pages * page_bytes, free=40 * 10**9)
    assert "raylsm" in str(refused.value) and "hicache_file" in str(refused.value)
    fraction = float(str(refused.value).split("--capacity-fraction to ")[1].split()[0])
    smaller = tr.ReplayConfig(capacity_fraction=fraction, data_dir=str(tmp_path / "d"))
    tr.check_disk_space(smaller, distinct_pages, page_bytes, int(fraction * distinct_pages * page_bytes),
                        free=40 * 10**9)  # the named fraction fits
    assert not (tmp_path / "d").exists()
    joined = tr.ReplayConfig(capacity_fraction=1.0, ray_address="ray://elsewhere:10001", systems=("raylsm",))
    assert tr.check_disk_space(joined, distinct_pages, page_bytes, distinct_pages * page_bytes, free=1) == 0


def test_the_store_bench_scales_down_to_what_fits_and_says_so(tmp_path):
    from raylsm.bench import store_bench

    notes, logged = [], []
    free = 3 << 30
    fitted = store_bench.fit_to_disk({64 << 10: 1_000_000, 1 << 20: 10}, str(tmp_path), logged.append, notes,
                                     free=free)
    assert fitted[1 << 20] == 10  # fits as asked
    assert store_bench.BATCH_PAGES <= fitted[64 << 10] < 1_000_000
    assert disk_budget.with_spare(store_bench.footprint_bytes(64 << 10, fitted[64 << 10])) <= free
    assert len(notes) == 1 and "scaled down" in notes[0] and logged
    with pytest.raises(ConfigError, match="not even one batch"):
        store_bench.fit_to_disk({1 << 20: 1000}, str(tmp_path), logged.append, notes, free=1 << 30)


def test_the_tier_check_names_a_batch_count_that_fits(tmp_path):
    from raylsm.bench.tier_bench import TierBenchConfig, check_disk_space, disk_need_bytes

    config = TierBenchConfig(batches=1000, data_dir=str(tmp_path / "bench"))
    with pytest.raises(ConfigError, match=r"--batches .*e\.g\. to (\d+)") as refused:
        check_disk_space(config, free=10 * 10**9)
    fitting = int(str(refused.value).split("e.g. to ")[1].split(",")[0])
    assert disk_budget.with_spare(disk_need_bytes(fitting)) <= 10 * 10**9
    assert not (tmp_path / "bench").exists()


# ---- the signal handlers ------------------------------------------------------------------------


def test_sigterm_raises_terminated_once_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(interrupts.Terminated) as caught:
        with interrupts.signals_interrupt():
            signal.raise_signal(signal.SIGTERM)
    assert isinstance(caught.value, KeyboardInterrupt) and caught.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before

    with interrupts.signals_interrupt():
        with pytest.raises(interrupts.Terminated):
            signal.raise_signal(signal.SIGHUP)
        signal.raise_signal(signal.SIGTERM)  # a repeat during the cleanup is ignored


def test_restore_handlers_takes_sigterm_back_from_a_library():
    replaced = []
    with pytest.raises(interrupts.Terminated):
        with interrupts.signals_interrupt():
            signal.signal(signal.SIGTERM, lambda signum, frame: replaced.append(signum))  # as ray.init does
            interrupts.restore_handlers()
            signal.raise_signal(signal.SIGTERM)
    assert replaced == []
