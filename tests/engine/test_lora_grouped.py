"""The engine plugin's segmented LoRA (ragtune_engine/lora_grouped.py) against a float64 per-row
reference, and, in the engine's own environment, against vLLM's PunicaWrapperCPU. Through the
real engine, tests/integration/test_lora_batch_isolation.py serves mixed batches with it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

PLUGIN = Path(__file__).resolve().parents[2] / "deploy" / "engine_plugin"
sys.path.insert(0, str(PLUGIN))
from ragtune_engine import lora_grouped as lg  # noqa: E402

from tests.helpers.lora_reference import per_row  # noqa: E402
from tests.helpers.server import ENGINE_PYTHON  # noqa: E402

N_IN, SLICES, MAX_RANK, SLOTS = 16, (16, 8, 8), 8, 4
RANKS = {0: 4, 1: 8, 3: 2}  # slot 2 stays empty


def stacks(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = tuple(torch.zeros(SLOTS, 1, MAX_RANK, N_IN, dtype=dtype) for _ in SLICES)
    b = tuple(torch.zeros(SLOTS, 1, size, MAX_RANK, dtype=dtype) for size in SLICES)
    for slot, r in RANKS.items():
        for ai, bi in zip(a, b, strict=True):
            ai[slot, 0, :r] = torch.randn(r, N_IN, generator=gen).to(dtype)
            bi[slot, 0, :, :r] = torch.randn(bi.shape[2], r, generator=gen).to(dtype)
    return a, b


def reference(y, x, a, b, indices, scale):
    return per_row(y, x, a, b, SLICES, indices, scale)


BATCHES = {
    "decode, interleaved slots and base rows": [0, -1, 3, 1, 1, -1, 0, 3, 2],
    "decode, one adapter": [1] * 5,
    "decode, every row an adapter": [0, 1, 3, 0, 1, 3],
    "prefill, runs": [0] * 7 + [-1] * 5 + [1] * 9 + [3] * 3,
    "only base rows": [-1] * 4,
    "a prefill beside decodes": [0, 3] + [1] * 70 + [-1, 3, 0],
}


@pytest.mark.parametrize("form", ["few rows", "few rows, a product per group", "many rows",
                                  "as served"])
@pytest.mark.parametrize("batch", list(BATCHES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_form_equals_the_per_row_reference_and_leaves_base_rows_alone(
        form, batch, dtype, monkeypatch):
    if form != "as served":  # (as served: SMALL_ROWS splits the prefill from the decodes)
        monkeypatch.setattr(lg, "SMALL_ROWS", -1 if form == "many rows" else 10 ** 6)
        monkeypatch.setattr(lg, "_HAS_GROUPED_MM", form == "few rows")
    indices = BATCHES[batch]
    a, b = stacks(dtype)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(len(indices), N_IN, generator=gen).to(dtype)
    y = torch.randn(len(indices), sum(SLICES), generator=gen).to(dtype)
    before = y.clone()
    lg.apply(lg.Step.of(indices), lg.Layer.of(a, b, SLICES), y, x, 0.5)
    expected = reference(before, x, a, b, indices, 0.5)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(y.double(), expected, rtol=tol, atol=tol * expected.abs().max())
    base = torch.tensor([i < 0 for i in indices])
    assert torch.equal(y[base], before[base])  # bit for bit, not merely close


def test_steps_group_rows_once_as_ranges_or_indices(monkeypatch):
    step = lg.Step.of([0, 0, -1, 2, 2, 2, 0])
    assert [g.slot for g in step.groups] == [0, 2]
    assert step.groups[0].rows.tolist() == [0, 1, 6]  # not contiguous: indices
    assert step.groups[1].rows == slice(3, 6)  # contiguous: a view, nothing gathered
    assert step.order.tolist() == [0, 1, 6, 3, 4, 5] and step.big == []
    assert step.offsets(4).tolist() == [3, 3, 6, 6]  # slot 1 and 3: empty groups
    every = lg.Step.of([1, 1, 3])
    assert every.order is None and every.groups[0].rows == slice(0, 2)
    assert lg.Step.of([-1, -1]).groups == []
    permuted = lg.Step.of([1, 0, 1, 0])  # every row, out of slot order: added back in place
    assert permuted.order.tolist() == [1, 3, 0, 2] and permuted.inverse.tolist() == [2, 0, 3, 1]
    assert step.inverse is None  # a base row among them: scattered back instead
    monkeypatch.setattr(lg, "SMALL_ROWS", 2)  # a prefill of slot 1 beside decodes of 0 and 3
    mixed = lg.Step.of([0, 1, 1, 1, -1, 3])
    assert [g.slot for g in mixed.big] == [1] and [g.slot for g in mixed.small] == [0, 3]
    assert mixed.order.tolist() == [0, 5] and mixed.offsets(4).tolist() == [1, 1, 1, 2]


def test_layers_keep_the_rank_in_use_with_slices_fused():
    a, b = stacks()
    layer = lg.Layer.of(a, b, SLICES)
    assert layer.ranks == [4, 8, 0, 2]
    # trimmed from the stacks' rank 8 only to the largest in use, three slices side by side
    assert layer.a.shape == (SLOTS, N_IN, 3 * 8) and layer.a.dtype == torch.float32
    assert [t.shape for t in layer.b] == [(SLOTS, 8, size) for size in SLICES]
    torch.testing.assert_close(layer.b[1][1, :8], b[1][1, 0].T.float())
    torch.testing.assert_close(layer.a[3, :, 8:10], a[1][3, 0, :2].T.float())
    unused = tuple(torch.zeros_like(t) for t in a), tuple(torch.zeros_like(t) for t in b)
    empty = lg.Layer.of(*unused, SLICES)
    assert empty.ranks == [0] * SLOTS and empty.a is None


class FakeWrapper:
    """What the segmented add_lora_linear reads of vLLM's PunicaWrapperCPU."""

    def __init__(self):
        self.token_lora_indices = torch.tensor([])
        self.vllm_calls = 0

    def update_metadata(self, mapping, lora_index_to_id, *args):
        self.token_lora_indices = torch.tensor(mapping, dtype=torch.long)

    def add_lora_linear(self, *args, **kwargs):
        self.vllm_calls += 1


