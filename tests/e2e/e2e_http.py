"""A small HTTP client for SGLang's native endpoints, on the standard library only (urllib).

Owned here: the request and response shapes the end-to-end check relies on, as SGLang 0.5.23 serves
them (sglang/srt/entrypoints/http_server.py):

- `GET /health`: 503 while the server starts, 200 once it serves (`health_generate`).
- `POST /generate` with `input_ids` and `sampling_params` (a server started with
  `--skip-tokenizer-init` takes token ids and answers `output_ids`, no text). The reply's
  `meta_info` holds `prompt_tokens`, `cached_tokens` and, when some were cached, `cached_tokens_details`
  ({"device", "host", "storage", "storage_backend"}; scheduler_components/output_streamer.py,
  `get_cached_tokens_details`). With `"stream": true` the reply is server-sent events, one
  `data: {json}` per step and `data: [DONE]` last (`serve_generate_request`); each event's
  `output_ids` is cumulative, or a delta under `--incremental-streaming-output`
  (tokenizer_manager.py, BatchTokenIDOutput branch): `generate_stream` handles both.
- `POST /flush_cache?timeout=S`: 200 once L1 and L2 are cleared, 400 while requests are in flight.
- `GET /metrics` (with `--enable-metrics`): Prometheus text; `metric_sum` adds up one metric's series.

Called by e2e_l3_check, e2e_load and sglang_e2e. Thread-safe: every call opens its own connection.
Failures raise the typed errors of e2e_errors (RequestError, FlushTimeoutError, HealthTimeoutError,
ServerExitedError); a refused flush is retried, not raised, until its deadline.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from e2e_errors import FlushTimeoutError, HealthTimeoutError, RequestError, ServerExitedError


@dataclass
class Generation:
    """What one /generate answered: the generated ids and the final meta_info; for a streamed
    request also the time to the first event carrying output ids (TTFT) and the total latency."""

    output_ids: list[int]
    meta_info: dict[str, Any]
    ttft_s: Optional[float] = None
    latency_s: Optional[float] = None
    events: int = 0

    @property
    def prompt_tokens(self) -> int:
        return int(self.meta_info.get("prompt_tokens", 0))

    @property
    def cached_tokens(self) -> int:
        return int(self.meta_info.get("cached_tokens", 0))

    @property
    def storage_tokens(self) -> Optional[int]:
        """Tokens SGLang says came from the L3 backend (None when it gave no breakdown)."""
        details = self.meta_info.get("cached_tokens_details") or {}
        value = details.get("storage")
        return None if value is None else int(value)


@dataclass
class FlushResult:
    attempts: int
    waited_s: float
    refusals: list[str] = field(default_factory=list)


def generate_body(input_ids: list[int], max_new_tokens: int, stream: bool) -> dict[str, Any]:
    """The /generate body: greedy, a fixed number of new tokens (EOS ignored), token ids in."""
    return {
        "input_ids": list(input_ids),
        "sampling_params": {"temperature": 0.0, "max_new_tokens": max_new_tokens, "ignore_eos": True},
        "stream": stream,
    }


class SGLangClient:
    """Calls one SGLang server at `base_url` (e.g. http://127.0.0.1:30000)."""

    def __init__(self, base_url: str, request_timeout_s: float = 120.0):
        self.base_url = base_url.rstrip("/")
        self.request_timeout_s = request_timeout_s

    # ---- plumbing ---------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Optional[dict] = None, timeout_s: Optional[float] = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        return urllib.request.urlopen(request, timeout=timeout_s or self.request_timeout_s)

    def get_json(self, path: str) -> Any:
        """GET `path` and decode its JSON reply (RequestError on any failure)."""
        return self._json("GET", path)

    def _json(self, method: str, path: str, body: Optional[dict] = None) -> Any:
        try:
            with self._request(method, path, body) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise RequestError(f"{method} {path}: HTTP {error.code}: {_body_text(error)}") from error
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise RequestError(f"{method} {path}: {error}") from error

    # ---- endpoints --------------------------------------------------------------------------------

    def wait_healthy(self, timeout_s: float, exited: Callable[[], Optional[str]] = lambda: None,
                     poll_s: float = 1.0) -> float:
        """Poll GET /health until it answers 200; return the seconds waited. `exited()` returns a
        message (ServerExitedError) once the server process is gone, None while it runs."""
        started = time.monotonic()
        last = "no answer yet"
        while True:
            gone = exited()
            if gone is not None:
                raise ServerExitedError(gone)
            try:
                with self._request("GET", "/health", timeout_s=min(10.0, max(1.0, timeout_s))) as response:
                    if response.status == 200:
                        return time.monotonic() - started
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as error:
                last = f"HTTP {error.code}"
            except (urllib.error.URLError, OSError) as error:
                last = str(error)
            if time.monotonic() - started >= timeout_s:
                raise HealthTimeoutError(f"{self.base_url}/health did not answer 200 within {timeout_s:.0f} s "
                                         f"(last: {last})")
            time.sleep(poll_s)

    def generate(self, input_ids: list[int], max_new_tokens: int) -> Generation:
        """A non-streamed /generate; RequestError if it fails or the reply lacks output_ids."""
        started = time.monotonic()
        reply = self._json("POST", "/generate", generate_body(input_ids, max_new_tokens, stream=False))
        if not isinstance(reply, dict) or "output_ids" not in reply or "meta_info" not in reply:
            raise RequestError(f"POST /generate: unexpected reply {str(reply)[:200]}")
        return Generation(list(reply["output_ids"]), dict(reply["meta_info"]),
                          latency_s=time.monotonic() - started, events=1)

    def generate_stream(self, input_ids: list[int], max_new_tokens: int) -> Generation:
        """A streamed /generate. TTFT is the time from sending the request to the first event that
        carries at least one output id. RequestError on an HTTP error, an error event, a stream
        without [DONE], or an unparseable event."""
        body = generate_body(input_ids, max_new_tokens, stream=True)
        started = time.monotonic()
        ttft = None
        events: list[dict[str, Any]] = []
        done = False
        try:
            with self._request("POST", "/generate", body) as response:
                for raw in response:
                    line = raw.decode("utf-8").strip()
                    if not line.startswith("data:"):
                        continue
                    payload = line[len("data:"):].strip()
                    if payload == "[DONE]":
                        done = True
                        break
                    event = json.loads(payload)
                    if "error" in event:
                        raise RequestError(f"POST /generate (stream): error event {event['error']}")
                    if ttft is None and event.get("output_ids"):
                        ttft = time.monotonic() - started
                    events.append(event)
        except urllib.error.HTTPError as error:
            raise RequestError(f"POST /generate (stream): HTTP {error.code}: {_body_text(error)}") from error
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise RequestError(f"POST /generate (stream): {error}") from error
        if not done or not events:
            raise RequestError(f"POST /generate (stream): ended without [DONE] after {len(events)} events")
        return Generation(assemble_output_ids(events), dict(events[-1].get("meta_info", {})), ttft_s=ttft,
                          latency_s=time.monotonic() - started, events=len(events))

    def flush_cache(self, timeout_s: float, retry_s: float = 0.5) -> FlushResult:
        """POST /flush_cache until it answers 200 (it refuses with 400 while requests run); return
        how many attempts it took. FlushTimeoutError when `timeout_s` passes first."""
        started = time.monotonic()
        refusals: list[str] = []
        while True:
            try:
                # SGLang's own harness passes timeout (seconds the server waits for idleness).
                with self._request("POST", "/flush_cache?timeout=5", body={}, timeout_s=30.0) as response:
                    if response.status == 200:
                        return FlushResult(len(refusals) + 1, time.monotonic() - started, refusals)
                    refusals.append(f"HTTP {response.status}")
            except urllib.error.HTTPError as error:
                refusals.append(f"HTTP {error.code}: {_body_text(error)}")
            except (urllib.error.URLError, OSError) as error:
                refusals.append(str(error))
            if time.monotonic() - started >= timeout_s:
                raise FlushTimeoutError(f"POST /flush_cache: no success in {timeout_s:.0f} s after "
                                        f"{len(refusals)} attempts (last: {refusals[-1]})")
            time.sleep(retry_s)

    def metric_sum(self, name: str) -> Optional[float]:
        """The sum over all series of Prometheus metric `name` at GET /metrics (0.0 while it has no
        samples yet); None if the server has no /metrics (started without --enable-metrics)."""
        try:
            with self._request("GET", "/metrics", timeout_s=10.0) as response:
                text = response.read().decode("utf-8", errors="replace")
        except (urllib.error.URLError, OSError):
            return None
        total = parse_metric_sum(text, name)
        return 0.0 if total is None else total


def assemble_output_ids(events: list[dict[str, Any]]) -> list[int]:
    """The generated ids of a stream: the last event's list when events are cumulative (SGLang's
    default), else the concatenation of the deltas (`--incremental-streaming-output`). Cumulative is
    recognised by the last list having `completion_tokens` ids, or by every list extending the one
    before it."""
    lists = [list(event.get("output_ids") or []) for event in events]
    completion = events[-1].get("meta_info", {}).get("completion_tokens")
    if completion is not None:
        cumulative = len(lists[-1]) == int(completion)
    else:
        cumulative = all(later[:len(earlier)] == earlier for earlier, later in zip(lists, lists[1:]))
    return lists[-1] if cumulative else [token for chunk in lists for token in chunk]


def parse_metric_sum(text: str, name: str) -> Optional[float]:
    """Sum the samples of metric `name` in Prometheus text format (None if there are none)."""
    total = None
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest and rest[0] not in "{ ":
            continue  # another metric whose name starts with this one
        try:
            value = float(rest.rsplit(None, 1)[-1])
        except (ValueError, IndexError):
            continue
        total = value if total is None else total + value
    return total


def _body_text(error: urllib.error.HTTPError) -> str:
    try:
        return error.read().decode("utf-8", errors="replace").strip()[:300]
    except OSError:
        return ""
