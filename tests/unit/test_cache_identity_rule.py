"""The cache-identity rule (raylsm/sglang/identity.py) without Ray: anything that changes a page's bytes
changes the namespace, the rank-free identity is the same on every rank of one server, and an
identity that cannot be established is said once. Real sglang ServerArgs and HiCacheStorageConfig;
host pools are small stand-ins with the attributes the identity reads."""

from __future__ import annotations

import logging
import os
import shutil
import time
from types import SimpleNamespace

import pytest
import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig
from sglang.srt.server_args import ServerArgs

from raylsm.errors import ConfigError
from raylsm.sglang import identity as identity_module
from raylsm.sglang.identity import build_cache_identity, current_server_args, hub_commit, local_checkpoint_fingerprint


def storage_config(**fields):
    values = dict(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1, is_mla_model=False,
                  enable_storage_metrics=False, is_page_first_layout=True, model_name="m")
    values.update(fields)
    return HiCacheStorageConfig(**values)


def pool(*, layout="page_first", page_size=16, dtype=torch.bfloat16, bytes_per_token=1024):
    return SimpleNamespace(layout=layout, page_size=page_size, dtype=dtype,
                           get_size_per_token=lambda: bytes_per_token)


def server_args(**fields):
    return ServerArgs(**{"model_path": "org/model", "revision": "0" * 40, **fields})


def identity(config=None, host_pool=None, extra=None, args="default"):
    return build_cache_identity(config or storage_config(), host_pool or pool(), extra,
                                server_args() if args == "default" else args)


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(identity_module, "_warned", set())


# ---- the whole kind: every part that changes a page's bytes changes the namespace -------------------


@pytest.mark.parametrize("field, first, second", [
    ("model_path", "org/model-a", "org/model-b"),
    ("revision", "1" * 40, "2" * 40),
    ("quantization", None, "fp8"),
    ("quantization", "awq", "gptq"),
    ("modelopt_quant", None, "fp8"),
    ("kv_cache_dtype", "fp8_e4m3", "fp8_e5m2"),
    ("kv_cache_dtype", "auto", "fp8_e4m3"),
    ("load_format", "auto", "dummy"),
    ("dtype", "bfloat16", "float16"),
    ("quantization_param_path", None, "/scales/kv.json"),
    ("json_model_override_args", "{}", '{"rope_scaling": {"factor": 4.0}}'),
    ("weight_version", "default", "step-100"),
    ("speculative_draft_model_path", None, "org/draft"),
])
def test_a_server_argument_that_changes_the_bytes_changes_the_identity(field, first, second):
    a = identity(args=server_args(**{field: first}))
    b = identity(args=server_args(**{field: second}))
    assert a.identity_name != b.identity_name and a.namespace_name != b.namespace_name
    same = identity(args=server_args(**{field: first}))
    assert same.namespace_name == a.namespace_name  # and the rule is deterministic


@pytest.mark.parametrize("first, second", [
    (dict(is_mla_model=False), dict(is_mla_model=True)),
    (dict(tp_size=2, tp_rank=0), dict(tp_size=4, tp_rank=0)),
    (dict(pp_size=1), dict(pp_size=2)),
    (dict(attn_cp_size=1), dict(attn_cp_size=2)),
    (dict(tp_size=4, tp_lcm_size=8, should_split_heads=True), dict(tp_size=4, tp_lcm_size=8)),
    (dict(is_mla_model=True, tp_size=4, tp_rank=0, dcp_size=2, dcp_rank=0, logical_page_size=32),
     dict(is_mla_model=True, tp_size=4, tp_rank=0)),
    (dict(model_name="m"), dict(model_name="m-unified-token-major")),  # SGLang's storage_format_tag
])
def test_a_storage_config_field_that_changes_the_bytes_changes_the_identity(first, second):
    assert identity(storage_config(**first)).identity_name != identity(storage_config(**second)).identity_name


@pytest.mark.parametrize("first, second", [
    (dict(layout="page_first"), dict(layout="layer_first")),
    (dict(page_size=16), dict(page_size=64)),
    (dict(dtype=torch.bfloat16), dict(dtype=torch.float16)),
])
def test_a_host_pool_property_that_changes_the_bytes_changes_the_identity(first, second):
    assert identity(host_pool=pool(**first)).identity_name != identity(host_pool=pool(**second)).identity_name


