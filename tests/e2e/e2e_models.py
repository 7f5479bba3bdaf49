"""The two small model directories the end-to-end check serves with random weights.

Owned here: the Hugging Face configs (an MHA Llama and an MLA DeepSeek-V2) and writing them as model
directories. With `--load-format dummy --skip-tokenizer-init` SGLang needs only `config.json` from a
local directory (`generation_config.json` and the rest are optional, read when present): its DummyModelLoader
(sglang/srt/model_loader/loader.py, `DummyModelLoader.load_model`) builds the model from the config
and fills it with random values, and no tokenizer is loaded. Called by sglang_e2e.py (on the GPU
machine) and tests/e2e/test_sglang_e2e.py (which parses them with SGLang's own ModelConfig).

The configs use the keys of real checkpoints (Llama-3 and DeepSeek-V2-Lite), so that they take the
same parsing path in transformers and SGLang as those do; only the sizes are small:

- MHA: 8 layers, 8 KV heads of 128 dims, bf16: 32 KiB of KV per token, so a 64-token page is 2 MiB
  and a 1 GB host pool (`--hicache-size 1`, the smallest whole number SGLang takes) holds about
  30,000 tokens, less than the multi-turn load's working set: the load must reach L3.
- MLA: the DeepSeek MLA dimensions the attention kernels are built for (kv_lora_rank 512,
  qk_rope_head_dim 64, qk_nope_head_dim 128, v_head_dim 128, 16 heads), 4 layers. DeepSeek-V2's
  SGLang model computes its expert-location metadata from `n_routed_experts` even for dense layers
  (sglang/srt/eplb/expert_location.py, `_init_common`), so the config names 8 experts, and
  `first_k_dense_replace` = the layer count makes every layer dense
  (sglang/srt/models/deepseek_v2.py, `DeepseekV2DecoderLayer._is_layer_sparse`): no MoE kernels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VOCAB_SIZE = 32000
BOS_TOKEN_ID = 1
EOS_TOKEN_ID = 2
# Prompts draw token ids from [FIRST_ORDINARY_TOKEN_ID, VOCAB_SIZE): no BOS/EOS in them.
FIRST_ORDINARY_TOKEN_ID = 3
BF16_BYTES = 2


@dataclass(frozen=True)
class ModelSpec:
    """One model directory to write: its name, attention kind and config.json contents."""

    name: str
    attention: str  # "MHA" or "MLA"
    config: dict[str, Any]

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token occupies (all layers, TP 1, bf16): what sizes the host pool."""
        c = self.config
        if self.attention == "MLA":
            return c["num_hidden_layers"] * (c["kv_lora_rank"] + c["qk_rope_head_dim"]) * BF16_BYTES
        return 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * c["head_dim"] * BF16_BYTES


def llama_mha_config() -> dict[str, Any]:
    """A Llama-3-shaped config, small: the MHA model."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 512,
        "intermediate_size": 1024,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "vocab_size": VOCAB_SIZE,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
        "torch_dtype": "bfloat16",
    }


def deepseek_v2_mla_config() -> dict[str, Any]:
    """A DeepSeek-V2-Lite-shaped config, small and dense: the MLA model."""
    layers = 4
    return {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "hidden_size": 512,
        "intermediate_size": 1024,
        "num_hidden_layers": layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "q_lora_rank": None,
        "kv_lora_rank": 512,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        # Dense: every layer below first_k_dense_replace has a plain MLP (see the module docstring).
        "first_k_dense_replace": layers,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 256,
        "moe_layer_freq": 1,
        "n_group": 1,
        "topk_group": 1,
        "topk_method": "greedy",
        "scoring_func": "softmax",
        "norm_topk_prob": False,
        "routed_scaling_factor": 1.0,
        "hidden_act": "silu",
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "tie_word_embeddings": False,
        "vocab_size": VOCAB_SIZE,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
        "torch_dtype": "bfloat16",
    }


LLAMA_MHA = ModelSpec("tiny-llama-mha", "MHA", llama_mha_config())
DEEPSEEK_MLA = ModelSpec("tiny-deepseek-v2-mla", "MLA", deepseek_v2_mla_config())
MODELS = {spec.name: spec for spec in (LLAMA_MHA, DEEPSEEK_MLA)}


def generation_config(spec: ModelSpec) -> dict[str, Any]:
    """generation_config.json: optional for SGLang (a missing one is normal), written so that the
    server's default sampling parameters come from a file we control rather than a fallback."""
    return {"bos_token_id": spec.config["bos_token_id"], "eos_token_id": spec.config["eos_token_id"],
            "do_sample": False}


def write_model_dir(spec: ModelSpec, parent: Path) -> Path:
    """Write `parent/<spec.name>/` with config.json and generation_config.json; return the directory.
    Overwrites what is there (the files are small and fully determined by the spec)."""
    directory = Path(parent) / spec.name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(spec.config, indent=2) + "\n", encoding="utf-8")
    (directory / "generation_config.json").write_text(json.dumps(generation_config(spec), indent=2) + "\n",
                                                      encoding="utf-8")
    return directory