def test_the_wrapper_rebuilds_steps_on_new_metadata_and_weights_on_a_reset():
    cls = type("W", (FakeWrapper,), {})
    cls.update_metadata = lg._invalidating_metadata(FakeWrapper.update_metadata)
    cls.add_lora_linear = lg._segmented(FakeWrapper.add_lora_linear)
    w = cls()
    a, b = stacks()
    x = torch.randn(3, N_IN)

    def run(indices_now):
        y = torch.zeros(3, sum(SLICES))
        w.add_lora_linear(y, x, a, b, 1.0, SLICES)
        torch.testing.assert_close(y.double(), reference(torch.zeros(3, sum(SLICES)), x, a, b,
                                                         indices_now, 1.0),
                                   rtol=1e-5, atol=1e-5)

    w.update_metadata([0, 1, 3], [10, 11, 12, 13])
    run([0, 1, 3])
    w.update_metadata([3, -1, 0], [10, 11, 12, 13])  # a new step: new groups
    run([3, -1, 0])
    for ai in a:  # vLLM's set_lora writes in place, after its reset_lora
        ai[0, 0, :4] = torch.randn(4, N_IN)
    lg.bump(0)  # what the patched reset_lora does
    run([3, -1, 0])
    w.update_metadata([0, 0, 0], [13, 11, 12, 10])  # another adapter in slot 0: rebuilt too
    for ai in a:
        ai[0, 0, :4] = torch.randn(4, N_IN)
    run([0, 0, 0])
    assert w.vllm_calls == 0
    # a shape it does not cover goes to vLLM's code
    w.add_lora_linear(torch.zeros(3, 5), x, a, b, 1.0, SLICES)
    assert w.vllm_calls == 1


AGAINST_VLLM = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[1])
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    from ragtune_engine import lora_grouped as lg

    probe = type("Probe", (PunicaWrapperCPU,),
                 {"update_metadata": lg._invalidating_metadata(PunicaWrapperCPU.update_metadata)})
    seg = lg._segmented(PunicaWrapperCPU.add_lora_linear)
    for dtype in (torch.bfloat16, torch.float32):
        for small in (-1, 10 ** 6):
            lg.SMALL_ROWS = small
            ok, why = lg.agrees(probe, seg, dtype=dtype)
            print(dtype, small, ok, why)
            assert ok, why

    def drops_slot_3(self, y, x, a, b, scale, slices, **kw):
        a = tuple(t.clone() for t in a)
        for t in a:
            t[3] = 0
        return seg(self, y, x, a, b, scale, slices, **kw)

    def writes_base_rows(self, y, x, *args, **kw):
        seg(self, y, x, *args, **kw)
        y[self.token_lora_indices < 0] += 1e-3

    for broken, expect in ((drops_slot_3, "differs"), (writes_base_rows, "were changed")):
        ok, why = lg.agrees(probe, broken)
        print(broken.__name__, ok, why)
        assert not ok and expect in why, why

    # the plugin's entry point installs it all, once, however often vLLM runs it
    from ragtune_engine import lora_fix
    from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA
    from vllm.lora.model_manager import LoRAModelManager
    for _ in range(2):
        lora_fix.register()
    assert PunicaWrapperCPU.add_lora_linear.ragtune_segmented
    assert not hasattr(PunicaWrapperCPU.add_lora_linear.__wrapped__, "__wrapped__")
    for patched in (PunicaWrapperCPU.update_metadata, PunicaWrapperCPU.add_lora_embedding,
                    BaseLinearLayerWithLoRA.reset_lora, LoRAModelManager.activate_adapter):
        assert hasattr(patched, "__wrapped__") and not hasattr(patched.__wrapped__,
                                                               "__wrapped__"), patched
    print("OK")
