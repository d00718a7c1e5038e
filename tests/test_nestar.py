"""NestAR model: layout, orders, masking (no leak), KV cache, guidance, determinism, learning."""
from __future__ import annotations

import pytest
import torch

from nestar.heads import FlowHeadConfig
from nestar.models.nestar import NestAR, NestARConfig
from nestar.models.orders import GenerationOrder


def tiny_config(grid: int = 8, k: int = 4, order: str = "lattice", **kw) -> NestARConfig:
    base = dict(grid_size=grid, token_dim=4, num_classes=10, k=k, order=order, dim=32, depth=2, head_dim=16,
                z_dim=32, head=FlowHeadConfig(width=32, depth=1, num_steps=3))
    base.update(kw)
    return NestARConfig(**base)


def randomised(model: NestAR) -> NestAR:
    """Give the zero-initialised head outputs real weights so sampling depends on z."""
    torch.manual_seed(123)
    with torch.no_grad():
        for mod in (model.head.out, model.head.final_ada[1], *[b.ada[1] for b in model.head.blocks]):
            mod.weight.normal_(0, 0.2)
            mod.bias.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("order", ["lattice", "zorder"])
@pytest.mark.parametrize("grid,k,expected", [(8, 4, 10), (16, 4, 13), (32, 4, 16), (8, 2, 7), (16, 2, 9), (16, 16, 31)])
def test_step_count_is_M_times_k_minus_1_plus_1(grid, k, expected, order):
    model = NestAR(tiny_config(grid, k, order))
    M = model.num_modules
    assert k**M == grid * grid
    assert model.sequential_steps() == M * (k - 1) + 1 == expected
    # and the sampler really makes that many sequential network calls
    calls = []
    for t in model.trunks:
        t.register_forward_hook(lambda *a: calls.append(1))
    if grid <= 16:
        model.eval().sample(torch.tensor([0]), num_steps=1)
        assert len(calls) == expected


@pytest.mark.parametrize("grid,k", [(8, 3), (12, 4), (16, 8)])
def test_impossible_grid_and_k_rejected_with_clear_error(grid, k):
    with pytest.raises(ValueError, match="power"):
        NestAR(tiny_config(grid, k))


def test_k_below_two_rejected():
    with pytest.raises(ValueError, match="k must be >= 2"):
        NestAR(tiny_config(8, 1))


