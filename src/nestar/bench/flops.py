"""FLOP counting that includes attention on every device.

torch's `FlopCounterMode` has formulas for the CUDA attention kernels (flash, memory-efficient,
cuDNN) but none for the kernel that `F.scaled_dot_product_attention` runs on a CPU
(`aten._scaled_dot_product_flash_attention_for_cpu`), nor for the XPU/privateuse1 and MPS ones:
there attention counted as 0 FLOPs (mar-s: 1,186 instead of 1,395 GFLOPs per image).
`register_attention_flops` gives those kernels torch's own SDPA formula, so a count is the same
whatever kernel runs, and the same as the math path (softmax(QK^T)V as two batched matmuls):
2*B*H*L*S*D for QK^T plus 2*B*H*L*S*Dv for the product with V. As in torch's CUDA formulas, a
causal or boolean mask gets no discount (the full score matrix is counted), and softmax, scaling
and masking (element-wise work) are not counted.

    python -m nestar.bench.flops nestar-s mar-s --dtype bfloat16   # FLOPs per image only (no timing)
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

# Kernels that take (query, key, value, ...) and have no formula in torch (2.13).
_FORWARD_KERNELS = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable",
    "_scaled_dot_product_attention_math_for_mps",
)
# Their backward kernels take (grad_out, query, key, value, ...).
_BACKWARD_KERNELS = (
    "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_fused_attention_overrideable_backward",
)


def _attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Forward SDPA FLOPs from the shapes (torch's formula; arguments as shapes, see register_flop_formula)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _attention_backward_flop(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    """Backward SDPA FLOPs from the shapes (torch's formula)."""
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def register_attention_flops() -> list[str]:
    """Register the SDPA formula for the attention kernels torch counts as 0; idempotent.

    Kernels that already have a formula (ours from an earlier call, or torch's own in a later
    release) are left alone. Returns the names registered by this call. Counters created after the
    call use the formulas (`FlopCounterMode` copies the registry when it is constructed).
    """
    added = []
    for names, formula in (
        (_FORWARD_KERNELS, _attention_flop),
        (_BACKWARD_KERNELS, _attention_backward_flop),
    ):
        for name in names:
            op = getattr(torch.ops.aten, name, None)
            if op is None or op in flop_registry:
                continue
            register_flop_formula(op)(formula)
            added.append(name)
    return added


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` (matmul, attention and convolution ops), attention included on every device."""
    register_attention_flops()
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()