def test_fp8_formats_stored_as_uint8_get_different_namespaces():
    e4m3 = identity(host_pool=pool(dtype=torch.uint8), args=server_args(kv_cache_dtype="fp8_e4m3"))
    e5m2 = identity(host_pool=pool(dtype=torch.uint8), args=server_args(kv_cache_dtype="fp8_e5m2"))
    assert e4m3.namespace_name != e5m2.namespace_name
    assert "fp8_e4m3/uint8" in e4m3.identity_name


def test_a_model_fingerprint_changes_the_identity_and_is_added_to_what_sglang_tells():
    a = identity(extra={"model_fingerprint": "ckpt-a"})
    b = identity(extra={"model_fingerprint": "ckpt-b"})
    assert a.namespace_name != b.namespace_name
    assert ("model_fingerprint", "ckpt-a") in a.weights and ("model_path", "org/model") in a.weights
    # Without server args the fingerprint is all there is, and still separates the weights.
    assert identity(extra={"model_fingerprint": "ckpt-a"}, args=None).namespace_name != \
        identity(extra={"model_fingerprint": "ckpt-b"}, args=None).namespace_name


@pytest.mark.parametrize("bad", [3, "", "   ", "x" * 2000, ["a"]])
def test_a_malformed_model_fingerprint_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="model_fingerprint"):
        identity(extra={"model_fingerprint": bad})


# ---- ranks -------------------------------------------------------------------------------------------


def test_mha_ranks_share_the_identity_and_hold_their_own_namespaces():
    ranks = [identity(storage_config(tp_size=4, tp_rank=rank)) for rank in range(4)]
    assert len({r.identity_name for r in ranks}) == 1
    assert len({r.namespace_name for r in ranks}) == 4
    assert all(r.namespace_name.startswith(r.identity_name + "|rank:") for r in ranks)


def test_mla_ranks_share_one_namespace_whatever_the_tp_size():
    names = {identity(storage_config(is_mla_model=True, tp_size=size, tp_rank=rank)).namespace_name
             for size in (1, 2, 8) for rank in range(size)}
    assert len(names) == 1


def test_pp_cp_and_dcp_ranks_are_rank_parts():
    pp = [identity(storage_config(pp_size=2, pp_rank=r)) for r in range(2)]
    cp = [identity(storage_config(attn_cp_size=2, attn_cp_rank=r)) for r in range(2)]
    dcp = [identity(storage_config(is_mla_model=True, tp_size=2, tp_rank=r, dcp_size=2, dcp_rank=r,
                                   logical_page_size=32)) for r in range(2)]
    for group in (pp, cp, dcp):
        assert group[0].identity_name == group[1].identity_name
        assert group[0].namespace_name != group[1].namespace_name


def test_dp_replicas_share_pages():
    assert identity(storage_config(dp_rank=0)).namespace_name == identity(storage_config(dp_rank=3)).namespace_name


def test_the_page_byte_size_guards_the_rank_namespace():
    small, large = identity(host_pool=pool(bytes_per_token=1024)), identity(host_pool=pool(bytes_per_token=2048))
    assert small.identity_name == large.identity_name and small.namespace_name != large.namespace_name


def test_attention_kernels_do_not_split_the_namespace():
    a = identity(args=server_args(attention_backend="flashinfer"))
    b = identity(args=server_args(attention_backend="fa3"))
    assert a.namespace_name == b.namespace_name


# ---- weights identity: local checkpoints and hub names ------------------------------------------------


def _checkpoint(directory, weights=(b"a" * 300_000, b"b" * 300_000), config=b'{"hidden_size": 64}'):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "wb") as f:
        f.write(config)
    for i, payload in enumerate(weights):
        with open(os.path.join(directory, f"model-{i:05d}.safetensors"), "wb") as f:
            f.write(payload)
    with open(os.path.join(directory, "tokenizer.json"), "wb") as f:
        f.write(b"{}")
    return str(directory)


