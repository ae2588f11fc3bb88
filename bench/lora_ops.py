"""LoRA ops of vLLM's CPU path, one model step: the forms tried for issue 18, against the base
model's own matrix products in the same run.

Runs in the engine's environment (it calls vLLM's PunicaWrapperCPU itself):

    .venv-engine/bin/python bench/lora_ops.py [--threads 1] [--rank 16] [--repeat 20]

For SmolLM2-135M's LoRA layers (qkv with 3 slices, o, gate_up with 2, down; 30 layers; adapters
of rank `--rank` in stacks padded to `--max-rank`, as the engine holds them), one step's
`add_lora_linear` calls for each batch shape:

- decode of 8 tokens with 1, 4 and 8 adapter slots in use (rows interleaved), and with half the
  rows on the base model;
- a prefill of 2,000 tokens on one adapter, and one split over 4.

Forms (the time printed is the step's LoRA time over the step's base matmul time, bf16, same
rows; lower is better, 0.10 means the adapters add 10%):

- `vllm`:     vLLM 0.32's add_lora_linear with its torch ops (gather a weight per token, einsum;
              it leaks adapters into rows without one, so it is shown for cost only, and not
              for prefill, where it takes minutes a step);
- `per-slot`: the same with ragtune's masked per-slot bgmv ops (lora_fix.py; served before);
- `few`:      lora_grouped.py's form for few rows: rows in slot order, torch._grouped_mm for
              shrink (the slices' A side by side) and for each slice's expand, float32 copies
              trimmed to the rank;
- `many`:     lora_grouped.py's form for many rows: per slot in use, products on views of vLLM's
              bf16 stacks trimmed to the rank, expand accumulated in place (addmm_);
- `served`:   what lora_grouped.py serves (`few` for a slot's rows up to SMALL_ROWS, `many`
              above);
- `loop32`, `loop16`: sorted groups + torch.mm, one product per slot for shrink and one for
              expand (B block-diagonal over the slices), on float32 or bfloat16 copies;
- `wide`:     one product of the rows against every slot's A, masked to each row's own slot,
              one expand product (float32);
- `bmm`:      a padded bmm over slots (each slot's rows padded to the largest group; float32);
- `gmm16`:    torch._grouped_mm on bfloat16 copies, B block-diagonal (oneDNN/AMX is torch's
              bf16 matmul path).

Every form's output is checked against a float64 per-row reference before it is timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "deploy" / "engine_plugin"), str(REPO)]

from ragtune_engine import lora_fix, lora_grouped  # noqa: E402

from tests.helpers.lora_reference import per_row  # noqa: E402

HIDDEN, INTER, KV = 576, 1536, 192
LAYERS = 30
# (name, input size, output slices)
MODULES = [("qkv", HIDDEN, (HIDDEN, KV, KV)), ("o", HIDDEN, (HIDDEN,)),
           ("gate_up", HIDDEN, (INTER, INTER)), ("down", INTER, (HIDDEN,))]


def make_layer(slots: int, rank: int, max_rank: int, n_in: int, out: tuple, gen):
    dtype = torch.bfloat16
    a = tuple(torch.zeros(slots, 1, max_rank, n_in, dtype=dtype) for _ in out)
    b = tuple(torch.zeros(slots, 1, size, max_rank, dtype=dtype) for size in out)
    for s in range(slots):
        for ai, bi in zip(a, b, strict=True):
            ai[s, 0, :rank] = (torch.randn(rank, n_in, generator=gen) / n_in ** 0.5).to(dtype)
            bi[s, 0, :, :rank] = (torch.randn(bi.shape[2], rank, generator=gen) * 0.1).to(dtype)
    base = torch.randn(sum(out), n_in, generator=gen).to(dtype)
    return a, b, base


class Fused:
    """A layer's adapters with B block-diagonal over the slices (one expand product for q, k and
    v), as the alternatives below take them: (slots, in, k*r) and (slots, k*r, out)."""

    def __init__(self, layer, dtype=torch.float32):
        r = layer.b[0].shape[1]
        k, out = len(layer.b), sum(b.shape[2] for b in layer.b)
        self.ranks = layer.ranks
        self.a = layer.a.to(dtype)
        self.b = torch.zeros(layer.a.shape[0], k * r, out, dtype=dtype)
        offset = 0
        for i, b in enumerate(layer.b):
            self.b[:, i * r:(i + 1) * r, offset:offset + b.shape[2]] = b
            offset += b.shape[2]


def per_slot_loop(step, layer, y, x, dtype):
    """Sorted groups + torch.mm: a product per slot in use for shrink and one for expand, on the
    fused weights (`dtype`: float32, or the model's bfloat16)."""
    for g in step.groups:
        if not layer.ranks[g.slot]:
            continue
        xs = x[g.rows] if isinstance(g.rows, slice) else x.index_select(0, g.rows)
        a, b = layer.a[g.slot].to(dtype), layer.b[g.slot].to(dtype)
        d = torch.mm(torch.mm(xs.to(dtype), a), b).to(y.dtype)
        if isinstance(g.rows, slice):
            y[g.rows] += d
        else:
            lora_grouped._scatter_add(y, g.rows, d)


def masked_wide(step, layer, y, x):
    """One shrink product of the rows against every slot's A, a 0/1 mask keeping each row's own
    slot's block, one expand product (float32)."""
    slots, n_in, width = layer.a.shape
    a = layer.a.permute(1, 0, 2).reshape(n_in, slots * width)
    b = layer.b.reshape(slots * width, -1)
    xs = x if step.order is None else x.index_select(0, step.order)
    mask = torch.zeros(sum(step.counts.values()), slots * width)
    start = 0
    for slot in range(slots):
        count = step.counts.get(slot, 0)
        mask[start:start + count, slot * width:(slot + 1) * width] = 1
        start += count
    d = torch.mm(torch.mm(xs.float(), a) * mask, b).to(y.dtype)
    if step.order is None:
        y.add_(d)
    else:
        lora_grouped._scatter_add(y, step.order, d)


def padded_bmm(step, layer, y, x):
    """Rows sorted by slot, every slot's group padded to the largest; one bmm for shrink, one
    for expand (float32)."""
    rows = [g.rows if isinstance(g.rows, torch.Tensor) else torch.arange(g.rows.start,
                                                                         g.rows.stop)
            for g in step.groups]
    longest = max(len(r) for r in rows)
    xs = torch.zeros(len(rows), longest, x.shape[1])
    for i, r in enumerate(rows):
        xs[i, :len(r)] = x.index_select(0, r).float()
    slots = torch.tensor([g.slot for g in step.groups])
    a, b = layer.a.index_select(0, slots), layer.b.index_select(0, slots)
    d = torch.bmm(torch.bmm(xs, a), b).to(y.dtype)
    for i, r in enumerate(rows):
        lora_grouped._scatter_add(y, r, d[i, :len(r)])


def grouped_mm_in(dtype):
    def run(step, layer, y, x):
        xs = x if step.order is None else x.index_select(0, step.order)
        off = step.offsets(layer.a.shape[0])
        h = torch._grouped_mm(xs.to(dtype), layer.a.to(dtype), offs=off)
        d = torch._grouped_mm(h, layer.b.to(dtype), offs=off).to(y.dtype)
        if step.order is None:
            y.add_(d)
        else:
            lora_grouped._scatter_add(y, step.order, d)
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--max-rank", type=int, default=64, help="the engine's --max-lora-rank")
    p.add_argument("--max-loras", type=int, default=8)
    p.add_argument("--repeat", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from vllm.lora.layers.utils import LoRAMapping
    from vllm.lora.punica_wrapper import punica_cpu

    ops_modules = [m for m in list(sys.modules.values())
                   if getattr(m, "__name__", "").startswith("vllm") and hasattr(m, "bgmv_shrink")]
    vllm_ops = {(m, name): getattr(m, name) for m in ops_modules for name in lora_fix._OPS}
    lora_fix.register()  # the per-slot bgmv ops and, where it agrees, the segmented wrapper
    ragtune_ops = {key: getattr(*key) for key in vllm_ops}
    segmented = punica_cpu.PunicaWrapperCPU.add_lora_linear
    if not getattr(segmented, "ragtune_segmented", False):
        print("the segmented add_lora_linear was not installed (see the warning above)")
        return 1
    vllm_linear = segmented.__wrapped__

    gen = torch.Generator().manual_seed(0)
    slots = args.max_loras
    # Every layer its own weights, as in the model: a step streams them all from memory (one
    # layer's, reused 30 times, would stay in cache and flatter whatever reads more bytes).
    layers = [(name, n_in, out, *make_layer(slots, args.rank, args.max_rank, n_in, out, gen))
              for _ in range(LAYERS) for name, n_in, out in MODULES]

    def batch(tokens: int, used: int, base_every: int = 0, contiguous: bool = False):
        """vLLM's adapter ids of the rows (0: none): `used` slots, interleaved or in runs."""
        if contiguous:
            ids = [1 + (i * used) // tokens for i in range(tokens)]
        else:
            ids = [1 + i % used for i in range(tokens)]
        return [0 if base_every and i % base_every == 0 else s for i, s in enumerate(ids)]

    shapes = {
        "decode 8, 1 slot": (batch(8, 1), False),
        "decode 8, 4 slots": (batch(8, 4), False),
        "decode 8, 8 slots": (batch(8, 8), False),
        "decode 8, 4 slots + base rows": (batch(8, 4, base_every=2), False),
        "decode 32, 8 slots": (batch(32, 8), False),
        "decode 64, 8 slots": (batch(64, 8), False),
        "prefill 256, 2 slots": (batch(256, 2, contiguous=True), True),
        "prefill 2000, 1 slot": (batch(2000, 1, contiguous=True), True),
        "prefill 2000, 4 slots": (batch(2000, 4, contiguous=True), True),
    }
    forms = ["vllm", "per-slot", "few", "many", "served", "loop32", "loop16", "wide",
             "bmm", "gmm16"]
    print(f"torch {torch.__version__}, {args.threads} thread(s), rank {args.rank} in stacks "
          f"of rank {args.max_rank}, {slots} slots; LoRA time / base matmul time per step "
          f"(median of {args.repeat})")
    print(f"{'batch':34}" + "".join(f"{f:>8}" for f in forms))
    def one_shape(shape: str, ids: list[int], prefill: bool) -> None:
        n = len(ids)
        wrapper = punica_cpu.PunicaWrapperCPU(4096, 4096, "cpu")
        wrapper.update_metadata(LoRAMapping(tuple(ids), tuple(ids), is_prefill=prefill),
                                list(range(1, slots + 1)), slots + 1, 32)
        indices = [i - 1 for i in ids]
        steps = {}  # a step's groups are split into small and big when it is made
        for form, small_rows in (("few", 10 ** 9), ("many", -1),
                                 ("served", lora_grouped.SMALL_ROWS)):
            saved, lora_grouped.SMALL_ROWS = lora_grouped.SMALL_ROWS, small_rows
            try:
                steps[form] = lora_grouped.Step.of(indices)
            finally:
                lora_grouped.SMALL_ROWS = saved
        step = steps["few"]  # the alternatives take every row in slot order
        inputs = {n_in: torch.randn(n, n_in, generator=gen).to(torch.bfloat16)
                  for _, n_in, _ in MODULES}
        xs = [inputs[n_in] for _, n_in, _, _, _, _ in layers]
        built = [lora_grouped.Layer.of(a, b, out) for _, _, out, a, b, _ in layers]
        fused = [(Fused(layer), Fused(layer, torch.bfloat16)) for layer in built]
        alternatives = {
            "loop32": lambda st, layer, y, x: per_slot_loop(st, layer, y, x, torch.float32),
            "wide": masked_wide, "bmm": padded_bmm,
        }

        def run(form, check=False):
            for i, ((name, _, out, a, b, _), x, layer, (f32, f16)) in enumerate(
                    zip(layers, xs, built, fused, strict=True)):
                if check and i == len(MODULES):
                    return  # one layer checked is every module's shape checked
                y = torch.zeros(n, sum(out), dtype=torch.bfloat16)
                if form == "vllm":
                    for (m, op), fn in vllm_ops.items():
                        setattr(m, op, fn)
                    try:
                        vllm_linear(wrapper, y, x, a, b, 1.0, out)
                    finally:
                        for (m, op), fn in ragtune_ops.items():
                            setattr(m, op, fn)
                elif form == "per-slot":
                    vllm_linear(wrapper, y, x, a, b, 1.0, out)
                elif form in ("few", "many", "served"):
                    lora_grouped.apply(steps[form], layer, y, x, 1.0)
                elif form == "loop16":  # on bfloat16 copies made once, as if served
                    per_slot_loop(step, f16, y, x, torch.bfloat16)
                elif form == "gmm16":
                    grouped_mm_in(torch.bfloat16)(step, f16, y, x)
                else:
                    alternatives[form](step, f32, y, x)
                if check and form != "vllm":
                    ref = per_row(torch.zeros_like(y), x, a, b, out, indices)
                    err = (y.double() - ref).abs().max().item()
                    scale = ref.abs().max().item()
                    if err > 0.02 * scale + 1e-3:
                        raise SystemExit(f"{form} on {shape}, {name}: off the per-row reference "
                                         f"by {err:.3g} (scale {scale:.3g})")

        def base_step():
            for (_, _, _, _, _, w), x in zip(layers, xs, strict=True):
                torch.mm(x, w.T)

        def timed(fn) -> float:
            fn()
            samples = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
            return statistics.median(samples)

        base = timed(base_step)
        cells = []
        for form in forms:
            if form == "vllm" and n > 64 or form == "per-slot" and n > 256:
                cells.append(float("nan"))  # a weight gathered per token (or per-slot
                continue  # padded products): minutes of running for what the table shows
            run(form, check=True)
            cells.append(timed(lambda form=form: run(form)) / base)
        print(f"{shape:34}" + "".join(f"{c:>8.2f}" if c == c else f"{'-':>8}" for c in cells)
              + f"   (base {base * 1e3:.1f} ms/step)")

    for shape, (ids, prefill) in shapes.items():
        one_shape(shape, ids, prefill)
    return 0


if __name__ == "__main__":
    sys.exit(main())
