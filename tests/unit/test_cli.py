"""The `raylsm` command refuses what cannot work: every bad flag value or config file is one line
`raylsm <command>: error: ...` on stderr naming the flag and what it allows, exit status 2, no
traceback; a benchmark that would not fit on the disk is refused before it creates anything.
No path here starts Ray (the unit conftest would fail it)."""

from __future__ import annotations

import collections
import json
import shutil

import pytest

from raylsm import cli, cli_args

Usage = collections.namedtuple("Usage", "total used free")


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        status = cli.main(list(argv))
    except SystemExit as exit_:  # argparse's own refusals
        status = exit_.code
    return status, capsys.readouterr().err


def assert_one_line_error(status: int, err: str, prog: str, *expected: str) -> None:
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    for text in expected:
        assert text in lines[0], (text, err)


@pytest.fixture
def files(tmp_path):
    """A regular file, a directory, and config files: not JSON, not an object, an unknown key, a value
    out of range."""
    made = {"file": tmp_path / "a-file", "dir": tmp_path / "a-dir"}
    made["file"].write_text("x")
    made["dir"].mkdir()
    for name, text in {"not_json": '{"shard": ', "list": "[1, 2]", "unknown": '{"shard": {"nope": 1}}',
                       "range": '{"shard": {"store": {"capacity_bytes": -5}}}',
                       "wrong_type": '{"client": {"virtual_nodes": "many"}}',
                       "one_gib": '{"shard": {"store": {"capacity_bytes": 1073741824}}}'}.items():
        made[name] = tmp_path / f"{name}.json"
        made[name].write_text(text)
    return {name: str(path) for name, path in made.items()}


