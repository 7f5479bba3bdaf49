"""Cache identity: what a page's bytes depend on besides its tokens, turned into its namespace.

SGLang's page keys hash token ids only. Everything else that changes a page's bytes has to be in the
namespace, or a server reads another server's pages as its own (silently wrong output: a page, once
stored, is never rewritten). This module owns that rule; docs/identity.md explains each part.

A `CacheIdentity` has two halves:

- identity parts, the same on every rank of one server and on every server that would compute the
  same bytes: the weights (path, revision or commit, load format, dtype, quantization, overrides, a
  cheap local-checkpoint fingerprint, the operator's `model_fingerprint`), the KV format (logical KV
  dtype, storage dtype, host layout, page size, MHA or MLA) and the parallel layout (attention-TP
  size for MHA, PP, attention-CP and DCP sizes, head split);
- rank parts: which slice of a page this rank holds (TP rank for MHA, PP, CP and DCP ranks) and that
  slice's size in bytes.

`identity_name` (identity parts only) lets all ranks' copies of a page be routed together;
`namespace_name` (identity + rank) names the index namespace of this rank's pages.

Called by RayLSMStorage at registration (`build_cache_identity`, then `log_cache_identity`). Pure
apart from the read-only probes of SGLang's process state (`current_server_args`) and of the model
directory (`local_checkpoint_fingerprint`, read afresh at every attach, so a re-attach after new
weights were written in place sees them). Thread-safe; the "warn once" set is guarded by a lock.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from raylsm.sglang.extra_config import model_fingerprint_from_extra

logger = logging.getLogger(__name__)

Parts = tuple[tuple[str, str], ...]

# Server arguments that change what the weights are. Each is read as SGLang resolved it.
WEIGHT_ARGS = ("model_path", "revision", "load_format", "dtype", "quantization", "modelopt_quant",
               "quantization_param_path", "json_model_override_args", "speculative_algorithm",
               "speculative_draft_model_path", "speculative_draft_model_revision")

# A local checkpoint's fingerprint: small metadata files hashed whole, weight files by name, size and
# one window from their middle (the bytes a full fine-tune changes even when shapes and sizes do not).
METADATA_FILE = re.compile(r"(config\.json|.*\.index\.json|.*quant.*\.json)$")
WEIGHT_FILE = re.compile(r".*\.(safetensors|bin|pt|pth|gguf)$")
SAMPLE_BYTES = 64 * 1024
MAX_WEIGHT_FILES = 4096
COMMIT = re.compile(r"[0-9a-f]{40}")
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # "org/name" or "name", not a path

_warned: set[str] = set()
_warned_lock = threading.Lock()


@dataclass(frozen=True)
class CacheIdentity:
    """The namespace of one rank's pages, in parts. Equal identities mean equal page bytes."""

    model_name: str  # SGLang's storage model name: served name, plus "-<storage_format_tag>" if any
    weights: Parts  # what identifies the weights; empty if nothing does
    kv_format: Parts  # logical KV dtype, storage dtype, host layout, page size, MHA or MLA
    parallel: Parts  # the layout that decides which slice of a page a rank holds
    rank: Parts  # this rank's slice and its size
    server_args_known: bool  # SGLang's server arguments were read
    fingerprint_given: bool  # the extra config had a model_fingerprint
    problems: tuple[str, ...] = ()  # why the identity may be incomplete (logged once per process)

    @property
    def weights_known(self) -> bool:
        return self.server_args_known or self.fingerprint_given

    @property
    def weights_digest(self) -> str:
        """16 hex digits over the weight parts ("unknown" if there are none)."""
        if not self.weights:
            return "unknown"
        return hashlib.sha256(_canonical(self.weights).encode()).hexdigest()[:16]

    @property
    def identity_name(self) -> str:
        """Rank-free: the same on every rank of one server (and of every server computing these bytes)."""
        model = "-".join(self.model_name.split("/"))
        return "|".join([model, f"w={self.weights_digest}", *_values(self.kv_format), *_values(self.parallel)])

    @property
    def namespace_name(self) -> str:
        """Identity plus rank: the name of the index namespace of this rank's pages."""
        return f"{self.identity_name}|rank:{','.join(_values(self.rank))}"

    def describe(self) -> str:
        """Every part, for the attach log line."""
        groups = (("weights", self.weights or (("unknown", "-"),)), ("kv", self.kv_format),
                  ("parallel", self.parallel), ("rank", self.rank))
        return "; ".join(f"{name}: " + ", ".join(f"{key}={value}" for key, value in parts)
                         for name, parts in groups if parts)


