"""CPU tests of the real-SGLang end-to-end check (tests/e2e/sglang_e2e.py and its e2e_* modules).

What runs here, without a GPU: the model configs through SGLang 0.5.23's own config loader and
ModelConfig (and transformers' AutoConfig), the server launch line through SGLang's own argument
parser (`prepare_server_args`, what `python -m sglang.launch_server` calls), the HiCache extra
config through SGLang's own parser and backend-class loader (`HybridCacheController.
parse_storage_backend_extra_config`, `StorageBackendFactory._load_backend_class`, the calls
`--hicache-storage-backend dynamic` makes), `raylsm up` through raylsm's own command-line parser, the
request bodies through SGLang's /generate contract check, the shell script through `bash -n`, and the
driver's HTTP, flush, backup-wait, check, load and exit-status logic against fake_sglang_server.py.

What cannot run here (docs/e2e.md): a server (it needs a GPU and SGLang's CUDA kernels); the
resolution pass of the server arguments (`ServerArgs.resolve_once`, which picks the attention
backend and checks deterministic inference against it) stops at its first hook on a machine without
an accelerator ("RuntimeError: No accelerator (CUDA, XPU, HPU, NPU, MUSA, MPS) or platform plugin is
available", from `handle_missing_default_values` -> `get_device`), so the test parses the arguments
and leaves resolving them, and the model itself, to `make e2e`.

No timing assertions. The SGLang imports (~5-7 s) happen once, in the module-scoped fixture.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from raylsm.bench.cpu_torchvision import import_torchvision

import e2e_http
import sglang_e2e
from e2e_errors import E2EError, FlushTimeoutError, HealthTimeoutError
from e2e_http import SGLangClient, assemble_output_ids, parse_metric_sum
from e2e_l3_check import CheckConfig, expected_backup_tokens, random_prompts, run_l3_check, wait_for_backup
from e2e_load import LoadConfig, percentile, question, run_multiturn
from e2e_models import DEEPSEEK_MLA, LLAMA_MHA, write_model_dir
from e2e_server import (FILE_DIR_ENV, RAYLSM_EXTRA_CONFIG, RaylsmTier, ServerPlan, ServerProcess, extra_config,
                        launch_args, raylsm_up_args, server_env)
from fake_sglang_server import FakeSGLang

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SMALL_CHECK = CheckConfig(prompts=2, max_new_tokens=4, backup_timeout_s=5.0, settle_s=0.0, flush_timeout_s=5.0,
                          flush_retry_s=0.01)
SMALL_LOAD = LoadConfig(clients=3, rounds=3, request_tokens=70, output_tokens=3, max_parallel=2, request_rate=0.0,
                        timeout_s=30.0)

@pytest.fixture(scope="module")
def sglang():
    """SGLang 0.5.23's own parsers and loaders, imported as a server imports them."""
    import_torchvision()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Only CUDA ... support AWQ/GGUF" from sglang.srt.layers
        from sglang.srt.configs.model_config import AttentionArch, ModelConfig
        from sglang.srt.entrypoints.api_contract import generate_contract_error
        from sglang.srt.mem_cache.hicache_storage import HiCacheStorage
        from sglang.srt.mem_cache.hybrid_cache.hybrid_cache_controller import HybridCacheController
        from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory
        from sglang.srt.server_args import ServerArgs, prepare_server_args
        from sglang.srt.utils.hf_transformers.config import get_config
    return dict(AttentionArch=AttentionArch, ModelConfig=ModelConfig, generate_contract_error=generate_contract_error,
                HiCacheStorage=HiCacheStorage, HybridCacheController=HybridCacheController,
                StorageBackendFactory=StorageBackendFactory, ServerArgs=ServerArgs,
                prepare_server_args=prepare_server_args, get_config=get_config)