BAD_FLAGS = [
    # (argv, the prog in the message, texts the line must hold)
    (["up", "--capacity-gb", "-1"], "raylsm up", ["--capacity-gb", "(0, 1000000]", "'-1'"]),
    (["up", "--capacity-gb", "0"], "raylsm up", ["--capacity-gb", "(0, 1000000]"]),
    (["up", "--capacity-gb", "nan"], "raylsm up", ["--capacity-gb", "(0, 1000000]"]),
    (["up", "--capacity-gb", "inf"], "raylsm up", ["--capacity-gb", "(0, 1000000]"]),
    (["up", "--capacity-gb", "lots"], "raylsm up", ["--capacity-gb", "(0, 1000000]"]),
    (["up", "--capacity-gb", "0.1"], "raylsm up", ["--capacity-gb", "two segments", "--segment-mb"]),
    (["up", "--capacity-gb", "1", "--segment-mb", "1024"], "raylsm up", ["--capacity-gb", "two segments"]),
    (["up", "--segment-mb", "0"], "raylsm up", ["--segment-mb", "[1, 16384]"]),
    (["up", "--segment-mb", "16385"], "raylsm up", ["--segment-mb", "[1, 16384]"]),
    (["up", "--shards", "0"], "raylsm up", ["--shards", "[1, 256]"]),
    (["up", "--shards", "two"], "raylsm up", ["--shards", "[1, 256]"]),
    (["up", "--address", ""], "raylsm up", ["--address", "empty"]),
    (["status", "--namespace", ""], "raylsm status", ["--namespace", "empty"]),
    (["down", "--namespace", " "], "raylsm down", ["--namespace", "empty"]),
    (["bench", "store", "--threads", "0"], "raylsm bench store", ["--threads", "[1, 256]"]),
    (["bench", "store", "--pages-64k", "-1"], "raylsm bench store", ["--pages-64k", "[0, 100000000]"]),
    (["bench", "store", "--pages-1m", "1.5"], "raylsm bench store", ["--pages-1m", "[0, 100000000]"]),
    (["bench", "store", "--extent-pages", "0"], "raylsm bench store", ["--extent-pages", "[1, 1048576]"]),
    (["bench", "store", "--chain-pages", "x"], "raylsm bench store", ["--chain-pages", "[1, 1048576]"]),
    (["bench", "store", "--pages-64k", "0", "--pages-1m", "0"], "raylsm bench store", ["--pages-64k", "both are 0"]),
    (["bench", "store", "--systems", "raylsm,nope"], "raylsm bench store",
     ["--systems", "unknown nope", "hicache_file"]),
    (["bench", "store", "--systems", ","], "raylsm bench store", ["--systems", "got none"]),
    (["bench", "tier", "--batches", "0"], "raylsm bench tier", ["--batches", "[1, 100000]"]),
    (["bench", "tier", "--batches", "100001"], "raylsm bench tier", ["--batches", "[1, 100000]"]),
    (["bench", "trace", "--capacity-fraction", "2"], "raylsm bench trace", ["--capacity-fraction", "(0, 1]"]),
    (["bench", "trace", "--capacity-fraction", "0"], "raylsm bench trace", ["--capacity-fraction", "(0, 1]"]),
    (["bench", "trace", "--capacity-fraction", "1/0"], "raylsm bench trace", ["--capacity-fraction", "(0, 1]"]),
    (["bench", "trace", "--capacity-fraction", "nan"], "raylsm bench trace", ["--capacity-fraction", "(0, 1]"]),
    (["bench", "trace", "--host-cache-fraction", "1.5"], "raylsm bench trace", ["--host-cache-fraction", "[0, 1]"]),
    (["bench", "trace", "--payload-scale", "0"], "raylsm bench trace", ["--payload-scale", "(0, 1]"]),
    (["bench", "trace", "--sample-conversations", "2"], "raylsm bench trace", ["--sample-conversations", "(0, 1]"]),
    (["bench", "trace", "--limit", "0"], "raylsm bench trace", ["--limit", "[1, 1000000000]"]),
    (["bench", "trace", "--time-window", "-5"], "raylsm bench trace", ["--time-window", "(0, 1000000000]"]),
    (["bench", "trace", "--shards", "0"], "raylsm bench trace", ["--shards", "[1, 256]"]),
    (["bench", "trace", "--page-tokens", "100"], "raylsm bench trace", ["--page-tokens", "divisor", "512"]),
    (["bench", "trace", "--prefill-tokens-per-s", "0"], "raylsm bench trace", ["--prefill-tokens-per-s", "(0,"]),
    (["bench", "trace", "--seed", "-1"], "raylsm bench trace", ["--seed", "[0, 9223372036854775807]"]),
    (["bench", "trace", "--systems", "raylsm,nope"], "raylsm bench trace", ["--systems", "unknown nope"]),
    (["bench", "trace", "--profile", "gpt-5"], "raylsm bench trace", ["--profile", "invalid choice"]),
    (["bench", "trace", "--page-cache", "lukewarm"], "raylsm bench trace", ["--page-cache", "invalid choice"]),
    (["bench", "trace", "--raylsm-extra-config", "[1]"], "raylsm bench trace", ["--raylsm-extra-config", "object"]),
    (["bench", "trace", "--raylsm-extra-config", '{"bogus": 1}', "--systems", "raylsm"], "raylsm bench trace",
     ["--raylsm-extra-config", "bogus"]),
    (["bench", "trace", "--raylsm-extra-config", '{"virtual_nodes": 0}', "--systems", "raylsm"], "raylsm bench trace",
     ["--raylsm-extra-config", "virtual_nodes"]),
    (["bench"], "raylsm bench", ["BENCHMARK"]),
    ([], "raylsm", ["COMMAND"]),
]


@pytest.mark.parametrize("argv, prog, expected", BAD_FLAGS, ids=[" ".join(case[0]) or "nothing" for case in BAD_FLAGS])
def test_a_bad_flag_is_one_line_and_status_2(capsys, argv, prog, expected):
    status, err = run_cli(capsys, *argv)
    assert_one_line_error(status, err, prog, *expected)


