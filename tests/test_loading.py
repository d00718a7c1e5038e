"""Fast loading (no random init before the weights are assigned): every model family, loaded from a
save_pretrained directory and from a training checkpoint, samples exactly what the saved model samples,
with nothing left on the meta device; bad weights still name the key; unfit models fall back."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from nestar.config import apply_overrides
from nestar.models.base import GenerativeModel
from nestar.pipeline import Pipeline
from nestar.models import MODEL_SPECS, ModelSpec
from nestar.registry import build_model, get_preset
from nestar.tokenizers import build_tokenizer
from nestar.training.lr import make_optimizer
from nestar.serialization import (
    CheckpointError, build_model_from_tensors, load_model_from_checkpoint, load_pretrained, meta_tensors,
    parameters_on_meta, save_checkpoint, save_pretrained,
)

LABELS = torch.tensor([0, 3, 7])
# Every registered family through its tiny preset, plus NestAR variants that build other modules.
CASES = {spec.presets["tiny"]: [] for spec in MODEL_SPECS.values()}
CASES["nestar-tiny/joint-head"] = ["model.head.kind='joint'"]
CASES["nestar-tiny/shared-trunk"] = ["model.shared_trunk=True"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest, and immune to a busy machine's oversubscribed cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def config(case: str):
    preset, _, _ = case.partition("/")
    return apply_overrides(get_preset(preset), CASES[case])


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """Non-zero everywhere: the heads' zero-initialised outputs would make samples ignore the backbone."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def sample(model: GenerativeModel, seed: int = 11) -> torch.Tensor:
    return model.eval().sample(LABELS, guidance_scale=2.0, num_steps=3, generator=torch.Generator().manual_seed(seed)).tokens


def assert_fully_loaded(loaded: nn.Module, reference: nn.Module) -> None:
    assert meta_tensors(loaded) == []
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    ref_sd, sd = reference.state_dict(), loaded.state_dict()
    assert ref_sd.keys() == sd.keys() and all(torch.equal(ref_sd[k], sd[k]) for k in sd)
    ref_buf = dict(reference.named_buffers())
    for name, buf in loaded.named_buffers():  # non-persistent state (orders, masks) is rebuilt for real
        assert buf.device == ref_buf[name].device and torch.equal(buf, ref_buf[name]), name
    assert all(p.requires_grad for p in loaded.parameters())


@pytest.mark.filterwarnings("error")  # a fallback to the slow build would warn
@pytest.mark.parametrize("case", list(CASES))
def test_fast_load_samples_exactly_like_the_saved_model(case, tmp_path):
    cfg = config(case)
    model, ema = randomised(build_model(cfg), seed=1), randomised(build_model(cfg), seed=2)
    ref_model, ref_ema = sample(model), sample(ema)
    assert not torch.equal(ref_model, ref_ema)  # samples depend on the weights

    save_pretrained(tmp_path / "export", model, cfg)
    rng = torch.get_rng_state()
    loaded, loaded_cfg = load_pretrained(tmp_path / "export")
    assert torch.equal(torch.get_rng_state(), rng)  # no initialisation ran: the global RNG is untouched
    assert loaded_cfg == cfg and type(loaded) is type(model)
    assert_fully_loaded(loaded, model)
    assert torch.equal(sample(loaded), ref_model)

    slow, _ = load_pretrained(tmp_path / "export", fast=False)  # the reference path
    assert_fully_loaded(slow, model)
    assert torch.equal(sample(slow), ref_model)

    ckpt = save_checkpoint(tmp_path / "ck.safetensors", model=model, ema=ema, optimizer=None, step=3, config=cfg)
    from_ema, _ = load_model_from_checkpoint(ckpt)
    assert_fully_loaded(from_ema, ema)
    assert torch.equal(sample(from_ema), ref_ema)
    raw, _ = load_model_from_checkpoint(ckpt, use_ema=False)
    assert_fully_loaded(raw, model)
    assert torch.equal(sample(raw), ref_model)


def test_pipeline_from_pretrained_same_images(tmp_path):
    cfg = get_preset("nestar-tiny")
    model = randomised(build_model(cfg), seed=3)
    tok = build_tokenizer(cfg.tokenizer, cfg.data.image_size, cfg.data.channels)
    ref = Pipeline(model, tok, cfg)(LABELS, generator=torch.Generator().manual_seed(5)).images
    save_pretrained(tmp_path / "export", model, cfg)
    raw = randomised(build_model(cfg), seed=4)
    opt = make_optimizer(raw, cfg.train)
    raw.loss({"tokens": torch.randn(2, 64, 16), "labels": torch.tensor([1, 2])})["loss"].backward()
    opt.step()  # the checkpoint holds AdamW state too, which loading skips
    save_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors", model=raw, ema=model,
                    optimizer=opt, step=1, config=cfg)
    for path in (tmp_path / "export", tmp_path / "export" / "model.safetensors", tmp_path / "run"):
        pipe = Pipeline.from_pretrained(path)
        assert meta_tensors(pipe.model) == [] and pipe.device == torch.device("cpu")
        assert torch.equal(pipe(LABELS, generator=torch.Generator().manual_seed(5)).images, ref), path