def build_cache_identity(storage_config: Any, host_pool: Any, extra_config: Optional[Mapping[str, Any]],
                         server_args: Any) -> CacheIdentity:
    """The identity of the pages this rank stores.

    storage_config: SGLang's HiCacheStorageConfig (fields read with getattr: older versions lack some).
    host_pool: the registered host KV pool, or None on the generic path before registration.
    extra_config: the storage backend's extra config (`model_fingerprint` is read from it).
    server_args: SGLang's ServerArgs (`current_server_args()`), or None where unreachable.
    Raises ConfigError for a malformed `model_fingerprint`; never touches the network.
    """
    get = functools.partial(_config_field, storage_config)
    fingerprint = model_fingerprint_from_extra(extra_config)
    is_mla = bool(get("is_mla_model", False))
    problems: list[str] = []

    weights: list[tuple[str, str]] = []
    if server_args is not None:
        weights += _weight_parts(server_args, problems, fingerprint is not None)
    if fingerprint is not None:
        weights.append(("model_fingerprint", fingerprint))

    storage_dtype = _dtype_name(getattr(host_pool, "dtype", None)) if host_pool is not None else "bytes"
    kv_cache_dtype = str(_server_arg(server_args, "kv_cache_dtype", "auto")) if server_args is not None else "?"
    if server_args is None:
        if fingerprint is None:
            problems.append("unknown")
        elif _itemsize(getattr(host_pool, "dtype", None)) == 1:
            problems.append("fp8_format")
    layout = str(getattr(host_pool, "layout", "unknown")) if host_pool is not None else "generic"
    page_tokens = int(getattr(host_pool, "page_size", 0) or 0) if host_pool is not None else 0
    kv_format = (("kv_dtype", f"{kv_cache_dtype}/{storage_dtype}"), ("layout", layout),
                 ("page", f"page{page_tokens}"), ("attention", "mla" if is_mla else "mha"))

    parallel: list[tuple[str, str]] = []
    rank: list[tuple[str, str]] = []
    if not is_mla:  # MHA ranks hold different heads; MLA ranks hold the same latent KV
        parallel.append(("tp", f"tp{get('tp_size', 1)}"))
        rank.append(("tp_rank", f"tp{get('tp_rank', 0)}"))
        if get("should_split_heads", False):
            parallel.append(("head_split", f"split{get('tp_lcm_size', None)}"))
    parallel.append(("pp", f"pp{get('pp_size', 1)}"))
    rank.append(("pp_rank", f"pp{get('pp_rank', 0)}"))
    if get("attn_cp_size", 1) > 1:
        parallel.append(("cp", f"cp{get('attn_cp_size', 1)}"))
        rank.append(("cp_rank", f"cp{get('attn_cp_rank', 0)}"))
    if get("dcp_size", 1) > 1:
        parallel.append(("dcp", f"dcp{get('dcp_size', 1)}page{get('logical_page_size', None)}"))
        rank.append(("dcp_rank", f"dcp{get('dcp_rank', 0)}"))
    page_bytes = _page_bytes(host_pool)
    if page_bytes:  # a guard for what the parts above miss (e.g. packed draft layers); per rank under PP
        rank.append(("page_bytes", f"bytes{page_bytes}"))

    return CacheIdentity(model_name=str(get("model_name", None) or ""), weights=tuple(weights),
                         kv_format=kv_format, parallel=tuple(parallel), rank=tuple(rank),
                         server_args_known=server_args is not None, fingerprint_given=fingerprint is not None,
                         problems=tuple(problems))


