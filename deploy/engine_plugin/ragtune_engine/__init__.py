"""ragtune's vLLM plugin package: `lora_fix` (entry point) and `launch` (engine launcher)."""
