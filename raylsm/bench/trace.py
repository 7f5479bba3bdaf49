"""Request traces in the Mooncake format, and the SGLang-like page keys derived from them.

Owns: loading a Mooncake-format trace (one JSON object per line: `timestamp` ms, `input_length`,
`output_length`, `hash_ids` = one remapped prefix-block id per 512-token block), turning a request
into the chained 32-byte page hashes SGLang would compute for it, and the table of modelled models
(KV bytes per token) that sizes the page payloads of a replay.

Called by the benchmarks (`raylsm.bench.*`, `raylsm bench`) and tests; never by the data path.
Pure functions over immutable values: thread-safe. The packaged trace is
`raylsm/data/conversation_trace.jsonl` (Mooncake FAST'25 "Conversation" trace, Apache-2.0; see
`raylsm/data/README.md`).

Page keys: SGLang chains `d_i = SHA256(d_{i-1} || token ids of page i)`. The trace has no token ids,
only block ids, so a page's "tokens" are (block id, page index within the block). Two requests that
share a block prefix therefore share page keys, and a page's key depends on its whole prefix, exactly
as with SGLang's chained hashes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from raylsm.errors import ConfigError

TRACE_BLOCK_TOKENS = 512  # tokens per hash_ids block in the Mooncake traces
PACKAGED_TRACE = "conversation_trace.jsonl"
PAGE_HASH_BYTES = 32

_PAGE_TOKENS_STRUCT = struct.Struct("<QI")  # block id (u64 LE), page index within the block (u32 LE)


@dataclass(frozen=True)
class TraceRequest:
    timestamp_ms: int  # arrival time from the start of the trace
    input_length: int  # prompt tokens
    output_length: int  # generated tokens
    hash_ids: tuple[int, ...]  # one prefix-block id per block of the prompt (the last may be partial)


def packaged_trace_path() -> Path:
    """Path of the conversation trace shipped in the package (plain or gzipped)."""
    data = resources.files("raylsm") / "data"
    for name in (PACKAGED_TRACE, PACKAGED_TRACE + ".gz"):
        candidate = data / name
        if candidate.is_file():
            return Path(str(candidate))
    raise FileNotFoundError(f"packaged trace {PACKAGED_TRACE}[.gz] not found under {data}")


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, "r", encoding="utf-8")


def iter_trace(path: str | Path | None = None) -> Iterator[TraceRequest]:
    """Stream the requests of a trace file (`.jsonl` or `.jsonl.gz`) in file order.

    Raises FileNotFoundError for a missing file and ValueError naming the line for a malformed one.
    """
    trace_path = packaged_trace_path() if path is None else Path(path)
    with _open_text(trace_path) as lines:
        for line_number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                yield TraceRequest(
                    timestamp_ms=int(record["timestamp"]),
                    input_length=int(record["input_length"]),
                    output_length=int(record["output_length"]),
                    hash_ids=tuple(int(block) for block in record["hash_ids"]),
                )
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{trace_path}:{line_number}: not a trace record ({error})") from error


def load_trace(
    path: str | Path | None = None,
    limit: int | None = None,
    time_window_s: float | None = None,
) -> list[TraceRequest]:
    """Load a trace: the packaged conversation trace by default.

    `limit` keeps the first `limit` requests; `time_window_s` keeps the requests that arrive within
    that many seconds of the first one (both may be given; the tighter wins).
    """
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    if time_window_s is not None and time_window_s < 0:
        raise ConfigError(f"time_window_s must be >= 0, got {time_window_s}")
    requests: list[TraceRequest] = []
    first_ms: int | None = None
    for request in iter_trace(path):
        if limit is not None and len(requests) >= limit:
            break
        if first_ms is None:
            first_ms = request.timestamp_ms
        if time_window_s is not None and request.timestamp_ms - first_ms > time_window_s * 1000:
            break  # the trace is in arrival order
        requests.append(request)
    return requests


def request_blocks(request: TraceRequest) -> list[int]:
    """Block-level page ids of a request: every block id, a partial last block included (the level of
    the design's hit-ratio figures)."""
    return list(request.hash_ids)


def _check_page_tokens(page_tokens: int, block_tokens: int) -> int:
    if page_tokens <= 0 or block_tokens <= 0 or block_tokens % page_tokens:
        raise ConfigError(
            f"page_tokens ({page_tokens}) must be a positive divisor of block_tokens ({block_tokens})"
        )
    return block_tokens // page_tokens


def request_page_count(request: TraceRequest, page_tokens: int, block_tokens: int = TRACE_BLOCK_TOKENS) -> int:
    """Number of full pages of the prompt: input_length // page_tokens, capped by its blocks."""
    pages_per_block = _check_page_tokens(page_tokens, block_tokens)
    return min(request.input_length // page_tokens, len(request.hash_ids) * pages_per_block)


def chain_page_hashes(
    hash_ids: Sequence[int], page_count: int, pages_per_block: int, previous: bytes = b""
) -> list[bytes]:
    """The first `page_count` chained page hashes of a block sequence (no cache; see PageKeyCache)."""
    pages: list[bytes] = []
    for block_index, block_id in enumerate(hash_ids):
        for page_index in range(pages_per_block):
            if len(pages) == page_count:
                return pages
            previous = hashlib.sha256(previous + _PAGE_TOKENS_STRUCT.pack(block_id, page_index)).digest()
            pages.append(previous)
    return pages


def request_pages(
    request: TraceRequest, page_tokens: int, block_tokens: int = TRACE_BLOCK_TOKENS
) -> list[bytes]:
    """The 32-byte chained page hashes of a request's full prompt pages, in chain order (depth 0 first).

    Page i of block b hashes (previous page hash, (block id, i)): requests sharing a block prefix share
    these keys. Use `.hex()` for SGLang's 64-hex form. ConfigError if page_tokens does not divide
    block_tokens.
    """
    pages_per_block = _check_page_tokens(page_tokens, block_tokens)
    count = request_page_count(request, page_tokens, block_tokens)
    return chain_page_hashes(request.hash_ids, count, pages_per_block)


class PageKeyCache:
    """`request_pages` for a whole trace, memoised per block prefix (each block's pages hashed once).

    Not thread-safe (a private dict); one per benchmark run.
    """

    def __init__(self, page_tokens: int, block_tokens: int = TRACE_BLOCK_TOKENS) -> None:
        self.page_tokens = page_tokens
        self.block_tokens = block_tokens
        self._pages_per_block = _check_page_tokens(page_tokens, block_tokens)
        # (hash of the last page before the block, block id) -> the block's page hashes
        self._blocks: dict[tuple[bytes, int], tuple[bytes, ...]] = {}

    def pages(self, request: TraceRequest) -> list[bytes]:
        count = request_page_count(request, self.page_tokens, self.block_tokens)
        pages: list[bytes] = []
        previous = b""
        for block_id in request.hash_ids:
            if len(pages) >= count:
                break
            block_pages = self._blocks.get((previous, block_id))
            if block_pages is None:
                per_block = self._pages_per_block
                block_pages = tuple(chain_page_hashes((block_id,), per_block, per_block, previous))
                self._blocks[(previous, block_id)] = block_pages
            pages.extend(block_pages)
            previous = block_pages[-1]
        del pages[count:]
        return pages

    def all_pages(self, requests: Iterable[TraceRequest]) -> list[list[bytes]]:
        return [self.pages(request) for request in requests]


# --- modelled models ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelProfile:
    name: str
    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int = 2  # bf16

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


MODEL_PROFILES: dict[str, ModelProfile] = {
    profile.name: profile
    for profile in (
        ModelProfile("llama-3.1-8b", layers=32, kv_heads=8, head_dim=128),  # 131072 B/token
        ModelProfile("llama-3.1-70b", layers=80, kv_heads=8, head_dim=128),  # 327680 B/token
        ModelProfile("qwen2.5-0.5b", layers=24, kv_heads=2, head_dim=64),  # 12288 B/token
        ModelProfile("qwen2.5-7b", layers=28, kv_heads=4, head_dim=128),  # 57344 B/token
        ModelProfile("qwen3-8b", layers=36, kv_heads=8, head_dim=128),  # 147456 B/token
    )
}


def page_bytes(profile: str | ModelProfile, page_tokens: int, scale: float = 1.0) -> int:
    """Payload bytes of one page: page_tokens x KV bytes per token x scale (scale < 1 fits small disks).

    ConfigError for an unknown profile name or a non-positive page_tokens or scale.
    """
    if isinstance(profile, str):
        if profile not in MODEL_PROFILES:
            raise ConfigError(f"unknown model profile {profile!r}; known: {sorted(MODEL_PROFILES)}")
        profile = MODEL_PROFILES[profile]
    if page_tokens <= 0:
        raise ConfigError(f"page_tokens must be > 0, got {page_tokens}")
    if scale <= 0:
        raise ConfigError(f"scale must be > 0, got {scale}")
    return max(1, int(page_tokens * profile.kv_bytes_per_token * scale))


# ---- sampling -----------------------------------------------------------------------------------


def conversation_of(request: Any) -> int:
    """The block that tells a request's conversation: its second block (the first one, 0 in the
    conversation trace, is a system prompt every request shares); its only block if it has one."""
    return request.hash_ids[1] if len(request.hash_ids) > 1 else (request.hash_ids[0] if request.hash_ids else -1)


def sample_conversations(trace: Sequence[Any], rate: float, salt: int = 0) -> list[Any]:
    """Keep the requests whose conversation hashes below `rate` (spatial sampling, as SHARDS samples
    keys): a kept conversation keeps all its turns, so the reuse that L3 can serve is kept, and the
    window's distinct pages (hence the capacity) shrink with the rate. NOTE: on the conversation trace
    at 10% capacity, 1/16 of conversations gives LRU 0.22 and Belady 0.32 (salts 0 and 1: 0.216-0.220,
    0.306-0.324), as the whole trace does (0.220, 0.320), with 1/16 of its page references."""
    if rate >= 1:
        return list(trace)
    limit = int(rate * 2**64)
    kept = []
    for request in trace:
        digest = hashlib.blake2b(_SAMPLE_KEY.pack(conversation_of(request) & (2**64 - 1), salt), digest_size=8).digest()
        if int.from_bytes(digest, "little") < limit:
            kept.append(request)
    return kept


_SAMPLE_KEY = struct.Struct("<QQ")


def load_sampled(path: str | None, *, limit: int | None = None, time_window_s: float | None = None,
                 sample_rate: float = 1.0, seed: int = 0) -> tuple[list[Any], int]:
    """The requests a bench replays: `load_trace`'s window, then `sample_conversations`. Returns
    (requests, requests in the window before sampling). ConfigError, naming `--trace`, for a missing,
    unreadable or malformed file, and for a window and sample that hold no request."""
    try:
        trace = load_trace(path, limit=limit, time_window_s=time_window_s)
    except (OSError, ValueError) as error:  # a missing, unreadable or malformed file is bad input
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"--trace {path or 'packaged trace'}: {error}") from error
    sampled = sample_conversations(trace, sample_rate, seed)
    if not sampled:
        raise ConfigError("the trace window (and sample) holds no requests")
    return sampled, len(trace)
