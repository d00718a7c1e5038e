"""Baselines (raster AR, MAR, next-scale): their own step counts, leaks, schedules and previews
(the invariants every family shares: tests/test_contract.py)."""
from __future__ import annotations

import math

import pytest
import torch

from nestar.heads import FlowHeadConfig
from nestar.models.masked_ar import mask_from_orders, mask_schedule, random_orders
from nestar.models.mar import MAR, MARConfig
from nestar.models.nextscale import NextScaleAR, NextScaleConfig
from nestar.models.raster import RasterAR, RasterARConfig

TINY_HEAD = dict(head=FlowHeadConfig(width=32, depth=1, num_steps=3))
KINDS = ("raster", "mar", "nextscale")


def tiny(kind: str, grid: int = 4, **kw):
    base = dict(grid_size=grid, token_dim=4, num_classes=10, dim=32, head_dim=16, **TINY_HEAD)
    if kind == "raster":
        return RasterAR(RasterARConfig(**{**base, "depth": 2, "z_dim": 32, **kw}))
    if kind == "mar":
        return MAR(MARConfig(**{**base, "enc_depth": 1, "dec_depth": 1, "buffer_size": 2, "num_iter": 8, **kw}))
    return NextScaleAR(NextScaleConfig(**{**base, "depth": 2, "z_dim": 32, **kw}))


def randomised(model, std: float = 0.2):
    """Give the zero-initialised head outputs real weights so sampling depends on z."""
    torch.manual_seed(123)
    with torch.no_grad():
        for mod in (model.head.out, model.head.final_ada[1], *[b.ada[1] for b in model.head.blocks]):
            mod.weight.normal_(0, std)
            mod.bias.normal_(0, std)
    return model.eval()


def backbone(model):
    return model.backbone if isinstance(model, MAR) else model.transformer


# ----- step counts --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,grid,kw,expected", [
    ("raster", 4, {}, 16), ("raster", 2, {"num_cond_tokens": 3}, 4),
    ("mar", 4, {"num_iter": 64}, 16), ("mar", 8, {"num_iter": 64}, 64), ("mar", 8, {"num_iter": 8}, 8),
    ("nextscale", 1, {}, 1), ("nextscale", 8, {}, 4), ("nextscale", 16, {}, 5),
])
def test_step_count_and_backbone_calls(kind, grid, kw, expected):
    model = tiny(kind, grid, **kw).eval()
    assert model.sequential_steps() == expected
    calls = []
    backbone(model).register_forward_hook(lambda *a: calls.append(1))
    out = model.sample(torch.tensor([1]), num_steps=1)
    assert len(calls) == out.sequential_steps == expected
    assert out.tokens.shape == (1, grid * grid, 4)
    assert torch.isfinite(out.tokens).all()


def test_nextscale_needs_power_of_two_grid():
    with pytest.raises(ValueError, match="power of two"):
        tiny("nextscale", 6)


# ----- no leak ------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_cond_tokens", [1, 2])
def test_raster_no_leak_condition_i_ignores_tokens_from_i_on(num_cond_tokens):
    model = randomised(tiny("raster", 4, num_cond_tokens=num_cond_tokens))
    x, labels = torch.randn(2, 16, 4), torch.tensor([3, 7])
    z = model.conditions(x, labels)
    assert z.shape == (2, 16, 32)
    for i in (0, 1, 5, 15):
        x2 = x.clone()
        x2[:, i:] += torch.randn_like(x2[:, i:]) * 3
        z2 = model.conditions(x2, labels)
        torch.testing.assert_close(z2[:, : i + 1], z[:, : i + 1], rtol=0, atol=1e-5)
        if i < 15:  # the next position does see the change (the test can fail both ways)
            assert (z2[:, i + 1 :] - z[:, i + 1 :]).abs().max() > 1e-3
    # and the label reaches every position
    z3 = model.conditions(x, torch.tensor([4, 8]))
    assert (z3 - z).abs().amin(dim=-1).amax() > 0


