"""The LoRA product row by row in float64: what the engine plugin's segmented forms are checked
against (tests/engine and bench/lora_ops.py). Needs torch only, so it runs in either environment."""

from __future__ import annotations

import torch


def per_row(y, x, a_stacked, b_stacked, slices, indices, scale: float = 1.0) -> torch.Tensor:
    """y (as float64) plus, for each row b with a slot i_b >= 0, scale * B[i_b] A[i_b] x_b per
    slice of the output; rows tagged -1 are left as they were."""
    y = y.double().clone()
    for row, slot in enumerate(indices):
        if slot < 0:
            continue
        offset = 0
        for a, b, size in zip(a_stacked, b_stacked, slices, strict=True):
            h = scale * (a[slot, 0].double() @ x[row].double())
            y[row, offset:offset + size] += b[slot, 0].double() @ h
            offset += size
    return y
