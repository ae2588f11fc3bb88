"""adapter_model.safetensors against the base model's layers, from the tensor headers alone
(names, shapes, dtypes; safetensors' `safe_open`, no weights read): every tensor is the A or B
half of a LoRA on a targeted layer, shaped for that layer at its rank."""

from __future__ import annotations

import re
from pathlib import Path

from adapters.base_layout import LAYER_RE, BaseLayout
from adapters.peft_files import WEIGHTS_NAME

FLOAT_DTYPES = frozenset({"F32", "F16", "BF16"})
_TENSOR_RE = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


def _rank_for(module: str, r: int, rank_pattern: dict[str, int]) -> int:
    # PEFT's rule (and vLLM's): a key matches a dotted suffix of the module name; first match wins.
    for key, rank in rank_pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return rank
    return r


def check_tensors(
    folder: Path,
    layout: BaseLayout,
    targeted: set[str],
    r: int,
    rank_pattern: dict[str, int],
    fail,
) -> tuple[int, set[str]]:
    from safetensors import SafetensorError, safe_open

    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise fail(
            "missing_weights",
            f"no {WEIGHTS_NAME} in the adapter folder; save the adapter with peft's "
            "save_pretrained(..., safe_serialization=True)",
        )
    try:
        with safe_open(path, framework="numpy") as f:
            headers = {
                k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()
            }
    except (SafetensorError, OSError, ValueError) as e:
        msg = f"{WEIGHTS_NAME} is not a readable safetensors file: {e}"
        raise fail("invalid_weights", msg) from None
    if not headers:
        raise fail("missing_weights", f"{WEIGHTS_NAME} holds no tensors")

    unexpected: list[str] = []
    halves: dict[str, set[str]] = {}
    for key, (shape, dtype) in sorted(headers.items()):
        if "lora_magnitude_vector" in key:
            raise fail(
                "dora_not_supported",
                f"{key} is a DoRA magnitude vector; vLLM does not serve DoRA adapters",
            )
        m = _TENSOR_RE.match(key)
        module = m["module"] if m else None
        if module not in layout.modules or module.rsplit(".", 1)[-1] not in targeted:
            unexpected.append(key)
            continue
        if dtype not in FLOAT_DTYPES:
            raise fail("invalid_weights", f"{key} has dtype {dtype}; expected F32, F16 or BF16")
        rank = _rank_for(module, r, rank_pattern)
        in_f, out_f = layout.modules[module]
        want = [rank, in_f] if m["ab"] == "A" else [out_f, rank]
        if list(shape) != want:
            raise fail(
                "tensor_shape_mismatch",
                f"{key} has shape {list(shape)}, but for this base model ({module}: {in_f} -> "
                f"{out_f} features) at rank {rank} it must be {want}. Was the adapter trained "
                "on another model, or its rank_pattern edited?",
            )
        halves.setdefault(module, set()).add(m["ab"])
    if unexpected:
        raise fail("unexpected_tensors", _unexpected_message(unexpected, layout))
    lonely = sorted(mod for mod, ab in halves.items() if ab != {"A", "B"})
    if lonely:
        raise fail(
            "missing_weights",
            f"{len(lonely)} module(s) have only one of lora_A/lora_B (first: {lonely[0]}); "
            "every adapted layer needs both",
        )
    return len(headers), {mod.rsplit(".", 1)[-1] for mod in halves}


def _unexpected_message(keys: list[str], layout: BaseLayout) -> str:
    first = keys[0]
    layer = LAYER_RE.search(first)
    if layer and int(layer[1]) >= layout.num_layers:
        why = (
            f"it addresses layer {layer[1]}, but the base model has {layout.num_layers} layers "
            f"(0-{layout.num_layers - 1})"
        )
    else:
        why = (
            "expected only base_model.model.<module>.lora_A.weight / lora_B.weight for the "
            "modules listed in target_modules"
        )
    return (
        f"{len(keys)} tensor(s) in {WEIGHTS_NAME} do not belong to a LoRA on this base model "
        f"(first: {first}): {why}"
    )