def current_server_args() -> Any:
    """SGLang's ServerArgs in this process, or None where none is reachable.

    0.5.23 publishes them in the scheduler process (`sglang.srt.runtime_context.get_server_args`,
    ValueError until published); older versions had `sglang.srt.server_args.get_global_server_args`,
    which 0.5.23 keeps only to raise a migration error.
    """
    try:
        from sglang.srt.runtime_context import get_server_args
        return get_server_args()
    except Exception:
        pass
    try:
        from sglang.srt.server_args import get_global_server_args
        return get_global_server_args()
    except Exception:
        return None


def log_cache_identity(identity: CacheIdentity) -> None:
    """Log the namespace at attach; warn about each identity problem once per process."""
    logger.info("raylsm: attached with namespace %s (%s)", identity.namespace_name, identity.describe())
    for problem in identity.problems:
        with _warned_lock:
            if problem in _warned:
                continue
            _warned.add(problem)
        logger.warning("raylsm: %s", PROBLEM_MESSAGES[problem].format(model=identity.model_name))


PROBLEM_MESSAGES = {
    "unknown": (
        "CACHE IDENTITY UNKNOWN for model {model!r}: SGLang's server arguments are not reachable in this "
        "process and the extra config has no \"model_fingerprint\". Pages are namespaced by the served model "
        "name, host layout, storage dtype, page size and rank only: two servers with the same served name but "
        "different weights or FP8 KV formats will read each other's KV and answer wrongly. Set "
        "\"model_fingerprint\" (see docs/identity.md)."),
    "fp8_format": (
        "the KV storage dtype of {model!r} is one byte (an FP8 KV cache) and SGLang's server arguments are not "
        "reachable: raylsm cannot tell fp8_e4m3 from fp8_e5m2. The \"model_fingerprint\" must name the "
        "--kv-cache-dtype (see docs/identity.md)."),
    "weights_by_name": (
        "the weights of {model!r} are identified by their model path and revision only: the path is not a "
        "local checkpoint, and no commit was given or found in the local hub cache, so new weights published "
        "under the same name (a moved branch) would share pages with the old ones. Pass --revision <commit> "
        "or set \"model_fingerprint\" (see docs/identity.md)."),
}


# ---- weights -------------------------------------------------------------------------------------


def _weight_parts(server_args: Any, problems: list[str], fingerprint_given: bool) -> list[tuple[str, str]]:
    parts: list[tuple[str, str]] = []
    for name in WEIGHT_ARGS:
        value = _server_arg(server_args, name, None)
        if value in (None, "", "{}", {}):
            continue
        parts.append((name, value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)))
    version = _weight_version(server_args)
    if version not in (None, "", "default"):
        parts.append(("weight_version", str(version)))
    model_path = str(_server_arg(server_args, "model_path", "") or "")
    revision = _server_arg(server_args, "revision", None)
    if model_path and os.path.exists(model_path):
        fingerprint = local_checkpoint_fingerprint(os.path.realpath(model_path))
        if fingerprint:
            parts.append(("checkpoint", fingerprint))
    elif HUB_NAME.fullmatch(model_path):
        commit = hub_commit(model_path, revision, _server_arg(server_args, "download_dir", None))
        if commit:
            parts.append(("commit", commit))
        elif not fingerprint_given:
            problems.append("weights_by_name")
    elif model_path and not fingerprint_given and not (revision and COMMIT.fullmatch(str(revision))):
        problems.append("weights_by_name")  # e.g. an object-store URI: nothing here to fingerprint
    return parts


