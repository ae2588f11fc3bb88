"""Segmented LoRA products for vLLM's CPU path: many adapters in one batch at about the cost of one.

vLLM's `PunicaWrapperCPU.add_lora_linear` runs, for every LoRA layer of every step, one shrink and
one expand per slice (q, k, v; gate, up) through ops that gather a weight matrix per token
(`lora_weights[indices]`, then a batched einsum). With its stacked weights padded to
`--max-lora-rank` (64 here) and stored in the model dtype, a batch of adapter requests cost 2-7x
the base model (issue 18, bench/adapters.py). The GPU answer to the same problem is Punica's
segmented kernel (SGMV): rows grouped by adapter, one product per group. This module is that on
CPU, with torch's own matrix products:

- **Once per step, not per layer**, the step's token-to-slot indices are split into groups (one per
  adapter slot in use, as contiguous ranges where the rows of a slot are contiguous, else as row
  indices). The cache is dropped by `update_metadata`, the only writer of those indices.
- **Once per adapter load, per layer and for that slot only**, the slot's rank is taken from the
  adapter vLLM activates there (vLLM pads its stacks to `--max-lora-rank` with zeros; a rank-16
  adapter in rank-64 stacks is three quarters zeros), and a float32 copy is made, trimmed to the
  largest rank in use and stacked over slots, the slices' A side by side (one shrink for q, k
  and v), each slice's B apart. Loading or resetting an
  adapter in any slot (`reset_lora`, which every `set_lora` calls first) or a change of the
  slot-to-adapter map marks that slot; each layer copies it again at its next call (so adapters
  rotating through the slots cost one slot's copy each, not the whole layer's).
- **Per layer call**, two forms, by how many rows a slot has in the step (bench/lora_ops.py
  measures both against vLLM's ops, a padded bmm, a masked product over every slot and a loop of
  products); a step with decodes and a prefill uses both:
  - *few rows* (a slot's decode rows, short prompts; up to SMALL_ROWS): those rows of every such
    slot in slot order (one gather), then `torch._grouped_mm` (torch's segmented product, one
    call for every slot) for shrink and one per slice for expand, in float32, and one
    scatter-add back; with one such slot, plain products;
  - *many rows* (prefill): for each such slot, its rows (a view when contiguous, as in
    prefill) times views of vLLM's own stacks trimmed to the slot's rank, in the model's dtype
    (bfloat16 products run on AMX where the CPU has it), the expand accumulated into the output
    in place (`addmm_`).
- Rows tagged -1 (no adapter) are never read or written, as the GPU kernels do (the isolation
  fix of lora_fix.py holds here by construction).
- The vocabulary's LoRA (`add_lora_logits`, a product over the whole vocabulary per slot, every
  step; and `add_lora_embedding`) is skipped while no slot's lm_head or embedding weights are
  nonzero, which is always so under ragtune's validation (it refuses lm_head and embed_tokens
  targets); it runs as vLLM's otherwise.

It is installed only if, at start, it agrees with vLLM's own wrapper on a fixed mixed batch
(`agrees()`: prefill and decode, three slots of different ranks, rows without an adapter), so a
vLLM whose wrapper changed meaning falls back to vLLM's code with a warning instead of serving
something else. RAGTUNE_ENGINE_DISABLE_LORA_GROUPED=1 leaves vLLM's `add_lora_linear` in place
(to compare before and after).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field

import torch

logger = logging.getLogger("vllm.ragtune_engine")

DISABLE_ENV = "RAGTUNE_ENGINE_DISABLE_LORA_GROUPED"
# A slot with up to this many rows in a step (decode, short prompts) joins the one float32
# segmented product of the step's small groups; a slot with more (a prefill) gets products of its
# own in the model's dtype (bench/lora_ops.py: on a CPU with AMX, bfloat16 products of 2,000 rows
# are several times faster than float32 ones, while for a few rows float32's small kernels and
# one segmented call for every slot win).
SMALL_ROWS = 64
_HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")

# Per adapter slot, bumped whenever that slot's weights change (reset_lora, which every set_lora
# calls first) or another adapter takes it: each layer refreshes that slot's copy at its next call.
_slot_generations: list[int] = []


def bump(slot: int) -> None:
    while len(_slot_generations) <= slot:
        _slot_generations.append(0)
    _slot_generations[slot] += 1


# Per adapter slot, the rank of the adapter vLLM activated there (the largest of its modules'),
# recorded by activate_adapter, so that a layer refreshing a slot need not scan the stacks for it.
_slot_ranks: dict[int, int] = {}


def _generations(slots: int) -> list[int]:
    if len(_slot_generations) < slots:
        bump(slots - 1)
    return _slot_generations[:slots]


@dataclass
class Group:
    slot: int
    rows: slice | torch.Tensor  # a range of rows, or their indices


@dataclass
class Step:
    """The adapter rows of one step, grouped by slot: a slot's rows up to SMALL_ROWS go into one
    segmented product with the other such slots' (`small`), more get products of their own
    (`big`, prefill)."""

    n: int
    groups: list[Group]  # every slot's, by slot
    big: list[Group]
    small: list[Group]
    order: torch.Tensor | None  # the small groups' rows in slot order; None: that is every row
    counts: dict[int, int]  # slot -> rows, of the small groups
    inverse: torch.Tensor | None = None  # when `order` is every row: back to the step's order
    _offsets: dict = field(default_factory=dict)

    @classmethod
    def of(cls, indices: list[int]) -> Step:
        by_slot: dict[int, list[int]] = {}
        for row, slot in enumerate(indices):
            if slot >= 0:
                by_slot.setdefault(slot, []).append(row)
        groups, big, small, order = [], [], [], []
        for slot, rows in sorted(by_slot.items()):
            if rows[-1] - rows[0] + 1 == len(rows):
                group = Group(slot, slice(rows[0], rows[-1] + 1))
            else:
                group = Group(slot, torch.tensor(rows, dtype=torch.long))
            groups.append(group)
            if len(rows) > SMALL_ROWS:
                big.append(group)
            else:
                small.append(group)
                order += rows
        sorted_order = None if order == list(range(len(indices))) else (
            torch.tensor(order, dtype=torch.long))
        inverse = None
        if sorted_order is not None and len(order) == len(indices):
            inverse = torch.argsort(sorted_order)
        return cls(len(indices), groups, big, small, sorted_order,
                   {g.slot: len(by_slot[g.slot]) for g in small}, inverse)

    def offsets(self, slots: int) -> torch.Tensor:
        """Each slot's end among the small groups' sorted rows, for torch._grouped_mm (other
        slots are empty groups)."""
        off = self._offsets.get(slots)
        if off is None:
            ends, total = [], 0
            for slot in range(slots):
                total += self.counts.get(slot, 0)
                ends.append(total)
            off = self._offsets[slots] = torch.tensor(ends, dtype=torch.int32)
        return off


def _rank(a: torch.Tensor, b: torch.Tensor) -> int:
    """The adapter's rank in one slot of one slice: rows of A (rank, in) and columns of B
    (out, rank) past it are vLLM's zero padding to --max-lora-rank."""
    used = (a.abs().sum(1) != 0) | (b.abs().sum(0) != 0)
    nz = used.nonzero()
    return int(nz[-1]) + 1 if nz.numel() else 0