# ---- model directories ----------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [LLAMA_MHA, DEEPSEEK_MLA], ids=lambda spec: spec.name)
def test_model_dirs_parse_with_sglangs_config_loader(sglang, spec, tmp_path):
    directory = write_model_dir(spec, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    assert config == spec.config
    assert json.loads((directory / "generation_config.json").read_text())["eos_token_id"] == 2

    import transformers
    hf = transformers.AutoConfig.from_pretrained(directory)
    assert type(hf).__name__ == {"MHA": "LlamaConfig", "MLA": "DeepseekV2Config"}[spec.attention]
    assert transformers.GenerationConfig.from_pretrained(directory).eos_token_id == 2

    parsed = sglang["get_config"](str(directory), trust_remote_code=False)
    assert parsed.architectures == config["architectures"]
    # Fields SGLang's model classes read from the parsed config (srt/models/llama.py; srt/models/
    # deepseek_v2.py, whose DeepseekV2DecoderLayer takes rope_theta from transformers 5's rope_parameters).
    needed = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
              "rms_norm_eps", "max_position_embeddings", "vocab_size", "rope_parameters"]
    needed += (["qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "kv_lora_rank", "q_lora_rank",
                "first_k_dense_replace", "n_routed_experts", "moe_layer_freq", "n_group"]
               if spec.attention == "MLA" else ["num_key_value_heads", "head_dim"])
    assert [name for name in needed if not hasattr(parsed, name)] == []
    assert parsed.rope_parameters["rope_theta"] == 10000.0
    model = sglang["ModelConfig"](model_path=str(directory))
    arch = sglang["AttentionArch"]
    assert model.attention_arch == (arch.MLA if spec.attention == "MLA" else arch.MHA)
    assert model.num_hidden_layers == config["num_hidden_layers"]
    assert model.vocab_size == spec.vocab_size == 32000
    assert str(model.dtype) == "torch.bfloat16"
    # The KV bytes per token e2e_models sizes the host pool with are SGLang's own.
    if spec.attention == "MLA":
        assert (model.kv_lora_rank, model.qk_rope_head_dim) == (512, 64)
        per_token = model.num_hidden_layers * (model.kv_lora_rank + model.qk_rope_head_dim) * 2
        # Every layer dense (DeepseekV2DecoderLayer._is_layer_sparse), experts named for EPLB metadata.
        assert config["first_k_dense_replace"] == config["num_hidden_layers"]
        assert isinstance(config["n_routed_experts"], int)
    else:
        per_token = 2 * model.num_hidden_layers * model.get_total_num_kv_heads() * model.head_dim * 2
    assert per_token == spec.kv_bytes_per_token
    if spec.attention == "MHA":  # the load must reach L3: its last round holds over twice what L2 does
        load = LoadConfig()
        final_history = load.rounds * load.request_tokens + (load.rounds - 1) * load.output_tokens
        host_pool_tokens = ServerPlan(model_dir="m", backend="raylsm", port=1).hicache_size_gb * 10**9 \
            // spec.kv_bytes_per_token
        assert load.clients * final_history > 2 * host_pool_tokens


# ---- the launch line, the extra config, raylsm up ---------------------------------------------------

def _plans(tmp_path) -> list[ServerPlan]:
    return [ServerPlan(model_dir=str(tmp_path / "m"), backend="raylsm", port=31001, ray_address="10.0.0.5:6380"),
            ServerPlan(model_dir=str(tmp_path / "m"), backend="file", port=31002, file_dir=str(tmp_path / "f"),
                       attention_backend="triton")]


