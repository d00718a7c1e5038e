"""FLOP counts include attention on a CPU (torch has no formula for its CPU SDPA kernel)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nestar.bench.flops import count_flops, register_attention_flops
from nestar.layers.transformer import Attention

B, H, L, D = 3, 2, 5, 8  # batch, heads, queries, head dim
W = H * D  # width


def _attention_call(mask: torch.Tensor | None = None):
    torch.manual_seed(0)
    attn = Attention(W, H).eval()
    x = torch.randn(B, L, W)

    def fn():
        with torch.no_grad():
            return attn(x, mask)

    return fn


def test_attention_layer_matches_a_hand_count():
    linears = 2 * B * L * W * (3 * W) + 2 * B * L * W * W  # qkv and output projections (bias adds not counted)
    sdpa = 2 * (2 * B * H * L * L * D)  # QK^T and (scores)V, keys = queries = L
    assert count_flops(_attention_call()) == linears + sdpa


def test_cross_attention_with_more_keys_than_queries():
    S = 7
    q, k, v = torch.randn(B, H, L, D), torch.randn(B, H, S, D), torch.randn(B, H, S, D)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == 2 * (2 * B * H * L * S * D)


@pytest.mark.parametrize("mask", [None, "bool", "causal"])
def test_cpu_kernel_counts_what_the_math_path_counts(mask):
    m = {None: None, "bool": torch.rand(L, L) > 0.3, "causal": torch.ones(L, L, dtype=torch.bool).tril()}[mask]
    if m is not None:
        m[:, 0] = True  # no fully masked row
    fn = _attention_call(m)
    register_attention_flops()
    with FlopCounterMode(display=False) as fused:
        fn()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as math:
        fn()
    assert torch.ops.aten._scaled_dot_product_flash_attention_for_cpu in fused.get_flop_counts()["Global"]
    assert fused.get_total_flops() == math.get_total_flops() > 0  # masks get no discount, as in torch's CUDA formulas


def test_backward_on_cpu_counts_attention():
    q, k, v = (torch.randn(B, H, L, D, requires_grad=True) for _ in range(3))
    counted = count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    matmul = 2 * B * H * L * L * D
    assert counted == 2 * matmul + 5 * matmul  # torch's backward convention: 4 gradient matmuls + the recomputed scores


def test_registering_is_idempotent():
    register_attention_flops()
    assert register_attention_flops() == []
    assert count_flops(_attention_call()) == count_flops(_attention_call())
