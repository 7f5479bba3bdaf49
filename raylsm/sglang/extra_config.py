"""Parsing SGLang's untyped extra-config dict into a TierConfig, once, at the adapter's edge.

Called by RayLSMStorage's constructor. Keys SGLang itself uses pass through; raylsm's own keys are
listed below; anything else is a ConfigError naming the key, raised at attach time. The cache-identity
key (`model_fingerprint`) is not tier configuration: `model_fingerprint_from_extra` reads it for
raylsm/sglang/identity.py.
"""

from __future__ import annotations

from typing import Any, Mapping

from raylsm.config import TierConfig
from raylsm.errors import ConfigError

# Keys SGLang reads (or strips) itself; they may still be present in the dict we receive.
SGLANG_KEYS = frozenset({
    "backend_name", "module_path", "class_name", "interface_v1", "hicache_storage_pass_prefix_keys",
    "prefetch_threshold", "prefetch_timeout_base", "prefetch_timeout_per_ki_token", "tp_lcm_size",
})

# raylsm's flat keys -> (section, field) of TierConfig.
FLAT_KEYS = {
    "ray_address": (None, "ray_address"),
    "ray_namespace": (None, "ray_namespace"),
    "extent_pages": ("client", "extent_pages"),
    "shallow_depth_pages": ("client", "shallow_depth_pages"),
    "shallow_extent_pages": ("client", "shallow_extent_pages"),
    "call_timeout_s": ("client", "call_timeout_s"),
    "put_timeout_s": ("client", "put_timeout_s"),
    "ring_refresh_s": ("client", "ring_refresh_s"),
    "same_node_fast_path": ("client", "same_node_fast_path"),
    "local_read_direct_io": ("client", "local_read_direct_io"),
    "object_chunk_bytes": ("client", "object_chunk_bytes"),
    "inline_call_bytes": ("client", "inline_call_bytes"),
    "virtual_nodes": ("client", "virtual_nodes"),
}
# Keys that name what the pages are (raylsm/sglang/identity.py), not how the tier runs.
MODEL_FINGERPRINT_KEY = "model_fingerprint"
IDENTITY_KEYS = frozenset({MODEL_FINGERPRINT_KEY})
MAX_FINGERPRINT_CHARS = 1024
NESTED_KEY = "raylsm"  # {"raylsm": {...TierConfig as nested dicts...}} for everything else


def tier_config_from_extra(extra: Mapping[str, Any] | None) -> TierConfig:
    """The TierConfig an SGLang extra config asks for; ConfigError naming any unknown or bad key."""
    extra = dict(extra or {})
    nested: dict[str, Any] = {}
    raw_nested = extra.pop(NESTED_KEY, {})
    if not isinstance(raw_nested, Mapping):
        raise ConfigError(f"extra config key {NESTED_KEY!r} must be a mapping, got {type(raw_nested).__name__}")
    for section, value in raw_nested.items():
        nested[section] = dict(value) if isinstance(value, Mapping) else value
    for key, value in extra.items():
        if key in SGLANG_KEYS or key in IDENTITY_KEYS:
            continue
        if key not in FLAT_KEYS:
            raise ConfigError(
                f"unknown key {key!r} in the HiCache storage extra config; raylsm accepts "
                f"{sorted([*FLAT_KEYS, *IDENTITY_KEYS])} and {NESTED_KEY!r} (a nested config), "
                "besides SGLang's own keys")
        section, field_name = FLAT_KEYS[key]
        if section is None:
            nested[field_name] = value
        else:
            nested.setdefault(section, {})[field_name] = value
    return TierConfig.from_dict(nested, where="extra_config")


def model_fingerprint_from_extra(extra: Mapping[str, Any] | None) -> str | None:
    """The operator's `model_fingerprint` (a non-empty string naming the weights and anything else
    SGLang's process does not tell raylsm), None if absent; ConfigError if it is not such a string."""
    value = (extra or {}).get(MODEL_FINGERPRINT_KEY)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_FINGERPRINT_CHARS:
        raise ConfigError(f"extra config key {MODEL_FINGERPRINT_KEY!r} must be a non-empty string of at most "
                          f"{MAX_FINGERPRINT_CHARS} characters, got {value!r:.80}")
    return value.strip()