def test_launch_args_parse_with_sglangs_own_server_args(sglang, tmp_path):
    # Spelled exactly as SGLang registers them: its parser also takes unique prefixes (`--tp` for
    # `--tp-size`), which a later SGLang could make ambiguous.
    import argparse
    parser = argparse.ArgumentParser()
    sglang["ServerArgs"].add_cli_args(parser)
    for plan in _plans(tmp_path):
        flags = [word for word in launch_args(plan) if word.startswith("--")]
        assert [flag for flag in flags if flag not in parser._option_string_actions] == []
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        for plan in _plans(tmp_path):
            args = sglang["prepare_server_args"](launch_args(plan))
            assert args.model_path == plan.model_dir
            assert args.load_format == "dummy" and args.skip_tokenizer_init is True
            assert (args.host, args.port, args.tp_size, args.page_size) == ("127.0.0.1", plan.port, 1, 64)
            assert args.enable_hierarchical_cache is True and args.hicache_size == 1
            assert args.max_total_tokens == plan.max_total_tokens
            assert args.hicache_storage_backend == {"raylsm": "dynamic", "file": "file"}[plan.backend]
            assert json.loads(args.hicache_storage_backend_extra_config) == extra_config(plan)
            assert args.hicache_storage_prefetch_policy == "wait_complete"
            assert args.enable_cache_report is True and args.enable_metrics is True
            assert args.enable_deterministic_inference is True
            assert (args.cuda_graph_backend_decode, args.cuda_graph_backend_prefill) == ("disabled", "disabled")
            assert args.attention_backend == plan.attention_backend
    finally:  # prepare_server_args reconfigures the root logger (basicConfig(force=True))
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[1]:
            root.addHandler(handler)
        root.setLevel(saved[0])


def test_extra_config_loads_raylsm_through_sglangs_factory(sglang, tmp_path):
    raylsm_plan, file_plan = _plans(tmp_path)
    text = launch_args(raylsm_plan)[launch_args(raylsm_plan).index("--hicache-storage-backend-extra-config") + 1]
    extra, threshold, base_s, per_ki_s, prefix_keys = \
        sglang["HybridCacheController"].parse_storage_backend_extra_config(text)
    assert prefix_keys is True and (threshold, base_s, per_ki_s) == (256, 1.0, 0.25)  # SGLang's defaults
    assert {key: extra[key] for key in ("backend_name", "module_path", "class_name", "interface_v1")} == \
        {key: RAYLSM_EXTRA_CONFIG[key] for key in ("backend_name", "module_path", "class_name", "interface_v1")}
    backend_class = sglang["StorageBackendFactory"]._load_backend_class(extra["module_path"], extra["class_name"],
                                                                         extra["backend_name"])
    from raylsm.sglang.backend import RayLSMStorage
    from raylsm.sglang.extra_config import tier_config_from_extra
    assert backend_class is RayLSMStorage and issubclass(backend_class, sglang["HiCacheStorage"])
    # What RayLSMStorage's constructor does with the rest first (then it joins Ray: not here).
    assert tier_config_from_extra(extra).ray_address == "10.0.0.5:6380"

    file_extra, *_ = sglang["HybridCacheController"].parse_storage_backend_extra_config(
        json.dumps(extra_config(file_plan)))
    assert file_extra == {"file_storage_path": file_plan.file_dir}
    env = server_env(file_plan, {FILE_DIR_ENV: "/somewhere/else", "PATH": "/bin"})
    assert env == {FILE_DIR_ENV: file_plan.file_dir, "PATH": "/bin"}
    assert FILE_DIR_ENV not in server_env(raylsm_plan, {FILE_DIR_ENV: "/x"})


def test_server_env_turns_on_ray_token_auth_for_raylsm_only(tmp_path):
    raylsm_plan, file_plan = _plans(tmp_path)
    home = tmp_path / "home"
    assert "RAY_AUTH_MODE" not in server_env(raylsm_plan, {"HOME": str(home)})  # no token: Ray's default
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("secret")
    assert server_env(raylsm_plan, {"HOME": str(home)})["RAY_AUTH_MODE"] == "token"
    assert server_env(raylsm_plan, {"HOME": "/nowhere", "RAY_AUTH_TOKEN": "t"})["RAY_AUTH_MODE"] == "token"
    assert server_env(raylsm_plan, {"HOME": str(home), "RAY_AUTH_MODE": "disabled"})["RAY_AUTH_MODE"] == "disabled"
    assert "RAY_AUTH_MODE" not in server_env(file_plan, {"HOME": str(home)})