""")


def test_it_agrees_with_vllms_wrapper_and_the_check_catches_a_wrong_one():
    if not ENGINE_PYTHON.exists():
        pytest.skip(f"no engine environment at {ENGINE_PYTHON}: run `make install`")
    done = subprocess.run([str(ENGINE_PYTHON), "-c", AGAINST_VLLM, str(PLUGIN)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), (
        done.stdout + done.stderr[-3000:])


def test_a_slot_refreshes_alone_and_a_larger_rank_rebuilds_the_copy(monkeypatch):
    monkeypatch.setattr(lg, "SMALL_ROWS", 10 ** 6)  # the form that reads the copy
    a, b = stacks()
    for t in (*a, *b):
        t[1] = 0  # slot 1 (rank 8) empty: the copy is 3 x rank 4 wide
    layer = lg.Layer.of(a, b, SLICES)
    assert layer.a.shape[2] == 3 * 4
    x = torch.randn(4, N_IN)
    indices = [0, 3, 2, 2]

    def check(layer):
        y = torch.zeros(4, sum(SLICES))
        lg.apply(lg.Step.of(indices), layer, y, x, 1.0)
        torch.testing.assert_close(y.double(), reference(torch.zeros(4, sum(SLICES)), x, a, b,
                                                         indices, 1.0), rtol=1e-5, atol=1e-5)

    gen = torch.Generator().manual_seed(3)
    for ai, bi in zip(a, b, strict=True):  # a rank-3 adapter arrives in slot 2
        ai[2, 0, :3] = torch.randn(3, N_IN, generator=gen)
        bi[2, 0, :, :3] = torch.randn(bi.shape[2], 3, generator=gen)
    assert layer.current() is layer  # not told: the copy is unchanged (slot 2 adds nothing)
    lg.bump(2)
    same = layer.current()
    assert same is layer and layer.ranks == [4, 0, 3, 2]
    check(layer)
    for ai, bi in zip(a, b, strict=True):  # then a rank-8 one: wider than the copy
        ai[2, 0] = torch.randn(MAX_RANK, N_IN, generator=gen)
        bi[2, 0] = torch.randn(bi.shape[2], MAX_RANK, generator=gen)
    lg.bump(2)
    wider = layer.current()
    assert wider is not layer and wider.a.shape[2] == 3 * MAX_RANK
    check(wider)


def test_the_vocabulary_lora_is_skipped_only_while_every_slot_is_zero():
    calls = []

    class W:
        def add_lora_logits(self, y, x, a, b, scale):
            calls.append(1)

    W.add_lora_logits = lg._skipping_zeros(W.add_lora_logits, 3, "_cache")
    w = W()
    a, b = torch.zeros(3, 1, 4, 8), torch.zeros(3, 1, 32, 4)
    w.add_lora_logits(None, None, a, b, 1.0)
    assert calls == []  # nothing to add
    b[1, 0, 5, 2] = 0.1  # an adapter with an lm_head delta arrives in slot 1
    lg.bump(1)
    w.add_lora_logits(None, None, a, b, 1.0)
    assert calls == [1]
    b[1].zero_()  # and leaves
    lg.bump(1)
    w.add_lora_logits(None, None, a, b, 1.0)
    assert calls == [1]


def test_activation_records_the_adapters_rank_and_a_reset_forgets_it(monkeypatch):
    monkeypatch.setattr(lg, "_slot_ranks", {})

    class Weights:
        def __init__(self, *ranks):
            self.lora_a = [torch.zeros(r, N_IN) for r in ranks] if len(ranks) > 1 else (
                torch.zeros(ranks[0], N_IN))

    class Model:  # a rank_pattern adapter: modules of rank 4 and, packed, 4 and 6
        loras = {"o_proj": Weights(4), "qkv_proj": Weights(4, 6, 4)}

    class Manager:
        lora_index_to_id = [None, None, 7]
        _registered_adapters = {7: Model()}

        def activate_adapter(self, lora_id):
            return True

    Manager.activate_adapter = lg._recording_ranks(Manager.activate_adapter)
    Manager().activate_adapter(7)
    assert lg._slot_ranks == {2: 6}
    lg._slot_ranks.update({0: 4, 1: 8, 3: 2})  # the others, as their activations left them

    def no_scan(*args):
        raise AssertionError("the stacks were scanned for a rank vLLM told")

    monkeypatch.setattr(lg, "_rank", no_scan)
    a, b = stacks()
    assert lg.Layer.of(a, b, SLICES).ranks == [4, 8, 6, 2]

    class Layer:
        def reset_lora(self, index):
            pass

    Layer.reset_lora = lg._bumping(Layer.reset_lora)
    Layer().reset_lora(2)
    assert 2 not in lg._slot_ranks and lg._slot_ranks == {0: 4, 1: 8, 3: 2}
