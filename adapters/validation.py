"""Will the served base model load this LoRA folder? Decided from JSON and tensor headers only.

Nothing here loads weights: adapter_config.json is parsed, and adapter_model.safetensors is read
for its header (names, shapes, dtypes) with safetensors' `safe_open`. Pickle files are refused by
name, never opened. The rules mirror what vLLM's LoRA loader accepts (`vllm/lora/peft_helper.py`),
so that an adapter we accept is one vLLM loads, and one vLLM would refuse fails here, with a
reason an ML engineer can act on.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.archive import CONFIG_NAME, WEIGHTS_NAME, clear_folder, safe_unpack
from core.errors import AdapterError

# Files that can run code when loaded (torch.load, pickle, joblib): refused on sight.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})
FLOAT_DTYPES = frozenset({"F32", "F16", "BF16"})
# Decoder stacks whose linear layers are q/k/v/o and gate/up/down, sized from config.json alone.
LLAMA_LAYOUT_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
# Vocabulary layers: vLLM handles LoRA on them as a separate feature (embedding deltas, extra
# memory per slot), and on a tied-embedding model one weight serves as both. Not accepted.
VOCAB_MODULES = frozenset({"embed_tokens", "lm_head"})
# init_lora_weights values vLLM loads as plain LoRA; other strings (pissa, olora, corda, loftq)
# changed the base weights during training, so the adapter alone is not the model that was trained.
PLAIN_INITS = frozenset({"gaussian", "eva", "orthogonal", "mica", "lora_ga"})
_TENSOR_RE = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class AdapterInfo:
    rank: int
    alpha: float
    target_modules: list[str]
    base_model: str
    size_bytes: int
    num_tensors: int


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
        if isinstance(m, torch.nn.Linear) and _LAYER_RE.search(name)
    }
    return BaseLayout(_architecture(config), config["num_hidden_layers"], modules)


def _architecture(config: dict) -> str:
    return (config.get("architectures") or [config.get("model_type", "unknown")])[0]


def accepted_base_names(served: str) -> frozenset[str]:
    """The served name, and its bare basename ("SmolLM2-135M-Instruct") which some tools write;
    another organisation's model of the same basename, or a local path, is refused."""
    return frozenset({served, served.rsplit("/", 1)[-1]})


def validate_adapter(
    folder: Path,
    *,
    base_model_name: str,
    base_model_dir: Path,
    max_rank: int,
    max_bytes: int | None = None,
    param: str = "file",
) -> AdapterInfo:
    """Check an unpacked adapter folder against the served base model; raise AdapterError."""
    folder = Path(folder)

    def fail(code: str, message: str) -> AdapterError:
        return AdapterError(message, code=code, param=param)

    size_bytes = _check_files(folder, max_bytes, fail)
    config = _read_config(folder, fail)
    layout = base_layout(Path(base_model_dir))
    rank, alpha, rank_pattern = _check_config(config, base_model_name, max_rank, fail)
    targeted = _targeted_leaves(config.get("target_modules"), layout, fail)
    num_tensors, present = _check_tensors(folder, layout, targeted, rank, rank_pattern, fail)
    return AdapterInfo(
        rank=rank,
        alpha=alpha,
        target_modules=sorted(present),
        base_model=config["base_model_name_or_path"],
        size_bytes=size_bytes,
        num_tensors=num_tensors,
    )


def validate_archive(
    archive: Path,
    dest: Path,
    *,
    max_bytes: int,
    max_files: int,
    base_model_name: str,
    base_model_dir: Path,
    max_rank: int,
) -> tuple[Path, AdapterInfo]:
    """Unpack then validate; on any failure nothing is left in `dest`."""
    created = not Path(dest).exists()
    folder = safe_unpack(archive, dest, max_bytes=max_bytes, max_files=max_files)
    try:
        info = validate_adapter(
            folder,
            base_model_name=base_model_name,
            base_model_dir=base_model_dir,
            max_rank=max_rank,
            max_bytes=max_bytes,
        )
    except BaseException:
        clear_folder(Path(dest), created)
        raise
    return folder, info


def _check_files(folder: Path, max_bytes: int | None, fail) -> int:
    size = 0
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise fail(
                "link_in_folder",
                f"{rel} is a link or special file; an adapter folder may hold only regular files",
            )
        if path.is_file():
            size += path.stat().st_size
            if path.suffix.lower() in PICKLE_SUFFIXES:
                raise fail(
                    "pickle_not_allowed",
                    f"found {rel}: pickle-based files ({', '.join(sorted(PICKLE_SUFFIXES))}) "
                    "can run code when loaded, so this server accepts weights only as "
                    f"{WEIGHTS_NAME}. Remove the file, or re-save with "
                    "save_pretrained(..., safe_serialization=True)",
                )
    if max_bytes is not None and size > max_bytes:
        raise fail(
            "adapter_too_large",
            f"the adapter folder holds {size} bytes, more than this server's limit of {max_bytes}",
        )
    return size


def _read_config(folder: Path, fail) -> dict[str, Any]:
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


def _check_config(
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


def _targeted_leaves(target_modules: Any, layout: BaseLayout, fail) -> set[str]:
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


def _rank_for(module: str, r: int, rank_pattern: dict[str, int]) -> int:
    # PEFT's rule (and vLLM's): a key matches a dotted suffix of the module name; first match wins.
    for key, rank in rank_pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return rank
    return r


def _check_tensors(
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
    layer = _LAYER_RE.search(first)
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
