"""SIGTERM and SIGHUP as a KeyboardInterrupt while a command runs, so that it cleans up after itself.

Owned here: the handlers `raylsm.cli.run_command` installs around every command, and putting them
back after a library replaced them. A benchmark removes its data and stops the Ray tier it started
in finally blocks; Ctrl-C reaches those as a KeyboardInterrupt, and with these handlers `kill`, a
closed terminal or a job scheduler's SIGTERM do too (their default action ends the process on the
spot, leaving gigabytes behind).

Why `restore_handlers` exists. `ray.init` replaces the SIGTERM handler with its own (`sys.exit`),
and the Ray core it starts in this process installs a native failure-signal handler for SIGTERM
that aborts the process 3 s after the signal, whatever the Python code is still doing; a replay's
cleanup (stopping the tier, removing tens of GB) takes longer. So a benchmark calls
`restore_handlers()` right after every `ray.init`, which puts these Python handlers back at the
OS level. NOTE: seen on `raylsm bench trace` (Ray 2.60): SIGTERM during the replay, "tier stopped
in 1.6 s", then SIGABRT (exit status 134) while 13 GB of HiCacheFile pages were being removed.

Main thread only (Python delivers signals there); elsewhere both functions do nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Sequence

INTERRUPTING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

_installed: dict[int, object] = {}  # signal -> our handler, while `signals_interrupt` is active


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived while a command ran. A KeyboardInterrupt, so everything that cleans
    up after Ctrl-C (finally blocks, `except KeyboardInterrupt`) does so for these too."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def signals_interrupt(signums: Sequence[int] = INTERRUPTING_SIGNALS) -> Iterator[None]:
    """For the duration of the block, the first of `signums` raises Terminated in the main thread; a
    repeat while the cleanup runs is ignored (SIGKILL still ends the process). The previous handlers
    come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def raise_once(signum: int, frame) -> None:
        if received:
            return  # the first one is being handled: let the finally blocks finish
        received.append(signum)
        raise Terminated(signum)

    previous = {signum: signal.signal(signum, raise_once) for signum in signums}
    _installed.update({signum: raise_once for signum in signums})
    try:
        yield
    finally:
        for signum, handler in previous.items():
            _installed.pop(signum, None)
            signal.signal(signum, handler)


def restore_handlers() -> None:
    """Put the active `signals_interrupt` handlers back (call it after `ray.init`); a no-op outside one."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, handler in _installed.items():
        signal.signal(signum, handler)