PATH_FLAGS = [
    (["up", "--config", "{tmp}/missing.json"], "raylsm up", ["--config", "no such file"]),
    (["up", "--config", "{dir}"], "raylsm up", ["--config", "is a directory"]),
    (["up", "--config", "{not_json}"], "raylsm up", ["--config", "not valid JSON"]),
    (["up", "--config", "{list}"], "raylsm up", ["--config", "must be a mapping"]),
    (["up", "--config", "{unknown}"], "raylsm up", ["--config", "unknown key", "nope"]),
    (["up", "--config", "{range}"], "raylsm up", ["--config", "capacity_bytes", "out of range"]),
    (["up", "--config", "{wrong_type}"], "raylsm up", ["--config", "virtual_nodes", "must be int"]),
    (["up", "--config", "{one_gib}", "--segment-mb", "1024"], "raylsm up",
     ["capacity_bytes", "flags on top of --config"]),
    (["up", "--data-dir", "{file}"], "raylsm up", ["--data-dir", "not a directory"]),
    (["up", "--data-dir", "{file}/below"], "raylsm up", ["--data-dir", "not a directory"]),
    (["bench", "store", "--dir", "{file}"], "raylsm bench store", ["--dir", "not a directory"]),
    (["bench", "store", "--json", "{dir}"], "raylsm bench store", ["--json", "is a directory"]),
    (["bench", "store", "--json", "{file}/out.json"], "raylsm bench store", ["--json", "not a directory"]),
    (["bench", "tier", "--json", "{dir}"], "raylsm bench tier", ["--json", "is a directory"]),
    (["bench", "trace", "--trace", "{tmp}/missing.jsonl"], "raylsm bench trace", ["--trace", "no such file"]),
    (["bench", "trace", "--dir", "{file}"], "raylsm bench trace", ["--dir", "not a directory"]),
    (["bench", "trace", "--json", "{dir}"], "raylsm bench trace", ["--json", "is a directory"]),
    (["bench", "trace", "--plot", "{dir}"], "raylsm bench trace", ["--plot", "is a directory"]),
]


@pytest.mark.parametrize("argv, prog, expected", PATH_FLAGS, ids=[" ".join(case[0]) for case in PATH_FLAGS])
def test_a_bad_path_or_config_file_is_one_line_and_status_2(capsys, tmp_path, files, argv, prog, expected):
    argv = [arg.format(tmp=tmp_path, **files) for arg in argv]
    status, err = run_cli(capsys, *argv)
    assert_one_line_error(status, err, prog, *expected)


def test_a_trace_file_that_is_not_a_trace_is_one_line(capsys, tmp_path):
    trace = tmp_path / "trace.jsonl"
    trace.write_text('{"timestamp": 0, "input_length": 10}\n')  # no output_length, no hash_ids
    status, err = run_cli(capsys, "bench", "trace", "--trace", str(trace), "--systems", "lru_model", "--no-progress")
    assert_one_line_error(status, err, "raylsm bench trace", "--trace", "not a trace record")


def test_a_config_error_from_deep_in_a_handler_is_one_line(capsys, monkeypatch):
    from raylsm.errors import ConfigError

    def handler(args):
        raise ConfigError("shard capacity is below two segments")

    monkeypatch.setattr(cli, "_run_down", handler)
    status, err = run_cli(capsys, "down")
    assert_one_line_error(status, err, "raylsm down", "below two segments")


def test_a_good_command_line_still_parses():
    args = cli.build_parser().parse_args(["up", "--capacity-gb", "1.5", "--segment-mb", "64", "--shards", "2"])
    assert (args.capacity_gb, args.segment_mb, args.shards) == (1.5, 64, 2)
    config = cli.tier_config_from_args(args)
    assert config.shard.store.capacity_bytes == 1_500_000_000 // 4096 * 4096
    assert config.shard.store.segment_bytes == 64 << 20
    args = cli.build_parser().parse_args(["bench", "trace", "--capacity-fraction", "1/16", "--seed", "7"])
    assert args.capacity_fraction == pytest.approx(1 / 16) and args.seed == 7


def test_config_file_values_are_kept_under_the_flags(tmp_path):
    path = tmp_path / "tier.json"
    path.write_text(json.dumps({"shard": {"max_concurrency": 4, "store": {"segment_bytes": 64 << 20}},
                                "client": {"virtual_nodes": 32}}))
    args = cli.build_parser().parse_args(["up", "--config", str(path), "--capacity-gb", "1"])
    config = cli.tier_config_from_args(args)
    assert config.shard.max_concurrency == 4 and config.client.virtual_nodes == 32
    assert config.shard.store.segment_bytes == 64 << 20  # the file's segments make 1 GB valid
    assert config.shard.store.capacity_bytes == 1_000_000_000 // 4096 * 4096


