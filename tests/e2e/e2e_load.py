"""A multi-turn load of the shape of SGLang's benchmark/hicache/bench_multiturn.py, on token ids.

Owned here: the load and its summary. As in bench_multiturn: `clients` conversations of `rounds`
rounds; each starts with `request_tokens` tokens; after each answer the client appends the generated
ids and a new question of `request_tokens` tokens to its history and sends the whole history again;
ready requests are picked at random (its `--ready-queue-policy random`), at most `max_parallel` are in
flight, and sends are spaced by a Poisson process of `request_rate` per second (0: no spacing).
Differences, each for a reason: token ids instead of text (the server runs without a tokenizer),
every client's questions drawn from its own seeded generator (so two servers see the same questions
whatever order answers arrive in), threads and urllib instead of asyncio and aiohttp (no dependency
beyond the standard library), and a failed request ends its client's conversation instead of being
skipped (its history would no longer be what the server cached).

TTFT: each request is streamed (`"stream": true`) and TTFT is the time from sending it to the first
server-sent event that carries an output id (bench_multiturn times the first event with text).
Cache hit rate = sum(cached_tokens) / sum(prompt_tokens) over all requests (newer bench_multiturn's
definition), also per round.

Called by sglang_e2e.py; thread-safe only as used: requests run on a pool, bookkeeping on the
caller's thread. Raises BudgetExceededError when the load outlives `timeout_s`.
"""

from __future__ import annotations

import concurrent.futures
import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

from e2e_errors import BudgetExceededError, E2EError
from e2e_http import Generation, SGLangClient
from e2e_models import FIRST_ORDINARY_TOKEN_ID, VOCAB_SIZE

TTFT_METHOD = ("streamed /generate: seconds from sending the request to the first server-sent event "
               "carrying an output id")


@dataclass(frozen=True)
class LoadConfig:
    # With the MHA model (32 KiB of KV per token) and a 1 GB host pool (~30,000 tokens), the last
    # round's histories (24 x ~4,100 tokens) are three times what L2 holds: many rounds read L3.
    clients: int = 24
    rounds: int = 4
    request_tokens: int = 1024  # bench_multiturn --request-length (and its sub-question length)
    output_tokens: int = 8  # --output-length
    max_parallel: int = 4  # --max-parallel (its L3 recipe uses 4)
    request_rate: float = 16.0  # --request-rate, Poisson
    seed: int = 1
    vocab_size: int = VOCAB_SIZE
    timeout_s: float = 240.0


def question(config: LoadConfig, client_id: int, round_index: int) -> list[int]:
    """The tokens client `client_id` adds in round `round_index` (round 0: its first prompt)."""
    rng = random.Random(f"{config.seed}/{client_id}/{round_index}")
    return [rng.randrange(FIRST_ORDINARY_TOKEN_ID, config.vocab_size) for _ in range(config.request_tokens)]


def percentile(values: list[float], q: float) -> Optional[float]:
    """The q-th percentile by nearest rank (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _stats(values: list[float]) -> dict[str, Optional[float]]:
    if not values:
        return {"mean": None, "p50": None, "p99": None}
    return {"mean": round(sum(values) / len(values), 6), "p50": round(percentile(values, 50), 6),
            "p99": round(percentile(values, 99), 6)}


def summarize(records: list[dict[str, Any]], errors: list[str], config: LoadConfig, duration_s: float,
              label: str) -> dict[str, Any]:
    """The load's record for e2e.json: TTFT mean/p50/p99, hit rate overall and per round."""
    prompt_tokens = sum(r["prompt_tokens"] for r in records)
    cached_tokens = sum(r["cached_tokens"] for r in records)
    storage = [r["storage_tokens"] for r in records if r["storage_tokens"] is not None]
    per_round = []
    for round_index in range(config.rounds):
        these = [r for r in records if r["round"] == round_index]
        round_prompt = sum(r["prompt_tokens"] for r in these)
        per_round.append({
            "round": round_index, "requests": len(these),
            "hit_rate": round(sum(r["cached_tokens"] for r in these) / round_prompt, 6) if round_prompt else None,
            "ttft_p50_s": _stats([r["ttft_s"] for r in these if r["ttft_s"] is not None])["p50"],
        })
    return {
        "label": label,
        "requests": len(records),
        "expected_requests": config.clients * config.rounds,
        "errors": len(errors),
        "error_samples": errors[:5],
        "ttft_method": TTFT_METHOD,
        "ttft_s": _stats([r["ttft_s"] for r in records if r["ttft_s"] is not None]),
        "latency_s": _stats([r["latency_s"] for r in records if r["latency_s"] is not None]),
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached_tokens,
        "storage_tokens": sum(storage) if storage else None,
        "hit_rate": round(cached_tokens / prompt_tokens, 6) if prompt_tokens else None,
        "per_round": per_round,
        "duration_s": round(duration_s, 3),
        "config": asdict(config),
    }


def run_multiturn(client: SGLangClient, config: LoadConfig, label: str,
                  timeout_s: Optional[float] = None) -> dict[str, Any]:
    """Run the load against the server behind `client`; return `summarize`'s record."""
    timeout_s = config.timeout_s if timeout_s is None else timeout_s
    started = time.monotonic()
    pick = random.Random(config.seed)
    histories = {client_id: question(config, client_id, 0) for client_id in range(config.clients)}
    ready: list[tuple[int, int]] = [(client_id, 0) for client_id in range(config.clients)]
    in_flight: dict[concurrent.futures.Future, tuple[int, int]] = {}
    records: list[dict[str, Any]] = []
    errors: list[str] = []
    next_send = started
    # Shut down without waiting: after a timeout, requests still running end by their own timeout.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=config.max_parallel)
    try:
        while ready or in_flight:
            now = time.monotonic()
            if now - started > timeout_s:
                raise BudgetExceededError(f"the multi-turn load ({label}) ran past {timeout_s:.0f} s with "
                                          f"{len(records)} of {config.clients * config.rounds} requests done")
            while ready and len(in_flight) < config.max_parallel and now >= next_send:
                client_id, round_index = ready.pop(pick.randrange(len(ready)))
                future = pool.submit(client.generate_stream, list(histories[client_id]), config.output_tokens)
                in_flight[future] = (client_id, round_index)
                if config.request_rate > 0:
                    next_send = now + pick.expovariate(config.request_rate)
            # Here: nothing ready, the pool full, or the next send not due yet.
            can_send = bool(ready) and len(in_flight) < config.max_parallel
            wait_s = min(1.0, max(0.0, next_send - time.monotonic())) if can_send else 1.0
            if not in_flight:
                time.sleep(wait_s)
                continue
            done, _ = concurrent.futures.wait(in_flight, timeout=wait_s,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                client_id, round_index = in_flight.pop(future)
                try:
                    generation: Generation = future.result()
                except E2EError as error:
                    errors.append(f"client {client_id} round {round_index}: {error}")
                    continue
                records.append({"client": client_id, "round": round_index,
                                "prompt_tokens": generation.prompt_tokens or len(histories[client_id]),
                                "cached_tokens": generation.cached_tokens,
                                "storage_tokens": generation.storage_tokens,
                                "ttft_s": generation.ttft_s, "latency_s": generation.latency_s})
                histories[client_id] = histories[client_id] + generation.output_ids
                if round_index + 1 < config.rounds:
                    histories[client_id] += question(config, client_id, round_index + 1)
                    ready.append((client_id, round_index + 1))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return summarize(records, errors, config, time.monotonic() - started, label)
