"""Same seed, same images: record samples and losses of every model family, or check against a record.

    python scripts/check_same_images.py --write /tmp/ref   # record (before a refactor)
    python scripts/check_same_images.py /tmp/ref           # compare (after it): exit 1 on any change

For every tiny preset (and NestAR / baseline variants that take other code paths) the model is built
from a fixed torch seed, every all-zero parameter (the zero-initialised output layers) is filled
with seeded noise so that samples depend on the weights, and the script records: samples with
guidance 2 and 1 (tokens, intermediates, known masks), the no-cache path where a model has one, and
the training loss of a fixed batch. The pipeline case adds decoded images, a save/load round trip
and the shipped Fashion-MNIST classifier's logits on the images. Comparison is bit-for-bit.
"""
from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
from pathlib import Path

import torch

from nestar.config import apply_overrides
from nestar.registry import build_model, get_preset

LABELS = torch.tensor([0, 3, 7])
CASES: dict[str, tuple[str, list[str]]] = {
    "nestar-tiny": ("nestar-tiny", []),
    "raster-tiny": ("raster-tiny", []),
    "mar-tiny": ("mar-tiny", []),
    "arinar-tiny": ("arinar-tiny", []),
    "nextscale-tiny": ("nextscale-tiny", []),
    "nestar-joint": ("nestar-tiny", ["model.head.kind=joint", "model.head.heads=2"]),
    "nestar-shared": ("nestar-tiny", ["model.shared_trunk=True", "model.loss_weighting=token"]),
    "nestar-boundary": ("nestar-tiny", ["model.prefix_noise=0.3", "model.prefix_noise_mode=boundary",
                                        "model.sample_prefix_noise=0.2"]),
    "nestar-plain": ("nestar-tiny", ["model.neighbour_context=False", "model.order=zorder", "model.k=2",
                                     "model.embed_init=raster", "model.prefix_noise=0.2"]),
    "nestar-offset": ("nestar-tiny", ["model.order_offset=0", "model.head.sampler=heun",
                                      "model.module_dims=(32, 48, 32)", "model.module_depths=(1, 2, 1)"]),
    "raster-heun": ("raster-tiny", ["model.head.sampler=heun", "model.num_cond_tokens=2"]),
    "nextscale-tokens": ("nextscale-tiny", ["model.cfg_progress=tokens", "model.upsample=bilinear",
                                            "model.scale_loss_weighting=uniform"]),
    "arinar-mul": ("arinar-tiny", ["model.head.temperature_mode=mul", "model.head.depth=2"]),
}


def randomise_zeros(model: torch.nn.Module, seed: int = 1) -> None:
    """Fill every all-zero parameter with seeded noise (in name order, so layout changes do not matter)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def draw(model, labels, guidance: float, seed: int, **kw):
    """`model.sample` under either the old (`cfg=`) or the new (`guidance_scale=`) keyword."""
    key = "guidance_scale" if "guidance_scale" in inspect.signature(model.sample).parameters else "cfg"
    return model.sample(labels, **{key: guidance}, generator=torch.Generator().manual_seed(seed), **kw)


def record_case(preset: str, overrides: list[str]) -> dict[str, torch.Tensor]:
    cfg = get_preset(preset)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    randomise_zeros(model)
    out: dict[str, torch.Tensor] = {}
    model.eval()
    runs = {"g2": dict(guidance=2.0), "g1": dict(guidance=1.0), "g3c": dict(guidance=3.0, cfg_schedule="constant")}
    loop = getattr(model, "_sample", model.sample)  # the model's own options (after the scaffold refactor)
    if "use_cache" in inspect.signature(loop).parameters:
        runs["g2_nocache"] = dict(guidance=2.0, use_cache=False)
    for name, kw in runs.items():
        g = kw.pop("guidance")
        s = draw(model, LABELS, g, seed=5, **kw)
        out[f"{name}.tokens"] = s.tokens
        for i, t in enumerate(s.intermediates):
            out[f"{name}.inter{i}"] = t
        for i, t in enumerate(s.known):
            out[f"{name}.known{i}"] = t
        out[f"{name}.steps"] = torch.tensor(s.sequential_steps)
    grid, token_dim = cfg.model.grid_size, cfg.model.token_dim
    gen = torch.Generator().manual_seed(3)
    batch = {"tokens": torch.randn(4, grid * grid, token_dim, generator=gen),
             "labels": torch.tensor([1, 2, 3, 9])}
    model.train()
    torch.manual_seed(7)
    losses = model.loss(batch)
    for k, v in losses.items():
        out[f"loss.{k}"] = v.detach()
    return out


def record_pipeline() -> dict[str, torch.Tensor]:
    from nestar.evaluation.classifier import get_classifier
    from nestar.pipeline import Pipeline
    from nestar.tokenizers import build_tokenizer

    cfg = get_preset("nestar-tiny")
    torch.manual_seed(0)
    model = build_model(cfg)
    randomise_zeros(model)
    tok = build_tokenizer(cfg.tokenizer, cfg.data.image_size, cfg.data.channels)
    pipe = Pipeline(model, tok, cfg)
    out = {"images": pipe(LABELS, generator=torch.Generator().manual_seed(2)).images}
    o = pipe(LABELS)  # config.sample's guidance, steps and seed
    out["images_default"] = o.images
    for i, t in enumerate(o.intermediates):
        out[f"inter{i}"] = t
    with tempfile.TemporaryDirectory() as d:
        pipe.save_pretrained(d)
        again = Pipeline.from_pretrained(d)
        out["images_reloaded"] = again(LABELS).images
    clf, _ = get_classifier(cfg.data, progress=False)
    with torch.no_grad():
        out["classifier_logits"] = clf(o.images.clamp(-1, 1))
    return out


def _close(a: torch.Tensor, b: torch.Tensor, atol: float) -> bool:
    if atol == 0 or not a.is_floating_point():
        return torch.equal(a, b)
    return bool((a.double() - b.double()).abs().max() <= atol) if a.numel() else True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ref_dir")
    ap.add_argument("--write", action="store_true", help="record instead of compare")
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    ap.add_argument("--atol", type=float, default=0.0,
                    help="largest absolute difference accepted (default 0: bit-for-bit); for changes that "
                         "only reorder float arithmetic, e.g. batching the guided head branches")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ref = Path(args.ref_dir)
    ref.mkdir(parents=True, exist_ok=True)
    cases = {**{k: (lambda p=p, o=o: record_case(p, o)) for k, (p, o) in CASES.items()}, "pipeline": record_pipeline}
    bad = 0
    for name, fn in cases.items():
        if args.only and name not in args.only:
            continue
        got = fn()
        path = ref / f"{name}.pt"
        if args.write:
            torch.save(got, path)
            print(f"wrote {path} ({len(got)} tensors)")
            continue
        want = torch.load(path)
        diffs = [k for k in sorted(set(want) | set(got))
                 if k not in want or k not in got or want[k].shape != got[k].shape or not _close(want[k], got[k], args.atol)]
        if diffs:
            bad += 1
            detail = ", ".join(
                f"{k}: {(got[k].double() - want[k].double()).abs().max().item():.2e}"
                if k in got and k in want and got[k].shape == want[k].shape else f"{k}: missing/shape"
                for k in diffs[:6])
            print(f"CHANGED {name}: {detail}")
        else:
            worst = max(((got[k].double() - want[k].double()).abs().max().item() for k in got
                         if got[k].is_floating_point() and got[k].numel()), default=0.0)
            print(f"same    {name} ({len(got)} tensors, largest difference {worst:.1e})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