@dataclass
class Layer:
    """One LoRA layer's adapters: each slot's rank, and for few rows a float32 copy trimmed to
    the largest rank in use and stacked over slots for torch._grouped_mm, the slices' A side by
    side (one shrink for q, k and v) and each slice's B apart (a block-diagonal B, one expand,
    reads k times the bytes: at 8 slots the copy is as many bytes as the model's layer)."""

    seen: list[int]  # the slots' generations this copy reflects
    a_stacked: tuple  # vLLM's own stacks (many rows are computed on views of them)
    b_stacked: tuple
    output_slices: tuple
    ranks: list[int]  # per slot; 0: empty, or its adapter does not target this layer
    a: torch.Tensor | None  # (slots, in, k * rank) float32: the k slices' A side by side
    b: list[torch.Tensor] | None  # per slice (slots, rank, its out) float32

    @classmethod
    def of(cls, a_stacked, b_stacked, output_slices) -> Layer:
        slots, n_in = a_stacked[0].shape[0], a_stacked[0].shape[-1]
        k = len(a_stacked)
        seen = _generations(slots)
        layer = cls(seen, a_stacked, b_stacked, tuple(output_slices), [0] * slots, None, None)
        layer.ranks = [layer._rank(s) for s in range(slots)]
        r = max(layer.ranks)
        if r:
            layer.a = torch.zeros(slots, n_in, k * r)
            layer.b = [torch.zeros(slots, r, size) for size in output_slices]
            for s in range(slots):
                layer._copy(s)
        return layer

    def _rank(self, slot: int) -> int:
        known = _slot_ranks.get(slot)
        if known is not None:
            return min(known, self.a_stacked[0].shape[2])
        return max(_rank(a[slot, 0], b[slot, 0])
                   for a, b in zip(self.a_stacked, self.b_stacked, strict=True))

    def _copy(self, slot: int) -> None:
        r = self.a.shape[2] // len(self.a_stacked)  # vLLM's stacks are zero past each rank
        for i, (a, b, size) in enumerate(zip(self.a_stacked, self.b_stacked,
                                             self.output_slices, strict=True)):
            self.a[slot, :, i * r:(i + 1) * r] = a[slot, 0, :r].T
            self.b[i][slot] = b[slot, 0, :size, :r].T

    def current(self) -> Layer:
        """This layer, with the slots whose adapter changed since copied again (all of it when
        an adapter's rank outgrows the copy)."""
        now = _generations(len(self.ranks))
        if now == self.seen:
            return self
        stale = [s for s, (g, h) in enumerate(zip(now, self.seen, strict=True)) if g != h]
        for s in stale:
            self.ranks[s] = self._rank(s)
        width = 0 if self.a is None else self.a.shape[2] // len(self.a_stacked)
        if max(self.ranks) > width:
            return Layer.of(self.a_stacked, self.b_stacked, self.output_slices)
        for s in stale:
            self._copy(s)
        self.seen = now
        return self