def test_nextscale_no_leak_scale_s_ignores_scales_from_s_on():
    model = randomised(tiny("nextscale", 8))
    x, labels = torch.randn(2, 64, 4), torch.tensor([3, 7])
    pyr = model.pyramid(x)
    z = model.scale_conditions(pyr, labels)
    assert z.shape == (2, 1 + 4 + 16 + 64, 32)
    for s in range(model.num_scales):
        pyr2 = [p.clone() for p in pyr]
        for k in range(s, model.num_scales):
            pyr2[k] += torch.randn_like(pyr2[k]) * 3
        z2 = model.scale_conditions(pyr2, labels)
        upto = model.offsets[s] + model.counts[s]  # conditions of scales 0..s
        torch.testing.assert_close(z2[:, :upto], z[:, :upto], rtol=0, atol=1e-5)
        if s < model.num_scales - 1:
            assert (z2[:, upto:] - z[:, upto:]).abs().max() > 1e-3


def test_mar_no_leak_z_ignores_unknown_tokens():
    model = randomised(tiny("mar", 4))
    x, labels = torch.randn(2, 16, 4), torch.tensor([1, 2])
    mask = mask_from_orders(random_orders(2, 16, torch.Generator().manual_seed(1), torch.device("cpu")), 9)
    z = model.backbone(x, mask, labels)
    x2 = x.clone()
    x2[mask] = torch.randn(int(mask.sum()), 4) * 5
    torch.testing.assert_close(model.backbone(x2, mask, labels), z)
    x3 = x.clone()
    x3[~mask] += 1.0
    assert not torch.allclose(model.backbone(x3, mask, labels), z)


def test_nextscale_pyramid_is_area_downsampled_and_inputs_upsample_previous_scale():
    model = tiny("nextscale", 8)
    x = torch.randn(2, 64, 4)
    pyr = model.pyramid(x)
    assert [p.shape[1] for p in pyr] == [1, 4, 16, 64]
    assert torch.equal(pyr[-1], x)
    grid = x.view(2, 8, 8, 4)
    torch.testing.assert_close(pyr[0][:, 0], grid.mean(dim=(1, 2)))
    torch.testing.assert_close(pyr[1].view(2, 2, 2, 4)[:, 0, 1], grid[:, :4, 4:].mean(dim=(1, 2)))
    # the input of scale 1 is built from scale 0 only: a constant grid stays constant
    up = model.upsample(pyr[0], 1)
    torch.testing.assert_close(up, pyr[0].expand(-1, 4, -1))
    for mode in ("flowar", "bicubic", "bilinear", "nearest"):
        model.config.upsample = mode
        assert model.upsample(pyr[2], 3).shape == (2, 64, 4)


# ----- KV cache -----------------------------------------------------------------------------------
# the default configs: tests/test_contract.py
@pytest.mark.parametrize("kind,kw", [("raster", {"num_cond_tokens": 2}), ("nextscale", {"num_cond_tokens": 2})])
def test_kv_cache_matches_full_recompute(kind, kw):
    model = randomised(tiny(kind, 4, **kw))
    labels = torch.tensor([0, 5, 9])
    outs = []
    for use_cache in (True, False):
        out = model.sample(labels, guidance_scale=2.5, generator=torch.Generator().manual_seed(7), use_cache=use_cache)
        outs.append(out.tokens)
    assert outs[0].abs().mean() > 0.1  # samples are not trivially equal (e.g. all zeros)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)
    # the test can fail: a cache that forgets what earlier steps wrote gives different samples
    orig = model.transformer.new_caches

    def forgetful(*a, **k):
        caches = orig(*a, **k)
        for c in caches:
            def update(start, k_new, v_new, c=c):
                c.k_BHLD[:, :, :start] = 0
                c.v_BHLD[:, :, :start] = 0
                return type(c).update(c, start, k_new, v_new)
            c.update = update
        return caches

    model.transformer.new_caches = forgetful
    wrong = model.sample(labels, guidance_scale=2.5, generator=torch.Generator().manual_seed(7), use_cache=True).tokens
    model.transformer.new_caches = orig
    assert not torch.allclose(wrong, outs[1], atol=1e-3)


