"""Random LoRA adapters (integration tests, bench): each seed gives a different, strong adapter."""

from __future__ import annotations

import math
from pathlib import Path

from core.settings import BASE_MODEL_NAME as SERVED_BASE_MODEL
from tests.helpers.adapter_files import TARGET_MODULES


def make_random_lora(
    out_dir: str | Path,
    base_model_dir: str | Path,
    seed: int,
    rank: int = 8,
    scale: float = 1.0,
) -> Path:
    """Write a peft LoRA adapter (adapter_config.json + adapter_model.safetensors) to out_dir.

    peft initialises lora_B to zero (a no-op adapter), so both matrices are overwritten with
    Gaussian noise: A with std scale/sqrt(in_features), B with std scale/sqrt(rank), and
    lora_alpha = rank (scaling 1). Each update B @ A then moves a layer's output by roughly
    scale**2 times its input's size, enough at scale 1 to change greedy output from the first
    token while keeping adapters distinct from one another.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.bfloat16)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        lora_dropout=0.0,
        target_modules=TARGET_MODULES,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_A." in name:  # (rank, in_features)
                std = scale / math.sqrt(param.shape[1])
            elif ".lora_B." in name:  # (out_features, rank)
                std = scale / math.sqrt(rank)
            else:
                continue
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32) * std
            param.copy_(noise.to(param.dtype))
    # Name the model the adapter is for as clients know it, not the local folder we loaded.
    peft_model.peft_config["default"].base_model_name_or_path = SERVED_BASE_MODEL
    # save_embedding_layers=False: embeddings are not adapted, and "auto" would look the base
    # model up on the Hub to find out.
    peft_model.save_pretrained(str(out_dir), safe_serialization=True, save_embedding_layers=False)
    return out_dir
