"""Argument types and ranges of the `raylsm` command, shared with the benchmarks' own argument builders.

Owned here: `CommandParser` (argparse with one-line refusals), `NumberRange` and the ranges the
commands use, `require_ranges` (the same checks for a config built in code), and the path and list
types (`existing_file`, `directory_path`, `output_file`, `CommaList`). Called by raylsm.cli,
raylsm.cli_bench and the benchmarks' `add_*_arguments`. Standard library only (and raylsm.errors),
so that `raylsm --help` stays light.
"""

from __future__ import annotations

import argparse
import math
import os
from fractions import Fraction
from typing import Any, Sequence

from raylsm.bench.disk_budget import existing_ancestor  # stdlib only
from raylsm.errors import ConfigError


class CommandParser(argparse.ArgumentParser):
    """argparse with its refusals on one line, `raylsm up: error: argument --capacity-gb: ...` (the
    usage is one `--help` away), exit status 2. Subparsers inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")



class NumberRange:
    """An argparse type, and the range check behind it: `NumberRange(int, 1, 256)` accepts an integer
    in [1, 256]; `NumberRange(float, 0, 1, low_open=True, fractions=True)` a finite number in (0, 1],
    also written as a fraction ("1/16"). A bad value reads `argument --flag: must be <describe()>, got X`."""

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, fractions: bool = False) -> None:
        self.kind, self.low, self.high, self.low_open, self.fractions = kind, low, high, low_open, fractions

    def describe(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        low, high = _plain(self.low), _plain(self.high)
        if self.low is not None and self.high is not None:
            return f"{noun} in {'(' if self.low_open else '['}{low}, {high}]"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {low}"
        return noun if self.high is None else f"{noun} <= {high}"

    def contains(self, value: float) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def __call__(self, text: str):
        try:
            if self.kind is int:
                value = int(text, 10)
            elif self.fractions and "/" in text:
                value = float(Fraction(text.strip()))
            else:
                value = float(text)
        except (ValueError, ZeroDivisionError, OverflowError):
            value = None
        if value is None or not self.contains(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}")
        return value


def require_ranges(checks: Sequence[tuple[str, Any, "NumberRange"]]) -> None:
    """ConfigError naming the flag of the first (flag, value, range) whose value (when not None) is
    out of its range: the same check argparse made, for a config built in code."""
    for flag, value, allowed in checks:
        if value is not None and not allowed.contains(value):
            raise ConfigError(f"{flag} must be {allowed.describe()}, got {value!r}")


def _plain(number: float | None) -> str:
    if number is None:
        return ""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


positive_int = NumberRange(int, 1)
non_negative_int = NumberRange(int, 0)
SHARDS = NumberRange(int, 1, 256)  # shard actors on one Ray head; one per disk as deployed
SCALE_SHARDS = NumberRange(int, 1, 100_000)  # ControllerConfig.max_shards' range
SCALE_WAIT_S = NumberRange(float, 0, 86400)
CAPACITY_GB = NumberRange(float, 0, 1e6, low_open=True)  # per shard; a PB bounds typos, not disks
SEGMENT_MB = NumberRange(int, 1, 16 * 1024)  # StoreConfig.segment_bytes in whole MiB (the store takes 256 KiB up)
STORED_PAGES = NumberRange(int, 0, 100_000_000)
WORKLOAD_REQUESTS = NumberRange(int, 1, 10_000_000)
CHAIN_PAGES = NumberRange(int, 1, 1 << 20)  # ClientConfig.extent_pages' range
THREADS = NumberRange(int, 1, 256)
TIER_BATCHES = NumberRange(int, 1, 100_000)  # 32 MiB each; the disk check bounds a run further
TIER_CLIENTS = NumberRange(int, 1, 64)


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def existing_file(text: str) -> str:
    """A file to read: it must exist and be a regular file (or a pipe, as /dev/stdin)."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"is a directory, not a file: {text!r}")
    return text


def directory_path(text: str) -> str:
    """A directory to use or create: anything but an existing non-directory (checked here, made later)."""
    non_empty(text)
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"exists and is not a directory: {text!r}")
    ancestor = existing_ancestor(text)
    if not os.path.isdir(ancestor):
        raise argparse.ArgumentTypeError(f"cannot be made: {ancestor!r} is not a directory")
    return text


def output_file(text: str) -> str:
    """A file to write when the command ends: not a directory, and its directory exists or can be made
    and is writable, so that a long run does not fail at its last step."""
    non_empty(text)
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"is a directory: {text!r}")
    ancestor = existing_ancestor(os.path.dirname(os.path.abspath(text)))
    if not os.path.isdir(ancestor):
        raise argparse.ArgumentTypeError(f"cannot be written: {ancestor!r} is not a directory")
    if not os.access(ancestor, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot be written: no write permission in {ancestor!r}")
    return text


class CommaList:
    """An argparse type: a comma-separated, non-empty subset of `known`, as a tuple in the given order."""

    def __init__(self, known: Sequence[str]) -> None:
        self.known = tuple(known)

    def __call__(self, text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        unknown = [name for name in names if name not in self.known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"must be a comma-separated subset of {', '.join(self.known)}; got "
                + (f"unknown {', '.join(unknown)}" if unknown else "none"))
        return names