def test_number_range_describes_and_checks():
    fraction = cli_args.NumberRange(float, 0, 1, low_open=True, fractions=True)
    assert fraction("1/16") == pytest.approx(1 / 16) and fraction("1") == 1.0
    assert fraction.describe() == "a number in (0, 1]"
    assert not fraction.contains(0) and not fraction.contains(float("nan")) and not fraction.contains(True)
    assert cli_args.NumberRange(int, 1).describe() == "an integer >= 1"
    assert not cli_args.NumberRange(int, 0, 5).contains(2.5)


# ---- a benchmark that would not fit on the disk: refused before it creates anything ---------------


@pytest.fixture
def small_disk(monkeypatch):
    """Every free-space measure reads 100 MiB free (less than any benchmark's spare room)."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(1 << 40, (1 << 40) - (100 << 20), 100 << 20))


def test_bench_store_that_cannot_fit_one_batch_is_refused_before_writing(capsys, tmp_path, small_disk):
    target = tmp_path / "store-data"
    status, err = run_cli(capsys, "bench", "store", "--dir", str(target), "--pages-64k", "1000", "--pages-1m", "0",
                          "--systems", "disk_ceiling", "--no-progress")
    assert_one_line_error(status, err, "raylsm bench store", "64KiB", "GB is free under", "--dir")
    assert not target.exists()


def test_bench_trace_that_cannot_fit_is_refused_before_writing(capsys, tmp_path, small_disk):
    trace = tmp_path / "trace.jsonl"
    with open(trace, "w") as out:
        for index in range(8):
            out.write(json.dumps({"timestamp": index * 100, "input_length": 2048, "output_length": 1,
                                  "hash_ids": [0, index, index + 100, index + 200]}) + "\n")
    target = tmp_path / "trace-data"
    status, err = run_cli(capsys, "bench", "trace", "--trace", str(trace), "--systems", "hicache_file,lru_model",
                          "--capacity-fraction", "1", "--payload-scale", "1", "--dir", str(target), "--no-progress")
    assert_one_line_error(status, err, "raylsm bench trace", "would write", "is free there", "--dir")
    assert not target.exists()


def test_bench_tier_that_cannot_fit_is_refused_before_writing(capsys, tmp_path, monkeypatch, small_disk):
    pytest.importorskip("torch")  # the tier benchmark's host pool
    monkeypatch.chdir(tmp_path)  # its data goes under ./.raylsm/bench
    status, err = run_cli(capsys, "bench", "tier", "--batches", "4")
    assert_one_line_error(status, err, "raylsm bench tier", "--batches", "is free there")
    assert not (tmp_path / ".raylsm").exists()



def test_up_tells_lifecycle_whether_the_capacity_was_chosen(capsys, tmp_path, monkeypatch):
    """lifecycle.up lowers a default capacity that does not fit the local disk and refuses a chosen one."""
    import sys
    import types

    import raylsm
    from raylsm.errors import ConfigError

    calls = []

    def up(config, **kwargs):  # stands in for the real one, which would start Ray
        calls.append(kwargs)
        raise ConfigError("stopped before Ray")

    lifecycle = types.ModuleType("raylsm.lifecycle")
    lifecycle.up = up
    monkeypatch.setitem(sys.modules, "raylsm.lifecycle", lifecycle)
    monkeypatch.setattr(raylsm, "lifecycle", lifecycle, raising=False)
    with_file = tmp_path / "tier.json"
    with_file.write_text('{"shard": {"store": {"capacity_bytes": 4294967296}}}')
    for argv, explicit in ((["up"], False), (["up", "--capacity-gb", "8"], True),
                           (["up", "--config", str(with_file)], True)):
        status, err = run_cli(capsys, *argv)
        assert_one_line_error(status, err, "raylsm up", "stopped before Ray")
        assert calls.pop()["capacity_explicit"] is explicit, argv