# ----- guidance -----------------------------------------------------------------------------------
def _weights_seen(model, **kw) -> list[float]:
    seen = []
    orig = model.head.sample

    def spy(*a, **k):
        seen.append(k["guidance_scale"])
        return orig(*a, **k)

    model.head.sample = spy
    model.sample(torch.tensor([0]), generator=torch.Generator().manual_seed(0), num_steps=1, **kw)
    return seen


def test_guidance_schedules_follow_each_baseline():
    n, cfg = 16, 3.0
    raster = _weights_seen(randomised(tiny("raster")), guidance_scale=cfg)
    assert raster == pytest.approx([1 + (cfg - 1) * (i + 1) / n for i in range(n)])
    mar = _weights_seen(randomised(tiny("mar", num_iter=8)), guidance_scale=cfg)  # MAR: share revealed after the step
    assert mar == pytest.approx([1 + (cfg - 1) * (n - r) / n for r in mask_schedule(n, 8)])
    ns = randomised(tiny("nextscale", 8))
    assert _weights_seen(ns, guidance_scale=cfg) == pytest.approx([1.0, 1 + (cfg - 1) / 3, 1 + 2 * (cfg - 1) / 3, cfg])  # FlowAR ramp
    ns.config.cfg_progress = "tokens"
    assert _weights_seen(ns, guidance_scale=cfg) == pytest.approx([1 + (cfg - 1) * t / 85 for t in (1, 5, 21, 85)])
    for model in (tiny("raster"), tiny("mar"), tiny("nextscale")):
        assert set(_weights_seen(model.eval(), guidance_scale=cfg, cfg_schedule="constant")) == {cfg}


# ----- outputs (determinism, intermediates, labels: tests/test_contract.py) ------------------------
def test_nextscale_first_preview_is_a_constant_grid():
    model = randomised(tiny("nextscale", 8))
    out = model.sample(torch.tensor([2]), generator=torch.Generator().manual_seed(0))
    assert len(out.intermediates) == 4
    first = out.intermediates[0][0]
    assert torch.equal(first, first[:1].expand_as(first))


def test_mar_loss_covers_masked_tokens_only():
    model = tiny("mar", 4).train()
    counts = []
    orig = model.head.loss
    model.head.loss = lambda t, z: (counts.append(t.shape[0]), orig(t, z))[1]
    x = torch.randn(3, 16, 4)
    for _ in range(20):
        model.loss({"tokens": x, "labels": torch.tensor([0, 1, 2])})
    assert all(3 * math.ceil(0.7 * 16) <= c <= 3 * 16 and c % 3 == 0 for c in counts)
    assert len(set(counts)) > 1  # the ratio is drawn per batch


# ----- registry -----------------------------------------------------------------------------------
def test_presets_match_nestar_s_in_size_data_tokenizer_and_head():
    from nestar.models import MODEL_SPECS
    from nestar.registry import build_model, get_preset

    ref_cfg = get_preset("nestar-s")
    ref = build_model(ref_cfg)
    steps = {"raster-s": 256, "mar-s": 64, "nextscale-s": 5}
    for name, expected in steps.items():
        cfg = get_preset(name)
        assert cfg.model_type in MODEL_SPECS
        model = build_model(cfg)
        assert abs(model.num_params() / ref.num_params() - 1) < 0.10, (name, model.num_params())
        assert model.sequential_steps() == expected
        assert cfg.model.head == ref_cfg.model.head and cfg.sample == ref_cfg.sample
        assert cfg.data == ref_cfg.data and cfg.tokenizer == ref_cfg.tokenizer and cfg.train == ref_cfg.train
        assert (cfg.model.grid_size, cfg.model.token_dim) == (16, 4)
        assert sum(p.numel() for p in model.head.parameters()) == sum(p.numel() for p in ref.head.parameters())
    assert get_preset("mar-s").model.num_iter == 64
    for name in ("raster-tiny", "mar-tiny", "nextscale-tiny"):
        assert build_model(get_preset(name)).num_params() < 200_000
