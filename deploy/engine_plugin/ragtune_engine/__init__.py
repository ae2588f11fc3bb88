"""ragtune's vLLM plugin package: `lora_fix` (entry point, which also installs `lora_grouped`)
and `launch` (engine launcher)."""