def _grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor,
                grouped: bool) -> torch.Tensor:
    """x's rows in groups (offsets: each group's end) times each group's matrix w[g]: torch's
    segmented product, or (sizes it refuses: rows not 16-byte aligned) a product per group."""
    if grouped:
        return torch._grouped_mm(x, w, offs=offsets)
    out = x.new_empty(x.shape[0], w.shape[2])
    start = 0
    for g, end in enumerate(offsets.tolist()):
        if end > start:
            torch.mm(x[start:end], w[g], out=out[start:end])
        start = end
    return out


def apply(step: Step, layer: Layer, y: torch.Tensor, x: torch.Tensor, scale: float) -> None:
    """y[rows] += scale * x[rows] @ A[slot].T @ B[slot].T for every row with an adapter slot."""
    if any(layer.ranks[g.slot] for g in step.small):
        _apply_small(step, layer, y, x, scale)
    for g in step.big:
        if layer.ranks[g.slot]:
            _apply_big(g, layer, y, x, scale)


def _apply_small(step: Step, layer: Layer, y: torch.Tensor, x: torch.Tensor,
                 scale: float) -> None:
    """The small groups: one segmented product for shrink and one per slice for expand, over
    float32 copies (a slot this layer's adapter does not target adds exact zeros)."""
    r = layer.b[0].shape[1]
    if len(step.small) == 1:  # one adapter: plain products
        g = step.small[0]
        rows = g.rows if isinstance(g.rows, torch.Tensor) else None
        xs = x[g.rows] if rows is None else x.index_select(0, rows)
        h = torch.mm(xs.float(), layer.a[g.slot])
        parts = [torch.mm(h[:, i * r:(i + 1) * r], b[g.slot]) for i, b in enumerate(layer.b)]
    else:
        g = None
        rows = step.order
        xs = x if rows is None else x.index_select(0, rows)
        offsets = step.offsets(len(layer.ranks))
        # torch._grouped_mm wants 16-byte aligned rows (4 float32): true of real models
        grouped = _HAS_GROUPED_MM and r % 4 == 0 and x.shape[1] % 4 == 0 and all(
            b.shape[2] % 4 == 0 for b in layer.b)
        h = _grouped_mm(xs.float(), layer.a, offsets, grouped)
        parts = [_grouped_mm(h[:, i * r:(i + 1) * r], b, offsets, grouped)
                 for i, b in enumerate(layer.b)]
    delta = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    if scale != 1.0:
        delta.mul_(scale)
    delta = delta.to(y.dtype)
    if g is None and step.inverse is not None:  # every row, permuted: put them back, add
        y.add_(delta.index_select(0, step.inverse))
    elif rows is not None:
        _scatter_add(y, rows, delta)
    elif g is not None:
        y[g.rows] += delta
    else:
        y.add_(delta)


