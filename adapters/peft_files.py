"""The two files of a PEFT LoRA folder as peft's `save_pretrained(..., safe_serialization=True)`
writes them: the only files a client packs, the server unpacks and vLLM loads."""

from __future__ import annotations

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

# Written by `ragtune adapters train` beside the two PEFT files: how the adapter was trained
# (with retrieved context or not, at which top_k / floor / budget), so serving can give it the
# context it was trained with. Optional: an adapter trained elsewhere has none.
TRAINING_NAME = "ragtune_training.json"