def test_raylsm_commands_parse_with_raylsms_cli_and_run_isolated(tmp_path, monkeypatch):
    from raylsm.cli import build_parser

    args = build_parser().parse_args(raylsm_up_args("/tmp/data", shards=2, capacity_gb=8.0, segment_mb=64))
    assert (args.shards, args.data_dir, args.capacity_gb, args.segment_mb) == (2, "/tmp/data", 8.0, 64)
    assert build_parser().parse_args(["down"]).handler.__name__ == "_run_down"
    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:6379")
    env = RaylsmTier(sys.executable, tmp_path, tmp_path / "data", tmp_path / "logs").isolated_env()
    assert "RAY_ADDRESS" not in env and env["RAY_TMPDIR"] == str(tmp_path / "ray-tmp")


def test_server_process_stops_its_whole_group_and_reports_an_exit(tmp_path):
    """ServerProcess with a stand-in command (a parent and a child sleeping) in place of SGLang's."""
    plan = _plans(tmp_path)[0]
    server = ServerProcess(plan, sys.executable, tmp_path / "logs" / "server.log", tmp_path)
    server.command = [sys.executable, "-c", "import subprocess, sys, time; "
                      "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"]
    with server:
        pgid = int((tmp_path / "server.pgid").read_text())
        assert pgid == server.process.pid and server.exited() is None
    assert not (tmp_path / "server.pgid").exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # the child went with its parent
    failing = ServerProcess(plan, sys.executable, tmp_path / "logs" / "failing.log", tmp_path)
    failing.command = [sys.executable, "-c", "import sys; print('no GPU here'); sys.exit(3)"]
    with failing:
        failing.process.wait(timeout=30)
        message = failing.exited()
    assert "exited with status 3" in message and "no GPU here" in message


def test_preflight_refuses_an_interpreter_without_cuda(tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/sh\necho \'{"torch": "2.14.1+cpu", "cuda": false, "gpu": null, '
                           '"sglang": "0.5.23", "ray": "2.60.0"}\'\n')
    fake_python.chmod(0o755)
    with pytest.raises(E2EError, match="sees no CUDA device"):
        sglang_e2e.preflight(str(fake_python), timeout_s=10)