def _apply_big(g: Group, layer: Layer, y: torch.Tensor, x: torch.Tensor, scale: float) -> None:
    """One slot's many rows: products in the model's dtype on views of vLLM's stacks trimmed
    to the slot's rank, the expand accumulated in place where the rows are a range."""
    r = layer.ranks[g.slot]
    xs = x[g.rows] if isinstance(g.rows, slice) else x.index_select(0, g.rows)
    offset = 0
    for a, b, size in zip(layer.a_stacked, layer.b_stacked, layer.output_slices, strict=True):
        h = torch.mm(xs.to(a.dtype), a[g.slot, 0, :r].T)
        if scale != 1.0:
            h.mul_(scale)
        w = b[g.slot, 0, :size, :r].T
        part = y[:, offset:offset + size]
        if isinstance(g.rows, slice) and y.dtype == b.dtype:
            part[g.rows].addmm_(h.to(b.dtype), w)
        else:
            delta = torch.mm(h.to(b.dtype), w).to(y.dtype)
            if isinstance(g.rows, slice):
                part[g.rows] += delta
            else:
                _scatter_add(part, g.rows, delta)
        offset += size


def _scatter_add(y: torch.Tensor, rows: torch.Tensor, delta: torch.Tensor) -> None:
    """y[rows] += delta for distinct rows. (index_add_ is the obvious op, but on bfloat16 with
    two threads it measured 10-20x slower than this gather, add and copy back.)"""
    y.index_copy_(0, rows, y.index_select(0, rows).add_(delta))


def _covered(x, y, a_stacked, b_stacked, output_slices) -> bool:
    return (
        x.dim() == 2 and y.dim() == 2 and y.shape[0] == x.shape[0]
        and y.shape[1] == sum(output_slices)
        and all(b.shape[2] == s for b, s in zip(b_stacked, output_slices, strict=True))
        and all(a.dim() == 4 and a.shape[1] == 1 for a in a_stacked)
    )


def _segmented(original):
    """PunicaWrapperCPU.add_lora_linear, segmented; anything it does not cover goes to vLLM's."""

    @functools.wraps(original)
    def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *,
                        buffer=None, **kwargs):
        y2 = y.view(-1, y.shape[-1])
        x2 = x.view(-1, x.shape[-1])
        if kwargs or not _covered(x2, y2, lora_a_stacked, lora_b_stacked, output_slices):
            return original(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices,
                            buffer=buffer, **kwargs)
        step = self.__dict__.get("_ragtune_step")
        if step is None or step.n != x2.shape[0]:
            indices = self.token_lora_indices
            if indices.numel() != x2.shape[0]:
                return original(self, y, x, lora_a_stacked, lora_b_stacked, scale,
                                output_slices, buffer=buffer, **kwargs)
            step = self._ragtune_step = Step.of(indices.tolist())
        if not step.groups:
            return None
        layers = self.__dict__.setdefault("_ragtune_layers", {})
        layer = layers.get(id(lora_a_stacked))
        if layer is None or layer.a_stacked is not lora_a_stacked:
            layer = Layer.of(lora_a_stacked, lora_b_stacked, output_slices)
        else:
            layer = layer.current()
        layers[id(lora_a_stacked)] = layer  # (it holds the tuple, so the id stays its own)
        apply(step, layer, y2, x2, scale)
        return None

    add_lora_linear.ragtune_segmented = True
    return add_lora_linear


