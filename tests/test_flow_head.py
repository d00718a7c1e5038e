"""The flow head's sampler: hoisted embeddings and batched guidance give the naive loop's tokens."""

from __future__ import annotations

import pytest
import torch

from nestar.heads.flow_joint import JointFlowHead
from nestar.heads.flow_mlp import FlowHeadConfig, FlowMLPHead, time_grid


def _head(kind: str, sampler: str, grid: str = "uniform") -> FlowMLPHead:
    torch.manual_seed(0)
    cfg = FlowHeadConfig(width=32, depth=2, num_steps=6, sampler=sampler, kind=kind, heads=4,
                         time_grid=grid)
    head = JointFlowHead(4, 8, cfg, max_group=4) if kind == "joint" else FlowMLPHead(4, 8, cfg)
    for m in (head.final_ada[1], head.out):  # zero-init outputs would make every velocity 0
        torch.nn.init.normal_(m.weight, std=0.3)
    return head


def _naive(head, z, z_u, w, steps, T, gen, g):
    """The sampler as first written: both branches separately, every embedding at every call."""
    n = z.shape[0]
    x = torch.randn(n, head.token_dim, generator=gen) * T
    ts = time_grid(head.config.time_grid, steps, z.device)

    def v(x, t):
        t_N = t.expand(n)
        v_c = head.velocity(x, t_N, z, g)
        return v_c if z_u is None else v_c + (w - 1.0) * (v_c - head.velocity(x, t_N, z_u, g))

    for i in range(steps):
        dt = ts[i + 1] - ts[i]
        v1 = v(x, ts[i])
        if head.config.sampler == "heun" and i < steps - 1:
            x = x + dt * 0.5 * (v1 + v(x + dt * v1, ts[i + 1]))
        else:
            x = x + dt * v1
    return x


@pytest.mark.parametrize("kind", ["mlp", "joint"])
@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("grid", ["uniform", "data"])
def test_sample_equals_the_naive_loop(kind, sampler, guided, grid):
    head = _head(kind, sampler, grid)
    z, z_u = torch.randn(8, 8), (torch.randn(8, 8) if guided else None)
    g = 4 if kind == "joint" else 1
    fast = head.sample(z, z_uncond_NZ=z_u, guidance_scale=2.5, temperature=0.9,
                       generator=torch.Generator().manual_seed(3), group_size=g)
    with torch.no_grad():
        slow = _naive(head, z, z_u, 2.5, 6, 0.9, torch.Generator().manual_seed(3), g)
    assert fast.abs().max() > 0.1  # the head is not trivially zero
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_guided_sampling_runs_one_batched_forward_per_step():
    head = _head("mlp", "euler")
    calls = []
    orig = head.velocity_from
    head.velocity_from = lambda x, c, g=1: calls.append(x.shape[0]) or orig(x, c, g)
    head.sample(torch.randn(5, 8), z_uncond_NZ=torch.randn(5, 8), guidance_scale=3.0, num_steps=4)
    assert calls == [10] * 4  # [x; x] once per step, not two calls of 5 rows


def test_time_grids_run_from_noise_to_data_and_put_their_steps_where_they_say():
    uni, data, noise = (time_grid(k, 8, torch.device("cpu")) for k in ("uniform", "data", "noise"))
    for ts in (uni, data, noise):
        assert ts[0] == 0 and ts[-1] == 1 and (ts.diff() > 0).all()
    assert data.diff()[-1] < uni.diff()[-1] < noise.diff()[-1]  # last step: smallest near the data
    assert noise.diff()[0] < uni.diff()[0] < data.diff()[0]
    with pytest.raises(ValueError, match="time_grid"):
        FlowHeadConfig(time_grid="cosine")


def test_pipeline_samples_with_another_solver_and_restores_the_heads():
    from nestar.config import ConfigError
    from nestar.pipeline import Pipeline
    from nestar.registry import build_model, get_preset, resolve
    from nestar.tokenizers import build_tokenizer

    def pipe(preset):
        torch.manual_seed(0)
        cfg = resolve(get_preset(preset))
        cfg.sample.precision = "fp32"
        return Pipeline(build_model(cfg), build_tokenizer(cfg.tokenizer, 32, 1).eval(), cfg)

    p = pipe("raster-tiny")
    for m in p.model.modules():  # zero-initialised outputs: give the heads real weights
        if isinstance(m, FlowMLPHead):
            torch.nn.init.normal_(m.out.weight, std=0.3)

    def images(**kw):
        return p([1, 4], generator=torch.Generator().manual_seed(2), num_steps=3, **kw).images

    base = images()
    assert torch.equal(images(head_sampler="euler", time_grid="uniform"), base)  # the head's own
    heun, data = images(head_sampler="heun"), images(time_grid="data")
    assert not torch.equal(heun, base) and not torch.equal(data, base)
    assert torch.equal(images(), base)  # the heads got their own settings back
    with pytest.raises(ConfigError, match="sample.head_sampler"):
        images(head_sampler="rk4")
    with pytest.raises(ConfigError, match="flow heads"):  # ARINAR's GMM head: refused, not ignored
        pipe("arinar-tiny")([1], head_sampler="heun")
