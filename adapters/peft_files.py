"""The two files of a PEFT LoRA folder as peft's `save_pretrained(..., safe_serialization=True)`
writes them: the only files a client packs, the server unpacks and vLLM loads."""

from __future__ import annotations

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
