"""The linear layers of the served base model a LoRA may adapt, and their shapes, read from the
model folder's config.json (weights are never loaded)."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

# Decoder stacks whose linear layers are q/k/v/o and gate/up/down, sized from config.json alone.
LLAMA_LAYOUT_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class BaseLayout:
    """The linear layers a LoRA may adapt: full module name -> (in_features, out_features)."""

    architecture: str
    num_layers: int
    modules: dict[str, tuple[int, int]]

    @functools.cached_property
    def leaves(self) -> frozenset[str]:
        return frozenset(name.rsplit(".", 1)[-1] for name in self.modules)


@functools.lru_cache(maxsize=8)
def base_layout(base_model_dir: Path) -> BaseLayout:
    config = json.loads((Path(base_model_dir) / "config.json").read_text())
    if config.get("model_type") in LLAMA_LAYOUT_TYPES:
        return _llama_layout(config)
    return _introspected_layout(Path(base_model_dir), config)


def _llama_layout(config: dict) -> BaseLayout:
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    inter, layers = config["intermediate_size"], config["num_hidden_layers"]
    per_layer = {
        "self_attn.q_proj": (hidden, heads * head_dim),
        "self_attn.k_proj": (hidden, kv_heads * head_dim),
        "self_attn.v_proj": (hidden, kv_heads * head_dim),
        "self_attn.o_proj": (heads * head_dim, hidden),
        "mlp.gate_proj": (hidden, inter),
        "mlp.up_proj": (hidden, inter),
        "mlp.down_proj": (inter, hidden),
    }
    modules = {
        f"model.layers.{i}.{name}": shape
        for i in range(layers)
        for name, shape in per_layer.items()
    }
    return BaseLayout(_architecture(config), layers, modules)


def _introspected_layout(base_model_dir: Path, config: dict) -> BaseLayout:
    """Other architectures: build the model on the meta device (no weights) and list its
    decoder layers' nn.Linear modules, as vLLM does ("all linear layers support LoRA")."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.from_pretrained(base_model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    modules = {
        name: (m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and LAYER_RE.search(name)
    }
    return BaseLayout(_architecture(config), config["num_hidden_layers"], modules)


def _architecture(config: dict) -> str:
    return (config.get("architectures") or [config.get("model_type", "unknown")])[0]