def test_shell_script_is_valid_bash_and_make_e2e_runs_it():
    script = HERE / "sglang_server.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert "sglang_e2e.py" in script.read_text() and '"$ROOT[ray]"' in script.read_text()
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    dry = subprocess.run(["make", "-n", "e2e"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0 and "bash tests/e2e/sglang_server.sh" in dry.stdout


# ---- HTTP, check and load against a fake server -----------------------------------------------------

def test_health_waits_out_503_and_times_out_on_a_dead_port():
    with FakeSGLang(health_503=2) as fake:
        SGLangClient(fake.url).wait_healthy(10.0, poll_s=0.01)
        assert fake.calls["health"] == 3
    with pytest.raises(HealthTimeoutError):
        SGLangClient("http://127.0.0.1:9").wait_healthy(0.05, poll_s=0.01)


@pytest.mark.parametrize("incremental", [False, True], ids=["cumulative", "incremental"])
def test_streamed_and_plain_generate_agree(incremental):
    with FakeSGLang(incremental=incremental) as fake:
        client = SGLangClient(fake.url)
        plain = client.generate(list(range(3, 200)), 5)
        streamed = client.generate_stream(list(range(3, 200)), 5)
    assert streamed.output_ids == plain.output_ids and len(plain.output_ids) == 5
    assert streamed.events == 5 and streamed.ttft_s is not None and streamed.cached_tokens == 192


def test_output_assembly_and_metric_parsing_units():
    meta = {"meta_info": {"completion_tokens": 3}}
    assert assemble_output_ids([{"output_ids": [7]}, {"output_ids": [7, 8]}, {"output_ids": [7, 8, 9], **meta}]) \
        == [7, 8, 9]
    assert assemble_output_ids([{"output_ids": [7]}, {"output_ids": [8]}, {"output_ids": [9], **meta}]) == [7, 8, 9]
    text = 'x_total 5\nsglang:backuped_tokens_total{a="1"} 64.0\nsglang:backuped_tokens_total{a="2"} 128\n'
    assert parse_metric_sum(text, "sglang:backuped_tokens_total") == 192.0
    assert parse_metric_sum(text, "sglang:backuped") is None
    assert percentile([5, 1, 3, 2, 4], 50) == 3 and percentile([1.0] * 99 + [9.0], 99) == 1.0


def test_flush_is_retried_until_it_succeeds_and_gives_up_at_its_timeout():
    with FakeSGLang(flush_refusals=2) as fake:
        result = SGLangClient(fake.url).flush_cache(5.0, retry_s=0.01)
        assert result.attempts == 3 and len(result.refusals) == 2 and "pending requests" in result.refusals[0]
    with FakeSGLang(flush_refusals=10**6) as fake:
        with pytest.raises(FlushTimeoutError):
            SGLangClient(fake.url).flush_cache(0.05, retry_s=0.01)


def test_backup_wait_reads_sglangs_counter_or_sleeps_without_metrics():
    prompts = random_prompts(2, 768, 32000, seed=0)
    assert expected_backup_tokens(prompts, 64) == 1536 and prompts == random_prompts(2, 768, 32000, seed=0)
    with FakeSGLang() as fake:
        client = SGLangClient(fake.url)
        for prompt in prompts:
            client.generate(prompt, 2)
        seen = wait_for_backup(client, 1536, timeout_s=5.0, settle_s=0.0)
        assert seen["source"] == "metrics" and seen["complete"] and seen["backuped_tokens"] == 1536
    with FakeSGLang(metrics=False) as fake:
        assert wait_for_backup(SGLangClient(fake.url), 1536, 5.0, settle_s=0.0)["source"] == "sleep"


def test_check_passes_when_l3_returns_the_prompts(sglang):
    with FakeSGLang() as fake:
        record = run_l3_check(SGLangClient(fake.url), SMALL_CHECK, "fake/mha")
        bodies = list(fake.bodies)
    assert record["pass"], record["failures"]
    assert record["l3_cached_tokens"] == [704, 704]  # 768 tokens: 11 full pages below the last token
    assert record["flush"]["attempts"] == 2 and record["backup"]["complete"]
    assert all(p["outputs_match"] and p["l3"]["cached_tokens_details"]["storage"] == 704 for p in record["prompts"])
    assert len(bodies) == 6 and all(sglang["generate_contract_error"](body) is None for body in bodies)


@pytest.mark.parametrize("knob, expected", [
    (dict(cap_cached_tokens=128), "128 cached tokens after the flush, expected more than 700"),
    (dict(diverge_after_flush=True), "output ids after the flush differ from the cold run's at position 0"),
], ids=["few-cached-tokens", "different-outputs"])
def test_check_fails_when_l3_loses_pages_or_changes_outputs(knob, expected):
    with FakeSGLang(**knob) as fake:
        record = run_l3_check(SGLangClient(fake.url), SMALL_CHECK, "fake/mha")
    assert not record["pass"]
    assert any(expected in failure for failure in record["failures"]), record["failures"]
    assert not any("not deterministic" in failure for failure in record["failures"])  # the L1 hit matched


def test_multiturn_load_has_bench_multiturns_shape(sglang):
    with FakeSGLang(page_size=16) as fake:
        summary = run_multiturn(SGLangClient(fake.url), SMALL_LOAD, "fake")
        answers = list(fake.answers)
    assert summary["requests"] == summary["expected_requests"] == 9 and summary["errors"] == 0
    assert all(sglang["generate_contract_error"](a["body"]) is None and a["body"]["stream"] for a in answers)
    # Each client's round r sends its round r-1 prompt + the answer + its own next question.
    by_client: dict[int, list[dict]] = {}
    for answer in answers:
        first = answer["body"]["input_ids"][:SMALL_LOAD.request_tokens]
        client_id = next(c for c in range(SMALL_LOAD.clients) if question(SMALL_LOAD, c, 0) == first)
        by_client.setdefault(client_id, []).append(answer)
    assert sorted(by_client) == [0, 1, 2] and all(len(rounds) == 3 for rounds in by_client.values())
    for client_id, rounds in by_client.items():
        for r in (1, 2):
            previous = rounds[r - 1]
            assert rounds[r]["body"]["input_ids"] == (previous["body"]["input_ids"] + previous["output_ids"]
                                                       + question(SMALL_LOAD, client_id, r))
    prompt = sum(a["meta_info"]["prompt_tokens"] for a in answers)
    cached = sum(a["meta_info"]["cached_tokens"] for a in answers)
    assert cached > 0 and summary["hit_rate"] == round(cached / prompt, 6)
    assert [r["requests"] for r in summary["per_round"]] == [3, 3, 3] and summary["per_round"][0]["hit_rate"] == 0
    assert summary["ttft_s"]["p50"] is not None and summary["ttft_s"]["p99"] is not None


def test_load_counts_failed_requests_and_ends_those_conversations():
    with FakeSGLang(page_size=16, fail_every=4) as fake:
        summary = run_multiturn(SGLangClient(fake.url), SMALL_LOAD, "fake")
        sent = fake.calls["generate"]
    assert summary["errors"] >= 1 and "HTTP 500" in summary["error_samples"][0]
    # Every request sent is counted once, and a failed round ends its conversation: the rounds after
    # it are never sent. (Which rounds fail depends on the order the two parallel requests arrive.)
    failed_rounds = [int(re.search(r"round (\d+)", sample).group(1)) for sample in summary["error_samples"]]
    assert len(failed_rounds) == summary["errors"]
    assert summary["requests"] + summary["errors"] == sent
    assert sent == SMALL_LOAD.clients * SMALL_LOAD.rounds - sum(SMALL_LOAD.rounds - 1 - r for r in failed_rounds)


# ---- the driver: e2e.json and the exit status -------------------------------------------------------

def _attach(url: str, out: Path) -> int:
    return sglang_e2e.main(["--attach", url, "--out", str(out), "--budget-s", "60",
                            "--check", json.dumps({"prompts": 2, "max_new_tokens": 4, "settle_s": 0,
                                                   "flush_retry_s": 0.01}),
                            "--load", json.dumps({"clients": 3, "rounds": 2, "request_tokens": 70,
                                                  "output_tokens": 2, "request_rate": 0})])


def test_driver_writes_e2e_json_and_exits_zero_when_the_check_passes(tmp_path):
    with FakeSGLang() as fake:
        assert _attach(fake.url, tmp_path) == 0
    results = json.loads((tmp_path / "e2e.json").read_text())
    assert results["pass"] and results["failures"] == [] and results["mode"] == "attach"
    check = results["checks"]["tiny-llama-mha/attached"]
    assert check["pass"] and check["attention"] == "MHA" and min(check["l3_cached_tokens"]) > 700
    load = results["load"]["attached"]
    assert load["requests"] == 6 and set(load["ttft_s"]) == {"mean", "p50", "p99"} and 0 < load["hit_rate"] < 1


def test_driver_exits_non_zero_when_l3_returns_too_little(tmp_path):
    with FakeSGLang(cap_cached_tokens=64) as fake:
        assert _attach(fake.url, tmp_path) == 1
    results = json.loads((tmp_path / "e2e.json").read_text())
    assert not results["pass"] and any("64 cached tokens" in reason for reason in results["failures"])


def test_driver_records_an_unreachable_server_as_a_failure(tmp_path):
    assert sglang_e2e.main(["--attach", "http://127.0.0.1:9", "--out", str(tmp_path), "--budget-s", "60",
                            "--start-timeout-s", "0.1"]) == 1
    results = json.loads((tmp_path / "e2e.json").read_text())
    assert not results["pass"] and "did not answer 200" in results["errors"][0]["error"]


def test_driver_needs_only_the_standard_library():
    """The driver runs in the GPU venv and must not add dependencies: its imports are stdlib or e2e_*."""
    import ast
    stdlib = set(sys.stdlib_module_names)
    for path in [*HERE.glob("e2e_*.py"), HERE / "sglang_e2e.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                top = name.split(".")[0]
                assert top in stdlib or top.startswith("e2e_") or top == "__future__", (path.name, name)
    assert e2e_http.generate_body([5], 1, stream=False)["sampling_params"]["temperature"] == 0.0