def local_checkpoint_fingerprint(path: str) -> str:
    """16 hex digits over a local checkpoint ("" if nothing readable): config.json, index and quant
    JSON files hashed whole; each weight file's name, size and a 64 KiB window from its middle.

    Copy-stable (no mtimes, no absolute paths), so every node's copy of one checkpoint agrees; a
    different checkpoint differs in its config, its file set or sizes, or its sampled bytes. Not a
    full content hash: a change that leaves every sampled window alone goes unseen (set
    `model_fingerprint` for that). Cost: one stat and one 64 KiB read per weight file.
    """
    digest = hashlib.sha256()
    if os.path.isfile(path):  # a single-file checkpoint (GGUF)
        directory, names = os.path.dirname(path), [os.path.basename(path)]
    else:
        directory = path
        try:
            names = sorted(os.listdir(path))
        except OSError:
            return ""
    seen = weight_files = 0
    for name in names:
        file_path = os.path.join(directory, name)
        try:
            if METADATA_FILE.fullmatch(name) and os.path.getsize(file_path) <= 64 * 1024 * 1024:
                with open(file_path, "rb") as f:
                    digest.update(b"meta\0" + name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
                seen += 1
            elif WEIGHT_FILE.fullmatch(name) and weight_files < MAX_WEIGHT_FILES:
                size = os.path.getsize(file_path)
                with open(file_path, "rb") as f:
                    sample = os.pread(f.fileno(), SAMPLE_BYTES, max(0, size // 2 - SAMPLE_BYTES // 2))
                digest.update(b"weight\0" + name.encode() + b"\0" + str(size).encode() + b"\0"
                              + hashlib.sha256(sample).digest())
                seen += 1
                weight_files += 1
        except OSError:
            continue
    return digest.hexdigest()[:16] if seen else ""


def hub_commit(repo_id: str, revision: Optional[str], download_dir: Optional[str]) -> Optional[str]:
    """The commit a hub model name resolves to in the local hub cache (no network), or None.

    A 40-hex revision is the commit; otherwise refs/<revision or main> in the Hugging Face cache
    layout (`models--org--name`), under --download-dir or the HF_HUB_CACHE / HF_HOME default.
    """
    if revision and COMMIT.fullmatch(str(revision)):
        return str(revision)
    for cache_dir in _hub_cache_dirs(download_dir):
        ref = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"), "refs", str(revision or "main"))
        try:
            with open(ref, encoding="utf-8") as f:
                commit = f.read().strip()
        except OSError:
            continue
        if COMMIT.fullmatch(commit):
            return commit
    return None


def _hub_cache_dirs(download_dir: Optional[str]) -> Iterable[str]:
    if download_dir:
        yield str(download_dir)
    if os.environ.get("HF_HUB_CACHE"):
        yield os.environ["HF_HUB_CACHE"]
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        yield os.environ["HUGGINGFACE_HUB_CACHE"]
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    yield os.path.join(hf_home, "hub")


def live_weight_version() -> Optional[str]:
    """SGLang's current weight version in this process (its weight-update calls change it after
    attach: `Scheduler.record_weight_version_change`), or None where it is not published. Cheap: a
    dictionary lookup, so the adapter may compare it on every call."""
    try:
        from sglang.srt.runtime_context import get_serving
        version = get_serving().weight_version
    except Exception:
        return None
    return None if version is None else str(version)


def _weight_version(server_args: Any) -> Any:
    version = live_weight_version()
    return version if version is not None else _server_arg(server_args, "weight_version", None)


# ---- helpers -------------------------------------------------------------------------------------


def _server_arg(server_args: Any, name: str, default: Any) -> Any:
    """A server argument as SGLang's resolution decided it (0.5.23), else the field as given."""
    try:
        from sglang.srt.arg_groups.overrides import resolution_result
        value = resolution_result(server_args, name, default)
    except Exception:
        value = getattr(server_args, name, default)
    return default if value is None else value


def _config_field(storage_config: Any, name: str, default: Any) -> Any:
    value = getattr(storage_config, name, default)
    return default if value is None and default is not None else value


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else "unknown"


def _itemsize(dtype: Any) -> Optional[int]:
    return getattr(dtype, "itemsize", None)


def _page_bytes(host_pool: Any) -> int:
    if host_pool is None:
        return 0
    try:
        return int(host_pool.get_size_per_token()) * int(host_pool.page_size)
    except Exception:
        return 0


def _values(parts: Parts) -> list[str]:
    return [value for _, value in parts]


def _canonical(parts: Parts) -> str:
    return json.dumps([list(part) for part in parts], separators=(",", ":"))
