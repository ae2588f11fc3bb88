"""Stop LoRA adapters leaking onto base-model requests batched with them (vLLM CPU path).

vLLM tags each token of a request without an adapter with LoRA index -1. The GPU kernels skip
those rows. The pure-torch punica ops used on CPU (`vllm/lora/ops/torch_ops/lora_ops.py`,
called by `PunicaWrapperCPU`) gather `lora_weights[lora_indices]`, and in torch index -1 means
*the last adapter slot*. So a base-model request that shares a batch with adapter requests gets
whatever adapter sits in slot `max_loras - 1`: one tenant's adapter applied to another's request.

Fix: replace the three bgmv ops by ones that compute per adapter slot, `rows @ W[slot].T`, for
the rows tagged with that slot only, and leave rows tagged -1 exactly as they found them, which
is what the GPU kernels do. Besides closing the leak this is much faster for
prefill: the originals gather a whole weight matrix per token (`lora_weights[indices]`), so a
prefill of a few thousand tokens (a RAG prompt) batched with one adapter request ran every token
through a gathered einsum (measured: 32 mixed requests took ~64 s together). The sgmv ops need
no change: they expand their indices per token and then call the bgmv ops through their
module's globals, which we replace. Shapes the grouped form does not cover fall back to the
original op, masked.

A second fault of the same CPU wrapper: `add_lora_logits` pairs the logits rows with
`sampler_indices` (one per sampled sequence), but prompt logprobs compute logits for every prompt
token, so with LoRA enabled any request with `prompt_logprobs` kills the engine (einsum: "subscript
b has size 15 for operand 1 which does not broadcast with previously seen size 51", then
EngineDeadError). ragtune's advisor uses prompt logprobs, and one tenant's request must not take
the engine down for all. Fix: for those rows, add nothing. That is exact whenever no loaded
adapter adapts the vocabulary, which ragtune's validation guarantees (it refuses lm_head and
embed_tokens targets); otherwise a warning says the prompt logprobs ignore that adapter.

vLLM runs this entry point (group `vllm.general_plugins`) in every one of its processes (API
server, engine core, workers) before the model is built. Set RAGTUNE_ENGINE_DISABLE_LORA_FIX=1
to leave vLLM unpatched (used to demonstrate the bug).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys

import torch

# A child of vLLM's "vllm" logger, so the line comes out with vLLM's handler and format.
logger = logging.getLogger("vllm.ragtune_engine")

DISABLE_ENV = "RAGTUNE_ENGINE_DISABLE_LORA_FIX"
# Extra positional arguments of each op after (inputs, weights, output, indices), for the probe.
_OPS = {
    "bgmv_shrink": (1.0,),  # scaling
    "bgmv_expand": (True,),  # add_inputs
    "bgmv_expand_slice": (0, 2, True),  # slice_offset, slice_size, add_inputs
}


def _leaks(op, extra: tuple) -> bool:
    """Run the op on one token tagged -1 against two all-ones slots; any output is a leak.

    Probing instead of checking the vLLM version makes the fix retire by itself (and makes
    `register` idempotent: a wrapped op no longer leaks) once vLLM handles -1.
    """
    out = torch.zeros(1, 2)
    op(torch.ones(1, 2), torch.ones(2, 1, 2, 2), out, torch.tensor([-1]), *extra)
    return bool(out.any())


def _keep_base_rows(op):
    @functools.wraps(op)
    def masked(inputs, lora_weights, output_tensor, lora_indices_tensor, *args, **kwargs):
        base = (lora_indices_tensor < 0).unsqueeze(-1)
        before = output_tensor.clone()
        op(inputs, lora_weights, output_tensor, lora_indices_tensor, *args, **kwargs)
        # Put the base rows back as they were. Branch-free (no host sync, no per-token loop),
        # and exact for every mode: shrink overwrites, expand adds or overwrites.
        output_tensor.copy_(torch.where(base, before, output_tensor))

    return masked


def _prompt_rows_safe(add_lora_logits):
    warned = []

    @functools.wraps(add_lora_logits)
    def add(self, y, x, lora_a_stacked, lora_b_stacked, scale, *args, **kwargs):
        rows = x.reshape(-1, x.shape[-1]).size(0)
        if rows == self.sampler_indices.numel():
            return add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale,
                                   *args, **kwargs)
        # Prompt-logprob rows: leave the logits as the base model computed them (in place,
        # as the CPU wrapper always works).
        if not warned and torch.any(lora_b_stacked):
            warned.append(True)
            logger.warning("ragtune: an adapter adapts the vocabulary; prompt logprobs "
                           "are computed without it")
        return None

    add.ragtune_patched = True
    return add


def _per_slot(inputs, weights, indices, dtype):
    """(rows, rows' inputs @ W[slot].T) for each adapter slot in `indices`; rows tagged -1 are
    never computed (and so never written). One matmul per slot: measured faster than a gathered
    product even for the few rows of a decode step (bench/adapters.py, 1 adapter: 0.42 of base
    tokens/s against 0.30 gathered)."""
    w = weights.squeeze(1) if weights.dim() == 4 else weights  # (slots, out, in)
    x = inputs.to(dtype)
    for slot in torch.unique(indices).tolist():
        if slot < 0:
            continue
        rows = (indices == slot).nonzero().squeeze(1)
        yield rows, x.index_select(0, rows) @ w[slot].to(dtype).T


def _grouped(name: str, original):
    masked = _keep_base_rows(original)

    def uncovered(inputs, output, indices) -> bool:
        # The originals broadcast a single input row over all output rows in expand; indices
        # that do not name one row each are theirs to handle too.
        return indices.numel() != inputs.shape[0] or (
            inputs.shape[0] == 1 and output.shape[0] != 1
        )

    def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling=1.0):
        if uncovered(inputs, output_tensor, lora_indices_tensor):
            return masked(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
        for rows, out in _per_slot(inputs, lora_a_weights, lora_indices_tensor,
                                   output_tensor.dtype):
            output_tensor[rows, : out.shape[1]] = scaling * out

    def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs=True):
        if uncovered(inputs, output_tensor, lora_indices_tensor):
            return masked(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs)
        for rows, out in _per_slot(inputs, lora_b_weights, lora_indices_tensor,
                                   output_tensor.dtype):
            n = min(out.shape[1], output_tensor.shape[1])
            if add_inputs:
                output_tensor[rows, :n] += out[:, :n]
            else:
                output_tensor[rows, :n] = out[:, :n]

    def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor,
                          slice_offset, slice_size, add_inputs=True):
        if uncovered(inputs, output_tensor, lora_indices_tensor):
            return masked(inputs, lora_b_weights, output_tensor, lora_indices_tensor,
                          slice_offset, slice_size, add_inputs)
        end = slice_offset + slice_size
        for rows, out in _per_slot(inputs, lora_b_weights, lora_indices_tensor,
                                   output_tensor.dtype):
            if add_inputs:
                output_tensor[rows, slice_offset:end] += out
            else:
                output_tensor[rows, slice_offset:end] = out

    op = {"bgmv_shrink": bgmv_shrink, "bgmv_expand": bgmv_expand,
          "bgmv_expand_slice": bgmv_expand_slice}[name]
    return functools.wraps(original)(op)


def register() -> None:
    if os.environ.get(DISABLE_ENV) == "1":
        logger.warning("ragtune: LoRA batch isolation fix DISABLED by %s=1", DISABLE_ENV)
        return
    from vllm.platforms import current_platform

    wrapper = current_platform.get_punica_wrapper()  # "package.module.Class"
    if not wrapper.endswith(".PunicaWrapperCPU"):
        return  # GPU/XPU wrappers use kernels that already skip index -1: nothing to fix.

    # Take the ops from the module the worker will use, wherever this vLLM keeps it (upstream
    # is moving the LoRA code around). If they are not there we cannot tell whether this vLLM
    # leaks, so refuse to start rather than serve tenants unchecked.
    wrapper_module = importlib.import_module(wrapper.rsplit(".", 1)[0])
    patched = []
    for name, extra in _OPS.items():
        original = getattr(wrapper_module, name, None)
        if original is None:
            raise RuntimeError(
                f"ragtune: {wrapper_module.__name__} has no {name}; check that this vLLM skips "
                f"LoRA index -1 on CPU, then start it with {DISABLE_ENV}=1"
            )
        if not _leaks(original, extra):
            continue
        wrapped = _grouped(name, original)
        # `from ... import bgmv_shrink` copies the reference into each importer (the ops
        # module's package, punica_cpu, ...): rebind it everywhere vLLM holds it. The sgmv ops
        # call it through the ops module's globals, so they are covered too; modules imported
        # later get the wrapped op from those packages.
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("vllm") and (
                getattr(module, name, None) is original
            ):
                setattr(module, name, wrapped)
        patched.append(name)
    cpu_wrapper = getattr(wrapper_module, wrapper.rsplit(".", 1)[1])
    if not getattr(cpu_wrapper.add_lora_logits, "ragtune_patched", False):
        cpu_wrapper.add_lora_logits = _prompt_rows_safe(cpu_wrapper.add_lora_logits)
        patched.append("add_lora_logits (prompt logprobs)")
    from . import lora_grouped

    why_not = lora_grouped.install(wrapper_module, cpu_wrapper)
    if why_not is None:
        patched.append("add_lora_linear, segmented by adapter slot")
    else:
        logger.warning("ragtune: segmented LoRA not installed: %s; vLLM's add_lora_linear "
                       "serves (slower with several adapters in a batch)", why_not)
    if patched:
        # (In the API server process this runs before vLLM configures logging and is not
        # shown; it is the engine core and worker processes that run the model.)
        logger.info(
            "ragtune: LoRA plugin active in pid %d (index -1 masked or never read in %s)",
            os.getpid(),
            ", ".join(patched),
        )
