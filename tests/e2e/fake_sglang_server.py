"""A stand-in for an SGLang server's HTTP surface, for the CPU tests of the end-to-end driver.

Owned here: just enough of SGLang 0.5.23's endpoints, in the shapes e2e_http.py documents, to run the
driver's request, flush, backup-wait, check and load logic without a GPU: /health (503 for the
first `health_503` calls), /generate (streamed or not; output ids a fixed function of the input, so
answers repeat), /flush_cache (400 for the first `flush_refusals` calls, as SGLang answers while
requests run), /metrics (`sglang:backuped_tokens_total`). A toy prefix cache answers
`cached_tokens`: page-aligned prefixes of earlier prompts, an L1 set that a flush clears and an L3 set
it does not. Knobs make it misbehave on purpose: `cap_cached_tokens` (L3 gives back too little),
`diverge_after_flush` (different ids once the L1 copy is gone), `fail_every` (HTTP 500).

Used only by tests/e2e/test_sglang_e2e.py; nothing here is a mock of raylsm. Thread-safe (one lock).
"""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional


class FakeSGLang:
    def __init__(self, page_size: int = 64, vocab_size: int = 32000, health_503: int = 0, flush_refusals: int = 1,
                 incremental: bool = False, metrics: bool = True, cap_cached_tokens: Optional[int] = None,
                 diverge_after_flush: bool = False, fail_every: int = 0):
        self.page_size, self.vocab_size = page_size, vocab_size
        self.health_503, self.flush_refusals, self.incremental, self.metrics = health_503, flush_refusals, \
            incremental, metrics
        self.cap_cached_tokens, self.diverge_after_flush, self.fail_every = cap_cached_tokens, \
            diverge_after_flush, fail_every
        self.lock = threading.Lock()
        self.l1: set[tuple[int, ...]] = set()
        self.l3: set[tuple[int, ...]] = set()
        self.flushed = False
        self.backuped_tokens = 0
        self.bodies: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []  # (body, final meta_info, output ids) in arrival order
        self.calls = {"health": 0, "flush": 0, "generate": 0}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        # A short poll interval: shutdown() waits for the serve loop's next poll.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeSGLang":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- the toy cache -----------------------------------------------------------------------------

    def _prefixes(self, ids: list[int]) -> list[tuple[int, ...]]:
        return [tuple(ids[:end]) for end in range(self.page_size, len(ids) + 1, self.page_size)]

    def _lookup(self, ids: list[int]) -> tuple[int, dict[str, int]]:
        """(cached tokens, their sources): the longest page-aligned prefix below the last token."""
        cached, source = 0, "device"
        for prefix in self._prefixes(ids[:-1]):
            if prefix in self.l1:
                cached, source = len(prefix), "device"
            elif prefix in self.l3:
                cached, source = len(prefix), "storage"
            else:
                break
        if self.cap_cached_tokens is not None:
            cached = min(cached, self.cap_cached_tokens)
        details = {"device": cached if source == "device" else 0, "host": 0,
                   "storage": cached if source == "storage" else 0, "storage_backend": "FakeStorage"}
        return cached, details

    def _outputs(self, ids: list[int], count: int) -> list[int]:
        rng = random.Random(hash(tuple(ids)))
        shift = 1 if (self.diverge_after_flush and self.flushed) else 0
        return [(rng.randrange(3, self.vocab_size) + shift) % self.vocab_size for _ in range(count)]

    def generate(self, body: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
        ids = list(body["input_ids"])
        count = int(body["sampling_params"]["max_new_tokens"])
        with self.lock:
            self.bodies.append(body)
            cached, details = self._lookup(ids)
            outputs = self._outputs(ids, count)
            for prefix in self._prefixes(ids):
                self.l1.add(prefix)
                if prefix not in self.l3:
                    self.l3.add(prefix)
                    self.backuped_tokens += self.page_size
            meta = {"id": f"req-{len(self.bodies)}", "prompt_tokens": len(ids), "cached_tokens": cached,
                    "completion_tokens": count, "cached_tokens_details": details if cached else None,
                    "finish_reason": {"type": "length", "length": count}}
            self.answers.append({"body": body, "meta_info": meta, "output_ids": outputs})
        return outputs, meta

    # ---- HTTP ----------------------------------------------------------------------------------------

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/health":
                    with fake.lock:
                        fake.calls["health"] += 1
                        starting = fake.calls["health"] <= fake.health_503
                    self._send(503 if starting else 200, b"")
                elif self.path == "/metrics" and fake.metrics:
                    text = ("# HELP sglang:backuped_tokens_total Number of backuped tokens.\n"
                            "# TYPE sglang:backuped_tokens_total counter\n"
                            f'sglang:backuped_tokens_total{{model_name="fake"}} {float(fake.backuped_tokens)}\n'
                            'sglang:backuped_tokens_created{model_name="fake"} 1.7e9\n')
                    self._send(200, text.encode(), "text/plain")
                else:
                    self._send(404, b'{"detail": "Not Found"}')

            def do_POST(self) -> None:
                if self.path.startswith("/flush_cache"):
                    with fake.lock:
                        fake.calls["flush"] += 1
                        refused = fake.calls["flush"] <= fake.flush_refusals
                        if not refused:
                            fake.l1.clear()
                            fake.flushed = True
                    if refused:
                        self._send(400, b"Cache not flushed because there are pending requests.\n", "text/plain")
                    else:
                        self._send(200, b"Cache flushed.\n", "text/plain")
                    return
                if self.path != "/generate":
                    self._send(404, b'{"detail": "Not Found"}')
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.calls["generate"] += 1
                    failing = fake.fail_every and fake.calls["generate"] % fake.fail_every == 0
                if failing:
                    self._send(500, b'{"error": {"message": "injected failure"}}')
                    return
                outputs, meta = fake.generate(body)
                if not body.get("stream"):
                    self._send(200, json.dumps({"output_ids": outputs, "meta_info": meta}).encode())
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for step in range(1, len(outputs) + 1):
                    ids = outputs[step - 1:step] if fake.incremental else outputs[:step]
                    event = {"output_ids": ids, "meta_info": {**meta, "completion_tokens": step}}
                    self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

        return Handler
