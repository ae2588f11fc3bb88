"""The engine plugin's per-slot LoRA ops against a naive per-row reference (vLLM itself runs in
the engine's environment; its batched behaviour is tested against real vLLM in
tests/integration/test_lora_batch_isolation.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy" / "engine_plugin"))
from ragtune_engine.lora_fix import _grouped, _leaks  # noqa: E402

SLOTS, T = 3, 7
INDICES = torch.tensor([0, -1, 2, 2, -1, 0, 1])


def never(*args, **kwargs):
    raise AssertionError("the grouped op fell back to the original for a covered shape")


def reference(x, w, indices, out, rows_op):
    """Row by row: y_b = W[i_b] @ x_b for rows with an adapter; -1 rows untouched."""
    expected = out.clone()
    w = w.squeeze(1)
    for b, i in enumerate(indices.tolist()):
        if i >= 0:
            rows_op(expected, b, w[i] @ x[b])
    return expected


def test_shrink_per_slot_equals_per_row_and_skips_base_rows():
    x, w = torch.randn(T, 8), torch.randn(SLOTS, 1, 4, 8)
    out = torch.full((T, 4), 9.0)

    def put(e, b, y):
        e[b, :4] = 0.5 * y

    expected = reference(x, w, INDICES, out, put)
    _grouped("bgmv_shrink", never)(x, w, out, INDICES, 0.5)
    torch.testing.assert_close(out, expected)
    assert (out[INDICES < 0] == 9.0).all()


@pytest.mark.parametrize("add", [True, False])
def test_expand_per_slot_equals_per_row(add):
    x, w = torch.randn(T, 4), torch.randn(SLOTS, 1, 6, 4)
    out = torch.randn(T, 6)

    def put(e, b, y):
        e[b] = e[b] + y if add else y

    expected = reference(x, w, INDICES, out, put)
    _grouped("bgmv_expand", never)(x, w, out, INDICES, add)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("add", [True, False])
def test_expand_slice_per_slot_equals_per_row(add):
    x, w = torch.randn(T, 4), torch.randn(SLOTS, 1, 3, 4)
    out = torch.randn(T, 10)

    def put(e, b, y):
        e[b, 5:8] = e[b, 5:8] + y if add else y

    expected = reference(x, w, INDICES, out, put)
    _grouped("bgmv_expand_slice", never)(x, w, out, INDICES, 5, 3, add)
    torch.testing.assert_close(out, expected)


def test_uncovered_shapes_go_to_the_original_masked_and_no_op_leaks():
    calls = []

    def original(inputs, weights, output, indices, *args):
        calls.append(indices.tolist())
        output += 1.0  # what a leaking op does to every row

    out = torch.zeros(3, 2)
    # one input row broadcast over three output rows: the original's own case
    _grouped("bgmv_expand", original)(torch.ones(1, 2), torch.ones(2, 1, 2, 2), out,
                                      torch.tensor([-1, 0, -1]), True)
    assert calls and out[0].tolist() == [0.0, 0.0] and out[1].tolist() == [1.0, 1.0]
    for name, extra in {"bgmv_shrink": (1.0,), "bgmv_expand": (True,),
                        "bgmv_expand_slice": (0, 2, True)}.items():
        assert not _leaks(_grouped(name, never), extra)
