"""The contract every model family keeps (diffusers' pipeline-tester style), run for each ModelSpec.

Each family is built from its registered 'tiny' preset; a new family registered in nestar.models
is tested here without a line of test code. Family-specific behaviour (orders, schedules, leaks)
stays in the family's own test file.
"""
from __future__ import annotations

import inspect

import pytest
import torch

from nestar.models import MODEL_SPECS, GenerativeModel
from nestar.models import base as base_mod
from nestar.registry import PRESETS, build_model, get_preset
from nestar.serialization import load_pretrained, save_pretrained

FAMILIES = list(MODEL_SPECS)
LABELS = torch.tensor([1, 2])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest, and immune to a busy machine's oversubscribed cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(family: str, **model_overrides) -> tuple[GenerativeModel, object]:
    """The family's tiny model (seeded) and its run config."""
    from nestar.config import apply_overrides

    cfg = get_preset(MODEL_SPECS[family].presets["tiny"])
    if model_overrides:
        cfg = apply_overrides(cfg, [f"model.{k}={v!r}" for k, v in model_overrides.items()])
    torch.manual_seed(0)
    return build_model(cfg), cfg


def randomised(model: GenerativeModel, std: float = 0.3) -> GenerativeModel:
    """Non-zero output layers, so that samples depend on the conditions (heads start at zero)."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def draw(model: GenerativeModel, seed: int = 3, **kw) -> torch.Tensor:
    return model.sample(LABELS, generator=torch.Generator().manual_seed(seed), num_steps=2, **kw).tokens


def backbone_batches(model: GenerativeModel) -> list[int]:
    """A hook list: the batch size of every backbone evaluation from now on."""
    sizes: list[int] = []
    for m in model.backbone_modules():
        m.register_forward_hook(lambda mod, args, out: sizes.append(args[0].shape[0]))
    return sizes


@pytest.mark.parametrize("family", FAMILIES)
def test_step_count_equals_backbone_calls(family):
    model, cfg = tiny(family)
    calls = backbone_batches(model.eval())
    out = model.sample(torch.tensor([1]), num_steps=1)
    assert len(calls) == out.sequential_steps == model.sequential_steps()
    g = cfg.model.grid_size
    assert out.tokens.shape == (1, g * g, cfg.model.token_dim) and torch.isfinite(out.tokens).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_guidance_one_is_the_unguided_path(family, monkeypatch):
    model = randomised(tiny(family)[0])
    z, z_u = torch.randn(8, model.head.cond_dim), torch.randn(8, model.head.cond_dim)
    a = model.head.sample(z, generator=torch.Generator().manual_seed(1))
    b = model.head.sample(z, z_uncond_NZ=z_u, guidance_scale=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)  # the head's guided draw is exactly the conditional one at weight 1
    sizes = backbone_batches(model)
    a = draw(model, guidance_scale=1.0)
    assert set(sizes) == {len(LABELS)}  # no unconditional branch
    assert torch.equal(a, draw(model, guidance_scale=1.0, cfg_schedule="constant"))
    sizes.clear()
    monkeypatch.setattr(base_mod, "cfg_scale", lambda *args: 1.0)  # the doubled batch at weight 1
    c = draw(model, guidance_scale=3.0)
    assert set(sizes) == {2 * len(LABELS)}
    torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)
    monkeypatch.undo()
    assert (draw(model, guidance_scale=3.0) - a).abs().max() > 1e-3  # real guidance changes samples


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_images_and_different_seed_differs(family):
    model = randomised(tiny(family)[0])
    for w in (1.0, 2.0):
        a = draw(model, seed=11, guidance_scale=w)
        torch.manual_seed(999)  # the global RNG must not matter
        assert torch.equal(a, draw(model, seed=11, guidance_scale=w))
        assert not torch.allclose(a, draw(model, seed=12, guidance_scale=w))


@pytest.mark.parametrize("family", FAMILIES)
def test_intermediates_end_with_the_sample_and_labels_are_checked(family):
    model = randomised(tiny(family)[0])
    out = model.sample(torch.tensor([1]), num_steps=1, generator=torch.Generator().manual_seed(0))
    assert len(out.intermediates) >= 2
    assert all(t.shape == out.tokens.shape for t in out.intermediates)
    torch.testing.assert_close(out.intermediates[-1], out.tokens)
    for bad in (torch.tensor([model.num_classes]), torch.tensor([-1]), torch.tensor([[1]])):
        with pytest.raises(ValueError, match="labels"):
            model.sample(bad)


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_equals_recompute(family):
    model = randomised(tiny(family)[0])
    if "use_cache" not in inspect.signature(model._sample).parameters:
        pytest.skip(f"{family} has no KV cache (a bidirectional backbone)")
    cached, full = (draw(model, seed=7, guidance_scale=2.5, use_cache=c) for c in (True, False))
    assert cached.abs().mean() > 0.1  # not trivially equal (e.g. all zeros)
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_overfits_a_fixed_batch(family):
    model, cfg = tiny(family, label_dropout=0.0)
    g, C = cfg.model.grid_size, cfg.model.token_dim
    gen = torch.Generator().manual_seed(0)
    batch = {"tokens": torch.randn(4, g * g, C, generator=gen).clamp(-1, 1), "labels": torch.arange(4)}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = model.loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    # by more than 30% of its magnitude (a flow loss is positive; an NLL may turn negative)
    assert first - last > 0.3 * abs(first), (first, last)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_round_trip(family, tmp_path):
    model, cfg = tiny(family)
    model = randomised(model)
    save_pretrained(tmp_path, model, cfg)
    loaded, loaded_cfg = load_pretrained(tmp_path)
    assert loaded_cfg.model == cfg.model and type(loaded) is type(model)
    sd, ref = loaded.state_dict(), model.state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in sd)
    assert torch.equal(draw(loaded.eval(), guidance_scale=2.0), draw(model, guidance_scale=2.0))


@pytest.mark.parametrize("family", FAMILIES)
def test_registered_presets_build_the_family(family):
    spec = MODEL_SPECS[family]
    for role, name in spec.presets.items():
        assert name in PRESETS, (role, name)
        assert get_preset(name).model_type == family
        assert isinstance(get_preset(name).model, spec.config_cls)
    model, _ = tiny(family)
    assert isinstance(model, spec.model_cls) and model.num_params() < 200_000
    units = model.checkpoint_units()
    assert units and set(map(id, model.shard_units())) <= set(map(id, units))
    assert set(map(id, model.head.checkpoint_units())) <= set(map(id, units))
