"""Workload generator: Mooncake-format request traces of shapes other than the packaged one.

Owned here: four parametrised workload shapes and their writer (`raylsm bench workload`). Every
trace is one JSON object per request (`timestamp` ms, `input_length`, `output_length`, `hash_ids`:
one block id per 512-token block, equal ids at equal positions = a reusable prefix), so the trace
replay, the models and every bench read it as they read the packaged trace (`--trace PATH`).

Shapes (all with a shared system prompt block first, as chat servers have):
- `agentic`: agent sessions on a few long tool/system prefixes of Zipf popularity (one very hot);
  each turn re-sends the whole session so far plus the last tool result.
- `multiturn`: chat sessions; each turn appends the last answer and a new question; the chance that a
  session goes on grows with its number of turns (as in the conversation trace: about 31% after the
  first turn, 80% after the tenth).
- `docqa`: questions over a few long documents of Zipf popularity (each re-read many times).
- `scan`: one-off long prompts (a batch job): nothing is reused but the system prompt.
- `mixed`: the four interleaved (an even split of sessions by default).

Sessions start as a Poisson process of `rate_per_s`; the turns of a session follow each other after
an exponential think time. Deterministic for a seed. Called by the CLI and the benches; pure.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from dataclasses import dataclass
from typing import Iterator

from raylsm.errors import ConfigError

BLOCK_TOKENS = 512
SHAPES = ("agentic", "multiturn", "docqa", "scan", "mixed")


@dataclass(frozen=True)
class WorkloadConfig:
    shape: str = "agentic"
    requests: int = 6000
    seed: int = 0
    rate_per_s: float = 4.0          # new sessions per second
    think_s: float = 20.0            # mean seconds between a session's turns
    zipf_s: float = 1.1              # popularity skew of shared prefixes and documents
    shared_prefixes: int = 8         # agentic: tool/system prefixes
    prefix_blocks: tuple[int, int] = (4, 16)   # agentic: blocks per shared prefix (min, max)
    documents: int = 20              # docqa: documents
    document_blocks: tuple[int, int] = (16, 64)

    def validate(self) -> "WorkloadConfig":
        if self.shape not in SHAPES:
            raise ConfigError(f"workload shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        if not 1 <= self.requests <= 10_000_000:
            raise ConfigError(f"requests must be in [1, 10000000], got {self.requests}")
        if not (self.rate_per_s > 0 and self.think_s > 0 and self.zipf_s > 0):
            raise ConfigError("rate_per_s, think_s and zipf_s must be > 0")
        if self.shared_prefixes < 1 or self.documents < 1:
            raise ConfigError("shared_prefixes and documents must be >= 1")
        return self


class _Blocks:
    """Fresh block ids (0 is the system prompt every request shares)."""

    def __init__(self) -> None:
        self._next = 1

    def fresh(self, count: int) -> list[int]:
        first, self._next = self._next, self._next + count
        return list(range(first, first + count))


def _zipf_weights(count: int, s: float) -> list[float]:
    return [1.0 / (rank + 1) ** s for rank in range(count)]


class _Session:
    """One session: what it has said so far (block ids) and how its next turn grows."""

    def __init__(self, kind: str, history: list[int], turns_left: int) -> None:
        self.kind = kind
        self.history = history
        self.turn = 0
        self.turns_left = turns_left


def _new_session(kind: str, rng: random.Random, blocks: _Blocks, config: WorkloadConfig,
                 prefixes: list[list[int]], documents: list[list[int]]) -> _Session:
    if kind == "agentic":
        prefix = rng.choices(prefixes, weights=_zipf_weights(len(prefixes), config.zipf_s))[0]
        return _Session(kind, [0, *prefix, *blocks.fresh(1)], 1 + int(rng.expovariate(1 / 6)))
    if kind == "multiturn":
        return _Session(kind, [0, *blocks.fresh(rng.randint(2, 12))], 0)  # turns decided as it goes
    if kind == "docqa":
        document = rng.choices(documents, weights=_zipf_weights(len(documents), config.zipf_s))[0]
        return _Session(kind, [0, *document, *blocks.fresh(1)], rng.randint(0, 2))
    return _Session(kind, [0, *blocks.fresh(rng.randint(16, 96))], 0)  # scan: one long one-off prompt


def _continues(session: _Session, rng: random.Random) -> bool:
    if session.kind == "multiturn":
        # P(another turn) grows with the turns so far: ~0.31 after the first, ~0.8 after the tenth.
        return rng.random() < 0.85 - 0.54 * math.exp(-(session.turn - 1) / 4.0)
    return session.turns_left > 0


def _next_turn(session: _Session, rng: random.Random, blocks: _Blocks) -> None:
    session.turn += 1
    session.turns_left -= 1
    if session.kind == "agentic":
        session.history += blocks.fresh(rng.randint(1, 4))  # the tool call and its result
    elif session.kind == "docqa":
        session.history = session.history[:-1] + blocks.fresh(1)  # another question, same document
    else:
        session.history += blocks.fresh(rng.randint(1, 3))  # the answer and a new question


def generate(config: WorkloadConfig) -> Iterator[dict]:
    """The requests of one workload, in timestamp order, as Mooncake-format dicts."""
    config = config.validate()
    rng = random.Random(config.seed)
    blocks = _Blocks()
    prefixes = [blocks.fresh(rng.randint(*config.prefix_blocks)) for _ in range(config.shared_prefixes)]
    documents = [blocks.fresh(rng.randint(*config.document_blocks)) for _ in range(config.documents)]
    kinds = ("agentic", "multiturn", "docqa", "scan") if config.shape == "mixed" else (config.shape,)
    pending: list[tuple[float, int, _Session]] = []  # (time s, tie-break, session) of each next turn
    started = 0.0
    order = 0
    emitted = 0
    while emitted < config.requests:
        if not pending or pending[0][0] > started:
            session = _new_session(rng.choice(kinds), rng, blocks, config, prefixes, documents)
            heapq.heappush(pending, (started, order, session))
            order += 1
            started += rng.expovariate(config.rate_per_s)
            continue
        at, _, session = heapq.heappop(pending)
        prompt_blocks = list(session.history)
        yield {"timestamp": int(at * 1000),
               "input_length": (len(prompt_blocks) - 1) * BLOCK_TOKENS + rng.randint(1, BLOCK_TOKENS),
               "output_length": rng.randint(20, 600), "hash_ids": prompt_blocks}
        emitted += 1
        if _continues(session, rng):
            _next_turn(session, rng, blocks)
            heapq.heappush(pending, (at + rng.expovariate(1 / config.think_s), order, session))
            order += 1


def write_trace(config: WorkloadConfig, path: str) -> int:
    """Write the workload to `path` (JSON lines); returns the number of requests."""
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for request in generate(config):
            out.write(json.dumps(request, separators=(", ", ": ")) + "\n")
            count += 1
    return count