def _invalidating_metadata(update_metadata):
    @functools.wraps(update_metadata)
    def update(self, mapping, lora_index_to_id, *args, **kwargs):
        update_metadata(self, mapping, lora_index_to_id, *args, **kwargs)
        self._ragtune_step = None
        slots = tuple(lora_index_to_id)
        before = self.__dict__.get("_ragtune_slots") or ()
        if before != slots:
            self._ragtune_slots = slots
            for slot, adapter in enumerate(slots):
                if slot >= len(before) or before[slot] != adapter:
                    bump(slot)

    return update


def _bumping(reset_lora):
    @functools.wraps(reset_lora)
    def reset(self, index):
        bump(index)
        _slot_ranks.pop(index, None)  # known again once an activation completes
        return reset_lora(self, index)

    return reset


def _adapter_rank(lora_model) -> int | None:
    """The largest rank among an adapter's modules (their A is rank x in), None if unknown."""
    ranks = []
    for weights in getattr(lora_model, "loras", {}).values():
        a = getattr(weights, "lora_a", None)
        for t in a if isinstance(a, (list, tuple)) else [a]:
            if isinstance(t, torch.Tensor) and t.dim() == 2:
                ranks.append(t.shape[0])
    return max(ranks) if ranks else None


def _recording_ranks(activate_adapter):
    @functools.wraps(activate_adapter)
    def activate(self, lora_id):
        done = activate_adapter(self, lora_id)
        if done:
            rank = _adapter_rank(self._registered_adapters.get(lora_id))
            if rank is not None:
                _slot_ranks[self.lora_index_to_id.index(lora_id)] = rank
        return done

    return activate


def _skipping_zeros(op, weights_at: int, cache: str):
    """`op` adds each slot's vocabulary LoRA (add_lora_logits: a (rows, vocab) product per slot
    on every step, nearly the lm_head's own cost with vLLM's stacks; add_lora_embedding: the
    new-token embeddings). ragtune refuses adapters that target lm_head or embed_tokens, so
    those weights are zeros: while no slot holds a nonzero one (checked once per slot change)
    there is nothing to add, exactly. `weights_at`: the B stack's position among the
    arguments after self."""

    @functools.wraps(op)
    def skipping(self, *args, **kwargs):
        weights = args[weights_at]
        slots = weights.shape[0]
        now = _generations(slots)
        seen = self.__dict__.get(cache)
        if seen is None or seen[0] is not weights or seen[1] != now:
            same = seen is not None and seen[0] is weights
            nonzero = list(seen[2]) if same else [None] * slots
            for s in range(slots):
                if not same or seen[1][s] != now[s]:
                    nonzero[s] = bool(torch.any(weights[s]))
            seen = (weights, now, nonzero)
            setattr(self, cache, seen)
        if not any(seen[2]):
            return None
        return op(self, *args, **kwargs)

    return skipping


