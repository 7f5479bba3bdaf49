"""Free-space checks of the benchmarks: the bytes a run is about to write against the disk it writes to.

Owned here: the free space at a target directory, which need not exist yet (its nearest existing
ancestor is measured, so the check itself creates nothing), the spare room every check keeps, and
the refusal. Each caller estimates its own footprint and checks it BEFORE it creates a directory or
writes a byte: `raylsm bench store` (which scales its page counts down to what fits, and says so),
`raylsm bench tier` and `raylsm bench trace` (which refuse, naming the flag to lower); `raylsm.cli`
uses `existing_ancestor` to check paths. (`raylsm up` fits a tier's capacity to its disk in
raylsm.lifecycle, and a store refuses at open a capacity its disk cannot hold.)

A refusal is a ConfigError (the run asks for more than the machine has): `raylsm` prints it as one
line and exits with status 2. Stateless; safe from any thread.
"""

from __future__ import annotations

import os
import shutil

from raylsm.errors import ConfigError

GiB = 1 << 30
GB = 1e9  # sizes in messages are decimal GB, as in the benchmark reports

# Room left free on top of every estimate: the last GiB of a disk belongs to logs, Ray's session
# files and the system; 5% covers what estimates miss (file system metadata, index files, rounding).
SPARE_BYTES = 1 * GiB
SPARE_FRACTION = 0.05


def existing_ancestor(path: str) -> str:
    """`path` itself if it exists, else its nearest existing ancestor (the directory it would be made in)."""
    current = os.path.abspath(path)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def free_bytes(path: str) -> int:
    """Bytes free to this user on the file system that holds (or would hold) `path`."""
    return shutil.disk_usage(existing_ancestor(path)).free


def with_spare(need_bytes: int) -> int:
    """The free bytes a run of `need_bytes` requires: the estimate plus the spare room."""
    return int(need_bytes * (1 + SPARE_FRACTION)) + SPARE_BYTES


def usable_bytes(free: int) -> int:
    """The largest estimate that `free` bytes accept (the inverse of `with_spare`); 0 if none."""
    return max(0, int((free - SPARE_BYTES) / (1 + SPARE_FRACTION)))


def require_free_space(path: str, need_bytes: int, what: str, hint: str = "", free: int | None = None) -> int:
    """Check that `need_bytes` (plus the spare room) fit in the free space at `path`; return the free
    bytes. Raises ConfigError naming `what`, the sizes, the place and `hint` (what to lower) if not.
    Writes nothing. `free` overrides the measured free bytes (tests)."""
    where = existing_ancestor(path)
    if free is None:
        free = shutil.disk_usage(where).free
    required = with_spare(need_bytes)
    if required > free:
        raise ConfigError(
            f"{what} would write ~{need_bytes / GB:.2f} GB under {os.path.abspath(path)}, but only "
            f"{free / GB:.2f} GB is free there (keeping {SPARE_BYTES / GB:.2f} GB + {SPARE_FRACTION:.0%} spare)"
            + (f"; {hint}" if hint else ""))
    return free
