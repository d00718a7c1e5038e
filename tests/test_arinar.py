"""ARINAR baseline: inner-AR GMM head (likelihood, causality, KV cache, guidance, temperature) and the
masked-AR outer model (schedule, step count, no leak, determinism, learning)."""
from __future__ import annotations

import math

import pytest
import torch

from nestar.heads.gmm_ar import GMMARHead, GMMHeadConfig, gmm_log_prob
from nestar.models.arinar import ARINAR, ARINARConfig
from nestar.models.masked_ar import mask_from_orders, mask_schedule, random_orders, truncnorm_mask_ratio


def tiny_head(C: int = 4, Z: int = 8, **kw) -> GMMARHead:
    base = dict(width=16, depth=1, num_heads=2, num_gaussians=4, num_candidates=64)
    base.update(kw)
    torch.manual_seed(0)
    return GMMARHead(C, Z, GMMHeadConfig(**base))


def randomised(module: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Real weights everywhere (the zero-initialised gates would hide bugs)."""
    torch.manual_seed(123)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
    return module.eval()


def tiny_model(grid: int = 4, C: int = 4, **kw) -> ARINAR:
    base = dict(grid_size=grid, token_dim=C, num_classes=10, dim=32, enc_depth=1, dec_depth=1, head_dim=16,
                buffer_size=2, num_iter=8, head=GMMHeadConfig(width=16, depth=1, num_heads=2, num_candidates=32))
    base.update(kw)
    torch.manual_seed(0)
    return ARINAR(ARINARConfig(**base))


# ----- GMM head ----------------------------------------------------------------------------------
def test_k1_nll_equals_gaussian_log_likelihood_without_2pi():
    head = randomised(tiny_head(C=5, num_gaussians=1, min_logvar=None))
    x, z = torch.randn(7, 5), torch.randn(7, 8)
    logits, mu, logvar = head.gmm_params(x, z)
    direct = torch.distributions.Normal(mu[..., 0], torch.exp(0.5 * logvar[..., 0])).log_prob(x)
    expected = -(direct + 0.5 * math.log(2 * math.pi)).sum(-1).mean()
    torch.testing.assert_close(head.loss(x, z), expected, rtol=1e-5, atol=1e-5)


def test_k4_nll_equals_mixture_log_likelihood_without_2pi():
    head = randomised(tiny_head(C=3, num_gaussians=4))
    x, z = torch.randn(6, 3), torch.randn(6, 8)
    logits, mu, logvar = head.gmm_params(x, z)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits), torch.distributions.Normal(mu, torch.exp(0.5 * logvar)))
    expected = -(mix.log_prob(x) + 0.5 * math.log(2 * math.pi)).sum(-1).mean()
    torch.testing.assert_close(head.loss(x, z), expected, rtol=1e-5, atol=1e-5)


def test_min_logvar_floor_is_smooth_and_respected():
    head = randomised(tiny_head(min_logvar=-3.0), std=3.0)
    _, _, logvar = head.gmm_params(torch.randn(50, 4), torch.randn(50, 8))
    assert (logvar >= -3.0).all() and logvar.min() < -2.9  # floored, and the floor is reached


def test_gmm_output_layers_stay_fp32_under_bf16_autocast():
    # A bf16 mean cannot sit on -1 to within a sharp component's sigma; the output layers must not autocast.
    head = randomised(tiny_head())
    h, z = torch.randn(5, 4, 16), torch.randn(5, 8)
    ref = head._output(h, z)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = head._output(h, z)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_channel_f_depends_only_on_earlier_channels():
    head = randomised(tiny_head(C=6))
    x, z = torch.randn(3, 6), torch.randn(3, 8)
    ref = torch.cat(head.gmm_params(x, z), dim=-1)
    for f in range(6):
        x2 = x.clone()
        x2[:, f:] = torch.randn(3, 6 - f)
        out = torch.cat(head.gmm_params(x2, z), dim=-1)
        torch.testing.assert_close(out[:, : f + 1], ref[:, : f + 1])  # params of channel f use x_<f only
        if f < 5:
            assert not torch.allclose(out[:, f + 1], ref[:, f + 1])


def test_kv_cached_sampler_matches_teacher_forced_network():
    # K=1 and temperature 0 ('mul'): each channel is exactly the mean given the earlier channels
    head = randomised(tiny_head(C=5, num_gaussians=1, temperature_mode="mul"))
    z = torch.randn(4, 8)
    x = head.sample(z, temperature=0.0, generator=torch.Generator().manual_seed(0))
    _, mu, _ = head.gmm_params(x, z)
    torch.testing.assert_close(mu[..., 0], x, rtol=1e-5, atol=1e-5)


def test_head_cfg_one_equals_unguided_exactly_and_skips_branch():
    head = randomised(tiny_head())
    z, zu = torch.randn(5, 8), torch.randn(5, 8)
    a = head.sample(z, generator=torch.Generator().manual_seed(3))
    b = head.sample(z, z_uncond_NZ=zu, guidance_scale=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    seen = []
    h = head.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    head.sample(z, z_uncond_NZ=zu, guidance_scale=1.0, generator=torch.Generator().manual_seed(3))
    assert set(seen) == {5}  # no doubled batch
    seen.clear()
    head.sample(z, z_uncond_NZ=zu, guidance_scale=2.0, generator=torch.Generator().manual_seed(3))
    assert set(seen) == {10}
    h.remove()


def test_head_same_seed_same_token_and_nfe_is_channels():
    head = randomised(tiny_head(C=7))
    z, zu = torch.randn(4, 8), torch.randn(4, 8)
    for kw in ({}, {"z_uncond_NZ": zu, "guidance_scale": 3.0}):
        a = head.sample(z, generator=torch.Generator().manual_seed(11), **kw)
        b = head.sample(z, generator=torch.Generator().manual_seed(11), **kw)
        c = head.sample(z, generator=torch.Generator().manual_seed(12), **kw)
        assert torch.equal(a, b) and not torch.equal(a, c)
    assert head.nfe(50) == head.nfe(None) == 7


def test_temperature_conventions():
    head = randomised(tiny_head())
    z = torch.randn(3, 8)
    div = tiny_head(temperature_mode="div")
    div.load_state_dict(head.state_dict())
    mul = tiny_head(temperature_mode="mul")
    mul.load_state_dict(head.state_dict())
    a = div.eval().sample(z, temperature=2.0, generator=torch.Generator().manual_seed(0))
    b = mul.eval().sample(z, temperature=0.5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)  # sigma / 2 == sigma * 0.5
    with pytest.raises(ValueError, match="temperature"):
        div.sample(z, temperature=0.0)
    with pytest.raises(ValueError, match="temperature_mode"):
        GMMHeadConfig(temperature_mode="sqrt")


def _single_gauss(n: int, mean: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.zeros(n, 1), torch.full((n, 1), mean), torch.zeros(n, 1)


@pytest.mark.parametrize("cfg,target", [(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)])
def test_importance_resampling_moves_towards_guided_distribution(cfg, target):
    # p_c = N(1, 1), p_u = N(0, 1): p_c^w p_u^(1-w) = N(w, 1); the resampled values follow it
    head = tiny_head(num_candidates=1000)
    n = 3000
    lc, mc, vc = _single_gauss(n, 1.0)
    lu, mu_, vu = _single_gauss(n, 0.0)
    logits, mu, logvar = torch.cat([lc, lu]), torch.cat([mc, mu_]), torch.cat([vc, vu])
    x = head._resample(logits, mu, logvar, n, 1.0, cfg, torch.Generator().manual_seed(0))
    assert abs(x.mean().item() - target) < 0.15  # finite candidates undershoot slightly as cfg grows
    assert abs(x.std().item() - 1.0) < 0.15


def test_gmm_log_prob_helper_matches_torch():
    logits, mu, logvar = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    x = torch.randn(4, 5)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits), torch.distributions.Normal(mu, torch.exp(0.5 * logvar)))
    ref = mix.log_prob(x.T).T + 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(gmm_log_prob(x, logits, mu, logvar), ref, rtol=1e-5, atol=1e-5)


# ----- outer model -------------------------------------------------------------------------------
@pytest.mark.parametrize("n,S", [(256, 64), (64, 64), (16, 64), (64, 8), (4, 1)])
def test_cosine_schedule_reveals_at_least_one_token_per_step(n, S):
    sched = mask_schedule(n, S)
    assert len(sched) == min(n, S) and sched[-1] == 0
    prev = n
    for r in sched:
        assert 0 <= r < prev
        prev = r
    if n == 256 and S == 64:  # MAR's cosine values where the clamp is inactive
        assert sched[31] == math.floor(256 * math.cos(math.pi / 2 * 32 / 64))


def test_truncated_normal_mask_ratio_in_range_and_concentrated_near_one():
    g = torch.Generator().manual_seed(0)
    r = torch.tensor([truncnorm_mask_ratio(generator=g) for _ in range(2000)])
    assert (r >= 0.7).all() and (r <= 1.0).all()
    assert 0.84 < r.mean().item() < 0.89  # mean of N(1, .25) truncated to [.7, 1] is ~0.866


def test_mask_from_orders_hides_the_last_positions_of_each_order():
    orders = random_orders(3, 10, torch.Generator().manual_seed(0), torch.device("cpu"))
    m = mask_from_orders(orders, 4)
    assert (m.sum(1) == 4).all()
    for b in range(3):
        assert set(torch.nonzero(m[b]).flatten().tolist()) == set(orders[b, 6:].tolist())


@pytest.mark.parametrize("grid,num_iter,expected", [(4, 8, 8), (4, 64, 16), (16, 64, 64), (8, 64, 64)])
def test_step_count_and_backbone_calls(grid, num_iter, expected):
    model = tiny_model(grid, num_iter=num_iter).eval()
    assert model.sequential_steps() == expected
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    out = model.sample(torch.tensor([1]))
    assert len(calls) == out.sequential_steps == expected
    assert out.tokens.shape == (1, grid * grid, 4)


def test_registry_presets_and_parameter_match():
    from nestar.models import MODEL_SPECS
    from nestar.registry import build_model, get_preset

    assert "arinar" in MODEL_SPECS
    s, ref = build_model(get_preset("arinar-s")), build_model(get_preset("nestar-s"))
    assert abs(s.num_params() / ref.num_params() - 1) < 0.10
    assert s.sequential_steps() == 64 and s.config.grid_size == 16 and s.config.token_dim == 4
    tiny = build_model(get_preset("arinar-tiny"))
    assert tiny.num_params() < 200_000


def test_no_leak_z_ignores_unknown_tokens():
    model = randomised(tiny_model(4))
    x = torch.randn(2, 16, 4)
    orders = random_orders(2, 16, torch.Generator().manual_seed(1), torch.device("cpu"))
    mask = mask_from_orders(orders, 9)
    labels = torch.tensor([1, 2])
    z = model.backbone(x, mask, labels)
    x2 = x.clone()
    x2[mask] = torch.randn(int(mask.sum()), 4) * 5
    torch.testing.assert_close(model.backbone(x2, mask, labels), z)
    x3 = x.clone()
    x3[~mask] += 1.0
    assert not torch.allclose(model.backbone(x3, mask, labels), z)