def agrees(wrapper_cls, segmented, *, dtype=torch.bfloat16) -> tuple[bool, str]:
    """Run vLLM's add_lora_linear and the segmented one on the same batches: the rows with an
    adapter equal within the dtype's rounding, the rows without one bit-identical to before."""
    from vllm.lora.layers.utils import LoRAMapping

    gen = torch.Generator().manual_seed(0)
    n_in, slices, max_rank = 24, (16, 8, 8), 8
    ranks = {0: 4, 1: 8, 3: 2}  # slot -> rank; slot 2 empty
    a_stacked = tuple(torch.zeros(4, 1, max_rank, n_in, dtype=dtype) for _ in slices)
    b_stacked = tuple(torch.zeros(4, 1, size, max_rank, dtype=dtype) for size in slices)
    for slot, r in ranks.items():
        for a, b in zip(a_stacked, b_stacked, strict=True):
            a[slot, 0, :r] = (torch.randn(r, n_in, generator=gen) * 0.3).to(dtype)
            b[slot, 0, :, :r] = (torch.randn(b.shape[2], r, generator=gen) * 0.3).to(dtype)
    slot_ids = [11, 12, 13, 14]  # the adapter id in each slot
    batches = {
        "decode": ([11, 0, 14, 12, 12, 0, 11, 14, 13], False),
        "decode-one-adapter": ([12] * 5, False),
        "prefill": ([11] * 7 + [0] * 5 + [12] * 9 + [14] * 3, True),
    }
    for name, (ids, prefill) in batches.items():
        for rows in (len(ids), len(ids) * 10):  # the few rows of decode and more than SMALL_ROWS
            ids_n = (ids * (rows // len(ids)))[:rows]
            theirs, ours = wrapper_cls(256, 256, "cpu"), wrapper_cls(256, 256, "cpu")
            mapping = LoRAMapping(tuple(ids_n), tuple(ids_n), is_prefill=prefill)
            for w in (theirs, ours):
                w.update_metadata(mapping, list(slot_ids), 5, 32)
            x = torch.randn(rows, n_in, generator=gen).to(dtype)
            y0 = torch.randn(rows, sum(slices), generator=gen).to(dtype)
            y_theirs, y_ours = y0.clone(), y0.clone()
            wrapper_cls.add_lora_linear(theirs, y_theirs, x, a_stacked, b_stacked, 1.0, slices)
            segmented(ours, y_ours, x, a_stacked, b_stacked, 1.0, slices)
            base = torch.tensor([i == 0 for i in ids_n])
            if not torch.equal(y_ours[base], y0[base]):
                return False, f"{name} ({rows} rows): rows without an adapter were changed"
            tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
            # (vLLM's rows without an adapter are not compared: unpatched, it leaks into them)
            ours_f, theirs_f = y_ours[~base].float(), y_theirs[~base].float()
            if not torch.allclose(ours_f, theirs_f, rtol=tol, atol=tol):
                diff = (ours_f - theirs_f).abs().max().item()
                return False, f"{name} ({rows} rows): differs from vLLM's by {diff:.3g}"
    return True, "agrees"


def install(wrapper_module, cpu_wrapper) -> str | None:
    """Put the segmented add_lora_linear on PunicaWrapperCPU; the reason if not installed."""
    if os.environ.get(DISABLE_ENV) == "1":
        return f"disabled by {DISABLE_ENV}=1"
    if getattr(cpu_wrapper.add_lora_linear, "ragtune_segmented", False):
        return None
    from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA
    from vllm.lora.layers.logits_processor import LogitsProcessorWithLoRA
    from vllm.lora.layers.vocab_parallel_embedding import VocabParallelEmbeddingWithLoRA
    from vllm.lora.model_manager import LoRAModelManager

    segmented = _segmented(cpu_wrapper.add_lora_linear)
    update = _invalidating_metadata(cpu_wrapper.update_metadata)
    probe = type("ProbeWrapper", (cpu_wrapper,), {"update_metadata": update})
    try:
        ok, why = agrees(probe, segmented)
    except Exception as exc:  # a vLLM whose wrapper changed shape: keep its code
        ok, why = False, f"{type(exc).__name__}: {exc}"
    if not ok:
        return f"it does not agree with vLLM's add_lora_linear here ({why})"
    cpu_wrapper.update_metadata = update
    cpu_wrapper.add_lora_linear = segmented
    cpu_wrapper.add_lora_logits = _skipping_zeros(cpu_wrapper.add_lora_logits, 3,
                                                  "_ragtune_logits")
    cpu_wrapper.add_lora_embedding = _skipping_zeros(cpu_wrapper.add_lora_embedding, 2,
                                                     "_ragtune_embedding")
    for layer_cls in (BaseLinearLayerWithLoRA, LogitsProcessorWithLoRA,
                      VocabParallelEmbeddingWithLoRA):
        layer_cls.reset_lora = _bumping(layer_cls.reset_lora)
    LoRAModelManager.activate_adapter = _recording_ranks(LoRAModelManager.activate_adapter)
    return None