def test_orders_are_permutations_with_the_described_geometry():
    g = 8
    lat, zo = GenerationOrder(g, 4, "lattice"), GenerationOrder(g, 4, "zorder")
    for o in (lat, zo):
        assert sorted(o.perm.tolist()) == list(range(g * g))
    rc = lambda idx: {(int(i) // g, int(i) % g) for idx_ in [idx] for i in idx_}  # noqa: E731
    # lattice: the first 4^m tokens form the full stride-(8/2^m) sub-lattice
    assert rc(lat.perm[:4]) == {(0, 0), (0, 4), (4, 0), (4, 4)}
    assert rc(lat.perm[:16]) == {(r, c) for r in range(0, 8, 2) for c in range(0, 8, 2)}
    # module 2's patches: offsets (0,1),(1,0),(1,1) times stride 2 of the 4x4-lattice... in that order
    assert rc(lat.perm[4:8]) == {(0, 2), (0, 6), (4, 2), (4, 6)}
    assert rc(lat.perm[8:12]) == {(2, 0), (2, 4), (6, 0), (6, 4)}
    # z-order: the first 4^m tokens are the top-left 2^m block, patches are neighbouring blocks
    assert rc(zo.perm[:16]) == {(r, c) for r in range(4) for c in range(4)}
    assert rc(zo.perm[16:32]) == {(r, c) for r in range(4) for c in range(4, 8)}


@pytest.mark.parametrize("order", ["lattice", "zorder"])
@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("extra", [{"neighbour_context": False}, {"neighbour_context": True, "order_offset": 2}])
def test_no_leak_conditions_ignore_current_and_later_patches(order, k, extra):
    model = randomised(NestAR(tiny_config(8, k, order, **extra)))
    x = torch.randn(2, 64, 4)
    labels = torch.tensor([3, 7])
    for m in range(1, model.num_modules + 1):
        P, S, T = model.order.layout(m)
        z = model.module_conditions(m, x, labels)
        for b in range(1, T + 1):
            x2 = x.clone()
            x2[:, P + (b - 1) * S :] += torch.randn_like(x2[:, P + (b - 1) * S :]) * 3
            z2 = model.module_conditions(m, x2, labels)
            # conditions of patches 1..b depend only on tokens before patch b
            torch.testing.assert_close(z2[:, : b * S], z[:, : b * S], rtol=0, atol=1e-5)
            if b < T:  # and the later ones do see the change (the test can fail both ways)
                assert (z2[:, b * S :] - z[:, b * S :]).abs().max() > 1e-3


@pytest.mark.parametrize("order", ["lattice", "zorder"])
@pytest.mark.parametrize("extra", [{"neighbour_context": False}, {"neighbour_context": True, "prefix_noise_mode": "boundary",
                                        "prefix_noise": 0.2, "sample_prefix_noise": 0.1}])
def test_kv_cache_matches_full_recompute(order, extra):
    model = randomised(NestAR(tiny_config(8, 4, order, **extra)))
    labels = torch.tensor([0, 5, 9])
    outs = []
    for use_cache in (True, False):
        gen = torch.Generator().manual_seed(7)
        outs.append(model.sample(labels, guidance_scale=2.5, generator=gen, use_cache=use_cache).tokens)
    assert outs[0].abs().mean() > 0.1  # samples are not trivially equal (e.g. all zeros)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)


def test_intermediates_one_per_module_and_last_is_the_sample():
    model = randomised(NestAR(tiny_config(8, 4, "lattice")))
    out = model.sample(torch.tensor([1]), generator=torch.Generator().manual_seed(0))
    assert len(out.intermediates) == model.num_modules
    torch.testing.assert_close(out.intermediates[-1], out.tokens)
    # after module 1 the lattice preview is the 2x2 coarse grid expanded to 4x4 blocks, which start
    # at the default offset 2 (the quadrant centres) and wrap around the grid
    assert model.order.offset == 2
    first = out.intermediates[0].reshape(8, 8, 4)
    assert torch.equal(first[2, 2], first[5, 5]) and torch.equal(first[6, 6], first[1, 1])
    assert not torch.equal(first[1, 1], first[2, 2])


def test_shared_trunk_and_per_module_sizes():
    shared = NestAR(tiny_config(shared_trunk=True))
    assert len(shared.trunks) == 1
    sizes = NestAR(tiny_config(module_dims=(16, 32, 64), module_depths=(1, 1, 2)))
    assert [t.transformer.dim for t in sizes.trunks] == [16, 32, 64]
    with pytest.raises(ValueError, match="module_dims"):
        tiny_config(module_dims=(16, 32))
    for model in (shared, sizes):
        out = model.loss({"tokens": torch.randn(2, 64, 4), "labels": torch.tensor([0, 1])})
        out["loss"].backward()


def test_order_offset_moves_the_first_module_to_the_quadrant_centres():
    g = 8
    rc = lambda idx: {(int(i) // g, int(i) % g) for i in idx}  # noqa: E731
    lat = GenerationOrder(g, 4, "lattice", offset=2)
    assert sorted(lat.perm.tolist()) == list(range(g * g))
    assert rc(lat.perm[:4]) == {(2, 2), (2, 6), (6, 2), (6, 6)}
    assert rc(lat.perm[:16]) == {(r, c) for r in range(0, 8, 2) for c in range(0, 8, 2)}
    # the preview after module 1 copies each anchor over the block it stands for
    tokens = torch.arange(64.0)[None, :, None]
    prev = lat.preview(tokens, 4).reshape(8, 8)
    assert prev[2, 2] == prev[5, 5] == 2 * 8 + 2 and prev[6, 6] == prev[1, 1] == prev[0, 0] == 6 * 8 + 6
    with pytest.raises(ValueError, match="offset"):
        GenerationOrder(g, 4, "lattice", offset=8)


def test_neighbour_tables_hold_only_earlier_patches_and_cover_known_neighbours():
    model = NestAR(tiny_config(neighbour_context=True))
    for m in range(1, model.num_modules + 1):
        P, S, T = model.order.layout(m)
        idx, known = model.neighbour_table(m)
        starts = P + torch.arange(T * S) // S * S
        assert (idx[known] < starts[:, None].expand_as(idx)[known]).all()
        if m > 1:  # every query of a later module has known neighbours on its lattice
            assert known.any(1).all()
    # at the default offset 2, module 2's first token (2, 4) sees the anchors (2, 2) and (2, 6)
    idx, known = model.neighbour_table(2)
    first = {int(model.order.perm[i]) for i in idx[0][known[0]]}
    assert int(model.order.perm[4]) == 2 * 8 + 4 and first == {2 * 8 + 2, 2 * 8 + 6}


def test_token_loss_weighting_is_the_token_weighted_mean_of_the_module_losses():
    batch = {"tokens": torch.randn(4, 64, 4), "labels": torch.arange(4)}
    model = NestAR(tiny_config(loss_weighting="token")).eval()
    torch.manual_seed(0)
    out = model.loss(batch)
    shares = [model.order.layout(m)[1] * model.order.layout(m)[2] / 64 for m in (1, 2, 3)]
    expected = sum(s * out[f"loss_m{m}"] for m, s in zip((1, 2, 3), shares))
    torch.testing.assert_close(out["loss"], expected)
    assert shares == [4 / 64, 12 / 64, 48 / 64]
    with pytest.raises(ValueError, match="loss_weighting"):
        tiny_config(loss_weighting="pixel")


def test_boundary_prefix_noise_is_told_to_the_module_and_needs_its_mode_at_sampling():
    model = randomised(NestAR(tiny_config(prefix_noise_mode="boundary", prefix_noise=0.3, sample_prefix_noise=0.1)))
    x, labels = torch.randn(2, 64, 4), torch.tensor([1, 2])
    z0 = model.module_conditions(2, x, labels, torch.zeros(2))
    z1 = model.module_conditions(2, x, labels, torch.full((2,), 1e-9))  # same tokens, another level
    with torch.no_grad():
        model.trunks[1].level_in.weight.fill_(1.0)
    z2 = model.module_conditions(2, x, labels, torch.full((2,), 0.5))
    torch.testing.assert_close(z0, z1, rtol=1e-4, atol=1e-4)
    assert (z2 - z0).abs().max() > 1e-3
    out = model.sample(labels, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.tokens).all()
    with pytest.raises(ValueError, match="boundary"):
        tiny_config(sample_prefix_noise=0.1)


def test_raster_embedding_init():
    model = NestAR(tiny_config(embed_init="raster"))
    w = model.trunks[0].class_emb.weight
    assert w.std() < 0.05 and model.trunks[0].token_in.bias.abs().max() == 0


def test_prefix_noise_changes_training_conditions_only():
    model = NestAR(tiny_config(prefix_noise=0.5)).train()
    batch = {"tokens": torch.randn(4, 64, 4), "labels": torch.arange(4)}
    torch.manual_seed(0)
    out = model.loss(batch)
    assert torch.isfinite(out["loss"])
    model.eval()  # no noise and no label dropout at eval: deterministic given the RNG of the head
    torch.manual_seed(0)
    a = model.loss(batch)["loss"]
    torch.manual_seed(0)
    b = model.loss(batch)["loss"]
    assert torch.equal(a, b)


def test_rollout_feeds_the_next_module_the_heads_own_draws_and_keeps_real_targets():
    """rollout_prob=1: module m+1 conditions on module m's tokens as the head draws them from the
    teacher-forced z (no gradient), the losses still target the real tokens; rollout_prob=0 and eval
    mode are plain teacher forcing."""
    model = randomised(NestAR(tiny_config(rollout_prob=1.0, rollout_steps=2, label_dropout=0.0)))
    x, labels = torch.randn(3, 64, 4), torch.tensor([0, 1, 2])
    seen, draws, targets = [], [], []
    conditions, head_sample, head_loss = model.module_conditions, model.head.sample, model.head.loss

    def spy_conditions(m, x_in, *a):
        seen.append(x_in.clone())
        return conditions(m, x_in, *a)

    def spy_sample(z, **kw):
        assert not z.requires_grad and kw["num_steps"] == 2
        draws.append(head_sample(z, **kw))
        return draws[-1]

    def spy_loss(target, z, **kw):
        targets.append(target)
        return head_loss(target, z, **kw)

    model.module_conditions, model.head.sample, model.head.loss = spy_conditions, spy_sample, spy_loss
    model.train()
    model.loss({"tokens": x, "labels": labels})["loss"].backward()
    x_ord = x[:, model.perm]
    assert len(draws) == 2 and torch.equal(seen[0], x_ord)  # module M's draws are never a prefix
    torch.testing.assert_close(seen[1][:, :4], draws[0].reshape(3, 4, 4))  # module 1 drawn, 4 tokens
    torch.testing.assert_close(seen[2][:, 4:16], draws[1].reshape(3, 12, 4))  # module 2's 12 tokens
    torch.testing.assert_close(seen[2][:, 16:], x_ord[:, 16:])  # module 3's own patches stay real
    assert all(torch.equal(t, x_ord[:, a:b]) for t, (a, b) in zip(targets, ((0, 4), (4, 16), (16, 64))))
    seen.clear(), draws.clear()
    model.eval()  # evaluation losses are teacher-forced
    model.loss({"tokens": x, "labels": labels})
    assert not draws and all(torch.equal(s, x_ord) for s in seen)
    with pytest.raises(ValueError, match="rollout_prob"):
        tiny_config(rollout_prob=1.5)
    with pytest.raises(ValueError, match="rollout_steps"):
        tiny_config(rollout_steps=0)


def _joint_config(**kw) -> NestARConfig:
    return tiny_config(head=FlowHeadConfig(width=32, depth=1, num_steps=3, kind="joint", heads=2), **kw)


def test_joint_head_couples_the_tokens_of_a_patch_and_nothing_else():
    joint = randomised(NestAR(_joint_config())).head
    mlp = randomised(NestAR(tiny_config())).head
    z = torch.randn(8, 32)  # two patches of 4 tokens
    z2 = z.clone()
    z2[5] += 3.0  # the second token of the second patch
    for head, coupled in ((joint, True), (mlp, False)):
        a = head.sample(z, generator=torch.Generator().manual_seed(1), group_size=4)
        b = head.sample(z2, generator=torch.Generator().manual_seed(1), group_size=4)
        torch.testing.assert_close(a[:4], b[:4], rtol=0, atol=1e-6)  # the other patch never changes
        assert (a[5] - b[5]).abs().max() > 1e-3
        changed = (a[[4, 6, 7]] - b[[4, 6, 7]]).abs().max()
        assert (changed > 1e-4) if coupled else (changed == 0), changed
    with pytest.raises(ValueError, match="groups"):
        joint.sample(torch.randn(6, 32), group_size=4)


def test_joint_head_nestar_kv_cache_cfg_and_learning():
    model = randomised(NestAR(_joint_config()))
    labels = torch.tensor([0, 5])
    a, b = (model.sample(labels, guidance_scale=2.0, generator=torch.Generator().manual_seed(7), use_cache=c).tokens
            for c in (True, False))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    s1 = model.sample(labels, guidance_scale=1.0, generator=torch.Generator().manual_seed(3)).tokens
    s2 = model.sample(labels, guidance_scale=1.0, cfg_schedule="constant", generator=torch.Generator().manual_seed(3)).tokens
    assert torch.equal(s1, s2)
    torch.manual_seed(0)
    model = NestAR(_joint_config(label_dropout=0.0))
    batch = {"tokens": torch.randn(8, 64, 4).clamp(-1, 1), "labels": torch.arange(8)}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = model.loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10]), (losses[:3], losses[-3:])


def test_joint_head_is_refused_by_per_token_models():
    from nestar.models.raster import RasterAR, RasterARConfig

    with pytest.raises(ValueError, match="joint"):
        RasterAR(RasterARConfig(grid_size=8, dim=32, depth=1, z_dim=32, head_dim=16,
                                head=FlowHeadConfig(width=32, depth=1, kind="joint", heads=2)))