def test_the_local_checkpoint_fingerprint_is_copy_stable_and_sees_changed_weights(tmp_path):
    original = _checkpoint(tmp_path / "a")
    fingerprint = local_checkpoint_fingerprint(original)
    assert len(fingerprint) == 16

    copy = str(tmp_path / "copy")
    shutil.copytree(original, copy)  # a later copy: new mtimes, same content
    later = time.time() + 3600
    for name in os.listdir(copy):
        os.utime(os.path.join(copy, name), (later, later))
    assert local_checkpoint_fingerprint(copy) == fingerprint

    middle = bytearray(b"a" * 300_000)
    middle[150_000] = ord("z")  # a full fine-tune of the same shape: same names and sizes
    assert local_checkpoint_fingerprint(_checkpoint(tmp_path / "tuned", weights=(bytes(middle), b"b" * 300_000))) \
        != fingerprint
    assert local_checkpoint_fingerprint(_checkpoint(tmp_path / "config", config=b'{"hidden_size": 65}')) \
        != fingerprint
    assert local_checkpoint_fingerprint(_checkpoint(tmp_path / "size", weights=(b"a" * 300_001, b"b" * 300_000))) \
        != fingerprint
    with open(os.path.join(copy, "tokenizer.json"), "wb") as f:
        f.write(b'{"changed": true}')  # the tokenizer does not change KV bytes for given token ids
    assert local_checkpoint_fingerprint(copy) == fingerprint
    assert local_checkpoint_fingerprint(str(tmp_path / "missing")) == ""


def test_new_weights_written_in_place_change_the_identity(tmp_path):
    path = _checkpoint(tmp_path / "model")
    before = identity(args=server_args(model_path=path, revision=None))
    assert ("checkpoint", local_checkpoint_fingerprint(path)) in before.weights and not before.problems
    _checkpoint(tmp_path / "model", weights=(b"c" * 300_000, b"b" * 300_000))
    after = identity(args=server_args(model_path=path, revision=None))
    assert after.identity_name != before.identity_name


def test_a_hub_name_is_pinned_through_the_local_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    refs = tmp_path / "models--org--model" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40 + "\n")
    assert hub_commit("org/model", None, None) == "a" * 40
    assert hub_commit("org/model", "c" * 40, None) == "c" * 40
    assert hub_commit("org/other", None, None) is None

    old = identity(args=server_args(revision=None))
    (refs / "main").write_text("b" * 40)  # the branch moved: new weights under the same name
    new = identity(args=server_args(revision=None))
    assert ("commit", "a" * 40) in old.weights and old.identity_name != new.identity_name
    assert not old.problems


def test_weights_known_by_name_only_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert identity(args=server_args(revision=None)).problems == ("weights_by_name",)
    assert identity(args=server_args(revision="main")).problems == ("weights_by_name",)
    assert identity(args=server_args(model_path="s3://bucket/model", revision=None)).problems == ("weights_by_name",)
    assert identity(args=server_args(revision=None), extra={"model_fingerprint": "x"}).problems == ()


# ---- unknown identity: said once ----------------------------------------------------------------------


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Warnings are said once per process: start each of these tests as a fresh process would."""
    monkeypatch.setattr(identity_module, "_warned", set())


def test_an_unknown_identity_is_logged_once_per_process(caplog, fresh_warnings):
    caplog.set_level(logging.INFO, logger="raylsm.sglang.identity")
    unknown = identity(args=None)
    assert unknown.problems == ("unknown",) and unknown.weights == () and "?/bfloat16" in unknown.identity_name
    for _ in range(3):
        identity_module.log_cache_identity(identity(args=None))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "CACHE IDENTITY UNKNOWN" in warnings[0].getMessage() and "model_fingerprint" in warnings[0].getMessage()


def test_an_fp8_pool_without_server_args_asks_for_the_kv_dtype_in_the_fingerprint(caplog, fresh_warnings):
    caplog.set_level(logging.INFO, logger="raylsm.sglang.identity")
    fp8 = identity(host_pool=pool(dtype=torch.uint8), extra={"model_fingerprint": "x"}, args=None)
    assert fp8.problems == ("fp8_format",)
    assert identity(extra={"model_fingerprint": "x"}, args=None).problems == ()
    identity_module.log_cache_identity(fp8)
    assert any("fp8_e5m2" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_server_args_are_read_from_sglangs_runtime_context(monkeypatch):
    from sglang.srt import runtime_context

    assert current_server_args() is None  # nothing published in this process
    args = server_args(kv_cache_dtype="fp8_e5m2")
    # What publish(server_args, role="scheduler") installs in the scheduler process.
    monkeypatch.setattr(runtime_context.get_context(), "_server_args", args)
    assert current_server_args() is args