def _edit(path, fn) -> None:
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path), metadata={"format": "pretrained"})


def test_bad_weights_name_the_key(tmp_path):
    cfg = get_preset("nestar-tiny")
    save_pretrained(tmp_path, build_model(cfg), cfg)
    w = tmp_path / "model.safetensors"
    key = "trunks.0.transformer.blocks.0.attn.qkv.weight"

    _edit(w, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match="missing keys") as e:
        load_pretrained(tmp_path)
    assert key in str(e.value) and str(w) in str(e.value)

    _edit(w, lambda t: t.update({key: torch.zeros(96, 32), "extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="unexpected keys") as e:
        load_pretrained(tmp_path)
    assert "extra.weight" in str(e.value)

    _edit(w, lambda t: (t.pop("extra.weight"), t.update({key: torch.zeros(96, 16)})))
    with pytest.raises(CheckpointError, match="mismatched shapes") as e:
        load_pretrained(tmp_path)
    assert f"{key}: checkpoint (96, 16) vs model (96, 32)" in str(e.value)


def test_fp64_weights_are_cast_like_the_slow_path(tmp_path):
    cfg = get_preset("raster-tiny")
    model = randomised(build_model(cfg), seed=5)
    save_pretrained(tmp_path, model.double(), cfg)
    fast, _ = load_pretrained(tmp_path)
    assert all(p.dtype == torch.float32 for p in fast.parameters())
    slow, _ = load_pretrained(tmp_path, fast=False)
    assert_fully_loaded(fast, slow)


# ----- models the fast path cannot build fall back to the slow build, with a warning ----------------
@dataclass
class ToyConfig:
    grid_size: int = 2
    token_dim: int = 3
    num_classes: int = 4


class DerivedBuffer(GenerativeModel):
    """A non-persistent buffer computed from a parameter in __init__ (would stay on meta)."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.config, self.num_classes = cfg, cfg.num_classes
        self.lin = nn.Linear(cfg.token_dim, cfg.token_dim)
        self.register_buffer("scaled", self.lin.weight.detach() * 2, persistent=False)


class Tied(GenerativeModel):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.config, self.num_classes = cfg, cfg.num_classes
        self.a = nn.Linear(cfg.token_dim, cfg.token_dim, bias=False)
        self.b = nn.Linear(cfg.token_dim, cfg.token_dim, bias=False)
        self.b.weight = self.a.weight


@pytest.mark.parametrize("cls, reason", [(DerivedBuffer, "stay on the meta device: \\['scaled'\\]"),
                                         (Tied, "shares parameters")])
def test_unfit_models_fall_back_to_the_slow_build(monkeypatch, cls, reason):
    monkeypatch.setitem(MODEL_SPECS, "toy", ModelSpec("toy", ToyConfig, cls, "toy", {"tiny": "toy"}))
    cfg = SimpleNamespace(model_type="toy", model=ToyConfig())
    src = cls(ToyConfig())
    tensors = {f"model.{k}": v.clone() for k, v in src.state_dict().items()}
    with pytest.warns(UserWarning, match=reason):
        model = build_model_from_tensors(cfg, tensors, "model", "toy.safetensors")
    assert meta_tensors(model) == [] and torch.equal(model.state_dict()["a.weight" if cls is Tied else "lin.weight"],
                                                     tensors["model.a.weight" if cls is Tied else "model.lin.weight"])
    if cls is Tied:
        assert model.a.weight is model.b.weight


def test_parameters_on_meta_is_scoped():
    original = nn.Module.register_parameter
    other_thread: list[nn.Module] = []
    with parameters_on_meta():
        inside = nn.Linear(2, 2)
        norm = nn.BatchNorm1d(2)
        t = threading.Thread(target=lambda: other_thread.append(nn.Linear(2, 2)))
        t.start()
        t.join()
    outside = nn.Linear(2, 2)
    assert inside.weight.is_meta and not outside.weight.is_meta
    assert norm.weight.is_meta and not norm.running_mean.is_meta  # buffers stay real
    assert not other_thread[0].weight.is_meta  # other threads are not affected
    assert nn.Module.register_parameter is original
