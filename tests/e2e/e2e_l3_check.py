"""The L3 round trip through a real SGLang server: prompts computed once come back from L3.

Owned here: the check and its verdict. It follows SGLang's own HiCache storage harness
(test/registered/hicache/test_hicache_storage_file_backend.py, `HiCacheStorageBaseMixin.
test_basic_backup_and_prefetch`: a 768-token prompt, flush, the same prompt again, `cached_tokens >
700`) and adds what that harness leaves out: several prompts, random token ids from a fixed seed
(no tokenizer), and the generated ids of the L3 hit compared with those of the first, cold run.

Order of steps, and why the wait for the backup comes before the flush: a flush resets the radix
tree and the cache controller, and that drops the backups still queued for L3
(sglang/srt/mem_cache/unified_radix_cache.py `_reset_full` -> cache_controller.py `reset`, which
clears `backup_queue`). So: cold run -> warm run (an L1 hit, the determinism control) -> wait until
SGLang's `sglang:backuped_tokens_total` counts every full page of the prompts (or, without
/metrics, a fixed settle time) -> POST /flush_cache, retried while it refuses -> the L3 run.

Called by sglang_e2e.py. Raises e2e_errors (a server that fails a request, a flush that never
succeeds); a wrong result is a verdict in the returned dict (`pass`, `failures`), not an exception.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

from e2e_http import Generation, SGLangClient
from e2e_models import FIRST_ORDINARY_TOKEN_ID, VOCAB_SIZE

BACKUP_METRIC = "sglang:backuped_tokens_total"  # sglang/srt/observability/metrics_collector.py


@dataclass(frozen=True)
class CheckConfig:
    prompts: int = 4
    prompt_tokens: int = 768  # SGLang's harness: 768 tokens, 12 pages of 64
    max_new_tokens: int = 16
    # A hit must exceed this; SGLang's harness asserts > 700 (of 768: the last page is recomputed).
    min_cached_tokens: int = 700
    page_size: int = 64
    seed: int = 0
    vocab_size: int = VOCAB_SIZE
    backup_timeout_s: float = 30.0  # the longest wait for the backup counter to reach every page
    settle_s: float = 3.0  # the wait when the server exports no metrics
    flush_timeout_s: float = 60.0
    flush_retry_s: float = 0.5  # between refused flushes


def random_prompts(count: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """`count` prompts of `length` ordinary token ids, the same for the same seed."""
    rng = random.Random(seed)
    return [[rng.randrange(FIRST_ORDINARY_TOKEN_ID, vocab_size) for _ in range(length)] for _ in range(count)]


def expected_backup_tokens(prompts: list[list[int]], page_size: int) -> int:
    """Tokens of the full pages of the prompts: what must reach L3 for the L3 run to hit."""
    return sum(len(prompt) // page_size * page_size for prompt in prompts)


def wait_for_backup(client: SGLangClient, expected_tokens: int, timeout_s: float, settle_s: float,
                    poll_s: float = 0.5) -> dict[str, Any]:
    """Wait until SGLang has backed up at least `expected_tokens` tokens to L3 (its backup counter),
    at most `timeout_s`; without /metrics, sleep `settle_s`. Returns what it saw; a counter that
    stays short is reported (`complete: false`), not raised: the L3 run then shows what is missing."""
    started = time.monotonic()
    value = client.metric_sum(BACKUP_METRIC)
    if value is None:
        time.sleep(settle_s)
        return {"source": "sleep", "waited_s": settle_s, "expected_tokens": expected_tokens,
                "backuped_tokens": None, "complete": None}
    while value < expected_tokens and time.monotonic() - started < timeout_s:
        time.sleep(poll_s)
        value = client.metric_sum(BACKUP_METRIC) or 0.0
    return {"source": "metrics", "waited_s": round(time.monotonic() - started, 3),
            "expected_tokens": expected_tokens, "backuped_tokens": value, "complete": value >= expected_tokens}


def _run(client: SGLangClient, prompts: list[list[int]], max_new_tokens: int) -> list[Generation]:
    return [client.generate(prompt, max_new_tokens) for prompt in prompts]


def judge(config: CheckConfig, cold: list[Generation], warm: list[Generation], l3: list[Generation]) -> list[str]:
    """Why the check fails (empty: it passes). For every prompt, the L3 run must report more than
    `min_cached_tokens` cached tokens and generate exactly the cold run's ids."""
    failures = []
    for index, (first, control, again) in enumerate(zip(cold, warm, l3)):
        if again.cached_tokens <= config.min_cached_tokens:
            failures.append(f"prompt {index}: {again.cached_tokens} cached tokens after the flush, expected more "
                            f"than {config.min_cached_tokens} of {again.prompt_tokens or config.prompt_tokens}")
        if again.output_ids != first.output_ids:
            first_diff = next((i for i, (a, b) in enumerate(zip(first.output_ids, again.output_ids)) if a != b),
                              min(len(first.output_ids), len(again.output_ids)))
            cause = ("" if control.output_ids == first.output_ids else
                     "; the L1 hit before the flush differed too, so the server is not deterministic here "
                     "and this run cannot tell whether L3 returned the right bytes")
            failures.append(f"prompt {index}: output ids after the flush differ from the cold run's at position "
                            f"{first_diff} ({len(first.output_ids)} vs {len(again.output_ids)} ids){cause}")
        if len(first.output_ids) != config.max_new_tokens:
            failures.append(f"prompt {index}: the cold run generated {len(first.output_ids)} ids, "
                            f"expected {config.max_new_tokens}")
    if len(l3) != config.prompts:
        failures.append(f"{len(l3)} L3 answers for {config.prompts} prompts")
    return failures


def _record(generation: Generation) -> dict[str, Any]:
    return {"prompt_tokens": generation.prompt_tokens, "cached_tokens": generation.cached_tokens,
            "cached_tokens_details": generation.meta_info.get("cached_tokens_details"),
            "output_ids": generation.output_ids, "latency_s": round(generation.latency_s or 0.0, 4)}


def run_l3_check(client: SGLangClient, config: CheckConfig, label: str,
                 backup_timeout_s: Optional[float] = None) -> dict[str, Any]:
    """Run the check against the server behind `client`; return its record for e2e.json."""
    started = time.monotonic()
    prompts = random_prompts(config.prompts, config.prompt_tokens, config.vocab_size, config.seed)
    cold = _run(client, prompts, config.max_new_tokens)
    warm = _run(client, prompts, config.max_new_tokens)
    backup = wait_for_backup(client, expected_backup_tokens(prompts, config.page_size),
                             config.backup_timeout_s if backup_timeout_s is None else backup_timeout_s,
                             config.settle_s)
    flush = client.flush_cache(config.flush_timeout_s, retry_s=config.flush_retry_s)
    l3 = _run(client, prompts, config.max_new_tokens)
    failures = judge(config, cold, warm, l3)
    per_prompt = []
    for first, control, again in zip(cold, warm, l3):
        per_prompt.append({"cold": _record(first), "warm": _record(control), "l3": _record(again),
                           "l3_storage_tokens": again.storage_tokens,
                           "outputs_match": again.output_ids == first.output_ids,
                           "warm_outputs_match": control.output_ids == first.output_ids})
    return {
        "label": label,
        "pass": not failures,
        "failures": failures,
        "l3_cached_tokens": [again.cached_tokens for again in l3],
        "config": asdict(config),
        "backup": backup,
        "flush": {"attempts": flush.attempts, "waited_s": round(flush.waited_s, 3), "refusals": flush.refusals},
        "prompts": per_prompt,
        "duration_s": round(time.monotonic() - started, 3),
    }
