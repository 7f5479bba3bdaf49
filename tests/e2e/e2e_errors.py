"""The typed errors of the real-SGLang end-to-end check (tests/e2e/).

Owned here: every way a phase of the check can fail before a verdict is reached (a server that
exits or never answers, a request the server refuses, a flush that never succeeds, a run out of its
time budget, a host it must not touch). A *verdict* that the L3 tier is wrong (few cached tokens,
different outputs) is not an exception: it is a failed check in e2e.json (e2e_l3_check.judge).
Raised by e2e_http, e2e_server, e2e_l3_check and e2e_load; caught by sglang_e2e.main, which writes
the error into e2e.json and exits non-zero.
"""

from __future__ import annotations


class E2EError(RuntimeError):
    """Any failure of the end-to-end harness itself; the message says which phase and why."""


class BudgetExceededError(E2EError):
    """The run's time budget (E2E_BUDGET_S, default 600 s for the whole `make e2e`) is spent."""


class ServerExitedError(E2EError):
    """The SGLang server process exited; the message carries the tail of its log."""


class HealthTimeoutError(E2EError):
    """The server did not answer /health with 200 before its start timeout."""


class RequestError(E2EError):
    """A /generate (or other) request failed: HTTP error status, unreadable body, or timeout."""


class FlushTimeoutError(E2EError):
    """POST /flush_cache never returned success (it refuses while requests are in flight)."""


class HostNotFreshError(E2EError):
    """The host already belongs to a Ray cluster; the check only runs its own embedded tier."""
