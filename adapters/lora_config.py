"""adapter_config.json against what vLLM's LoRA loader accepts (`vllm/lora/peft_helper.py`):
plain LoRA (optionally rsLoRA) for the served base model, within the server's rank, on the base
model's linear layers resolved the way PEFT resolves `target_modules`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from adapters.base_layout import BaseLayout
from adapters.peft_files import CONFIG_NAME, WEIGHTS_NAME

# Vocabulary layers: vLLM handles LoRA on them as a separate feature (embedding deltas, extra
# memory per slot), and on a tied-embedding model one weight serves as both. Not accepted.
VOCAB_MODULES = frozenset({"embed_tokens", "lm_head"})
# init_lora_weights values vLLM loads as plain LoRA; other strings (pissa, olora, corda, loftq)
# changed the base weights during training, so the adapter alone is not the model that was trained.
PLAIN_INITS = frozenset({"gaussian", "eva", "orthogonal", "mica", "lora_ga"})


def accepted_base_names(served: str) -> frozenset[str]:
    """The served name, and its bare basename ("SmolLM2-135M-Instruct") which some tools write;
    another organisation's model of the same basename, or a local path, is refused."""
    return frozenset({served, served.rsplit("/", 1)[-1]})


def read_config(folder: Path, fail) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise fail(
            "missing_config",
            f"no {CONFIG_NAME} in the adapter folder; a PEFT LoRA adapter is {CONFIG_NAME} plus "
            f"{WEIGHTS_NAME}, as written by peft's save_pretrained",
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise fail("invalid_config", f"{CONFIG_NAME} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise fail("invalid_config", f"{CONFIG_NAME} must hold a JSON object")
    return config


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_config(
    config: dict, base_model_name: str, max_rank: int, fail
) -> tuple[int, float, dict[str, int]]:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise fail(
            "not_lora",
            f"peft_type is {peft_type!r}; this server serves only LoRA adapters (peft_type 'LORA')",
        )
    task_type = config.get("task_type")
    if task_type not in (None, "CAUSAL_LM"):
        raise fail(
            "unsupported_task_type",
            f"task_type is {task_type!r}; this server generates text and accepts 'CAUSAL_LM'",
        )
    _check_base_model(config.get("base_model_name_or_path"), base_model_name, fail)

    r, alpha = config.get("r"), config.get("lora_alpha")
    if not _is_int(r) or r <= 0:
        raise fail("invalid_config", f"r must be a positive integer, found {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha <= 0:
        raise fail("invalid_config", f"lora_alpha must be a positive number, found {alpha!r}")
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    if not isinstance(rank_pattern, dict) or not all(
        isinstance(k, str) and _is_int(v) and v > 0 for k, v in rank_pattern.items()
    ):
        raise fail("invalid_config", "rank_pattern must map module names to positive integers")
    if not isinstance(alpha_pattern, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) for k, v in alpha_pattern.items()
    ):
        raise fail("invalid_config", "alpha_pattern must map module names to numbers")
    highest = max([r, *rank_pattern.values()])
    if highest > max_rank:
        where = "r" if highest == r else "rank_pattern"
        raise fail(
            "rank_too_high",
            f"the adapter's rank is {highest} ({where}); this server loads LoRA ranks up to "
            f"{max_rank}. Retrain with a smaller r",
        )

    if config.get("use_dora"):
        raise fail(
            "dora_not_supported",
            "use_dora is true; vLLM does not serve DoRA adapters. Retrain with use_dora=False",
        )
    if config.get("modules_to_save"):
        raise fail(
            "modules_to_save_not_supported",
            f"modules_to_save is {config['modules_to_save']!r}: that ships full copies of base "
            "layers, which vLLM does not load for a language model. Retrain without "
            "modules_to_save",
        )
    bias = config.get("bias", "none")
    if bias != "none" or config.get("lora_bias"):
        found = f"bias={bias!r}" if bias != "none" else "lora_bias=true"
        raise fail(
            "bias_not_supported",
            f"{found}; vLLM serves LoRA adapters without trained biases (bias='none', "
            "lora_bias=false)",
        )
    _check_features(config, fail)
    return r, float(alpha), rank_pattern


def _check_base_model(found: Any, served: str, fail) -> None:
    if isinstance(found, str) and found.strip() in accepted_base_names(served):
        return
    if not found:
        detail = f"{CONFIG_NAME} does not name its base model (base_model_name_or_path)"
    elif isinstance(found, str) and found.startswith(("/", ".", "~")):
        detail = f"the adapter names a local path, {found!r}, as its base model"
    else:
        detail = f"the adapter was trained for {found!r}"
    raise fail(
        "base_model_mismatch",
        f"{detail}; this server serves {served!r}. If it was trained on that model, set "
        f"base_model_name_or_path to {served!r} in {CONFIG_NAME}",
    )


def _check_features(config: dict, fail) -> None:
    unsupported = []
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in PLAIN_INITS:
        unsupported.append(f"init_lora_weights={init!r} (it changes the base weights)")
    for key, label in (
        ("alora_invocation_tokens", "Activated LoRA (alora_invocation_tokens)"),
        ("layer_replication", "layer_replication"),
        ("use_bdlora", "block-diagonal LoRA (use_bdlora)"),
        ("use_qalora", "QALoRA (use_qalora)"),
        ("target_parameters", "LoRA on parameters (target_parameters)"),
        ("trainable_token_indices", "trainable tokens (trainable_token_indices)"),
    ):
        if config.get(key):
            unsupported.append(label)
    if unsupported:
        raise fail(
            "unsupported_lora_feature",
            f"the adapter uses {', '.join(unsupported)}, which vLLM does not serve; this "
            "server accepts plain LoRA (optionally rsLoRA) on linear layers",
        )


def targeted_leaves(target_modules: Any, layout: BaseLayout, fail) -> set[str]:
    """Resolve target_modules the way PEFT does (a regex is a full match on module names; list
    entries match a name or a dotted suffix) and check every resolved module is supported."""
    accepted = ", ".join(sorted(layout.leaves))
    names = [*layout.modules, "model.embed_tokens", "lm_head"]
    if target_modules == "all-linear":
        return set(layout.leaves)
    if isinstance(target_modules, str):
        try:
            rx = re.compile(target_modules)
        except re.error as e:
            raise fail("invalid_config", f"target_modules is not a valid regex: {e}") from None
        leaves = {n.rsplit(".", 1)[-1] for n in names if rx.fullmatch(n)}
        unknown: list[str] = [] if leaves else [target_modules]
    elif (
        isinstance(target_modules, list)
        and target_modules
        and all(isinstance(t, str) for t in target_modules)
    ):
        leaves, unknown = set(), []
        for t in target_modules:
            matched = {n.rsplit(".", 1)[-1] for n in names if n == t or n.endswith("." + t)}
            leaves |= matched
            if not matched:
                unknown.append(t)
    else:
        raise fail(
            "invalid_config",
            f"target_modules must be a non-empty list of module names, found {target_modules!r}",
        )
    refused = sorted(leaves - layout.leaves) + unknown
    if refused:
        vocab = (
            " embed_tokens/lm_head (vocabulary layers) are not accepted: vLLM serves them as a "
            "separate, costlier feature and this model ties their weights."
            if set(refused) & VOCAB_MODULES
            else ""
        )
        raise fail(
            "unsupported_target_modules",
            f"target_modules {refused} are not LoRA-servable layers of the base model "
            f"({layout.architecture}); this server accepts: {accepted}.{vocab}",
        )
    return leaves
