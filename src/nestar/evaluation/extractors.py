"""Feature extractors behind one interface, so every metric runs on any of them (SPEC 6).

- `ClassifierExtractor`: the dataset classifier's 128-d penultimate features and its logits
  (offline default; trained and cached by `nestar.evaluation.classifier`).
- `InceptionTorchScript`: an Inception-v3 TorchScript file given by path, e.g. NVIDIA's
  `inception-2015-12-05.pt` (2048-d pool features; the numbers comparable with papers).
- `TorchFidelityInception`: torch-fidelity's Inception, only when `import torch_fidelity` works
  and its weights file is given (nothing is downloaded at run time).

All take float images in [-1, 1], (N, C, H, W) (uint8 [0, 255] is accepted too) and work in
batches with an optional progress bar.
"""
from __future__ import annotations

import hashlib
import importlib
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

INCEPTION_HINT = ("see docs/evaluation.md: download NVIDIA's inception-2015-12-05.pt (StyleGAN2-ADA/3 metrics) "
                  "once on a machine with internet access and pass --extractor inception:/path/to/file.pt")


def _as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] -> float [-1, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div(127.5).sub(1.0)
    return images.float()


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Content hash of a weights file, so reference statistics are keyed by the exact network."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class FeatureExtractor:
    """Images -> (features (N, D), logits (N, K) or None).

    Subclasses implement `_forward(batch)` on float [-1, 1] batches and set `name` (human
    readable), `identity` (exact network, for cache keys) and `feature_dim`.
    """

    name: str = "extractor"
    identity: str = "extractor"
    feature_dim: int = 0
    has_logits: bool = False
    batch_size: int = 256

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)

    def _forward(self, x: torch.Tensor, want_logits: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError

    @torch.no_grad()
    def extract(self, images: torch.Tensor, *, want_logits: bool = True, batch_size: Optional[int] = None,
                progress: bool = False, desc: str = "features") -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Features (float32, CPU) and logits (or None) of all `images`, computed in batches."""
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("no images to extract features from")
        want_logits = want_logits and self.has_logits
        bs = batch_size or self.batch_size
        feats, logits = [], []
        for i in tqdm(range(0, images.shape[0], bs), desc=desc, disable=not progress, dynamic_ncols=True):
            x = _as_float(images[i : i + bs]).to(self.device)
            f, lg = self._forward(x, want_logits)
            feats.append(f.float().cpu())
            if want_logits and lg is not None:
                logits.append(lg.float().cpu())
        return torch.cat(feats), (torch.cat(logits) if logits else None)

    def features(self, images: torch.Tensor, **kw) -> torch.Tensor:
        """(N, D) features of images in [-1, 1]."""
        return self.extract(images, want_logits=False, **kw)[0]

    def logits(self, images: torch.Tensor, **kw) -> Optional[torch.Tensor]:
        """(N, K) class logits, or None when this extractor has no classification head."""
        if not self.has_logits:
            return None
        return self.extract(images, want_logits=True, **kw)[1]

    def describe(self) -> dict:
        """What goes into metrics JSON: which network produced the features."""
        return {"name": self.name, "identity": self.identity, "feature_dim": self.feature_dim}


class ClassifierExtractor(FeatureExtractor):
    """The dataset classifier (`SmallCNN`): 128-d penultimate features and class logits.

    Images whose size differs from the classifier's are resized bilinearly (with one warning),
    since a generator at another resolution should still be comparable on content.
    """

    name = "classifier"
    has_logits = True
    batch_size = 500

    def __init__(self, model: torch.nn.Module, info: Optional[dict] = None, device: str | torch.device = "cpu"):
        super().__init__(device)
        self.model = model.to(self.device).eval()
        self.model.to(memory_format=torch.channels_last)  # ~1.5x faster CPU convolutions (same up to rounding)
        self.info = dict(info or {})
        self.feature_dim = int(getattr(model, "feature_dim", 0))
        # The weights hash is always part of the identity: the cache key names the data and settings,
        # but retraining on another machine gives other weights (thread count, CPU kernels), and
        # features of other weights must never meet cached statistics or figures of these.
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        key = self.info.get("key")
        self.identity = f"classifier:{key + ':' if key else ''}w{h.hexdigest()[:16]}"
        self._warned = False

    def _forward(self, x: torch.Tensor, want_logits: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        m = self.model
        if x.shape[1] != m.channels:
            if x.shape[1] == 3 and m.channels == 1:
                x = x.mean(1, keepdim=True)
            elif x.shape[1] == 1 and m.channels == 3:
                x = x.expand(-1, 3, -1, -1)
            else:
                raise ValueError(f"classifier takes {m.channels}-channel images, got {x.shape[1]} channels")
        if x.shape[-2:] != (m.image_size, m.image_size):
            if not self._warned:
                warnings.warn(f"resizing {tuple(x.shape[-2:])} images to the classifier's "
                              f"{m.image_size}x{m.image_size} (bilinear)", stacklevel=3)
                self._warned = True
            x = F.interpolate(x, size=(m.image_size, m.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        f = m.features(x.contiguous(memory_format=torch.channels_last))
        return f, (m.fc(f) if want_logits else None)

    def describe(self) -> dict:
        out = super().describe()
        out["test_accuracy"] = self.info.get("test_accuracy")
        return out


class InceptionTorchScript(FeatureExtractor):
    """An Inception-v3 TorchScript file, e.g. NVIDIA's `inception-2015-12-05.pt`.

    NVIDIA's network takes float images in [0, 255] (uint8 range), 3 x 299 x 299, and returns the
    2048-d pool3 features with `return_features=True`, else class probabilities (1008 classes) —
    we return their log as logits (`softmax(log p) = p`, so the Inception Score is unchanged).
    Inputs here are resized bilinearly to 299 and grayscale is replicated to 3 channels. A
    TorchScript file whose forward has no `return_features` argument is taken to return
    features directly (no logits).
    """

    name = "inception"
    batch_size = 32
    size = 299

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        super().__init__(device)
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"Inception TorchScript file {self.path} does not exist; {INCEPTION_HINT}")
        try:
            with warnings.catch_warnings():  # torch >= 2.9 marks jit as deprecated; the files are TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(self.path), map_location=self.device)
        except Exception as e:  # torch raises RuntimeError/ValueError/pickle errors depending on the file
            raise ValueError(f"{self.path} is not a TorchScript module that torch.jit.load can read "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {INCEPTION_HINT}") from e
        self.module = module.eval()
        try:
            arg_names = [a.name for a in module.forward.schema.arguments]
        except Exception:  # older/unusual modules: assume the NVIDIA protocol
            arg_names = ["self", "img", "return_features"]
        self.nvidia_protocol = "return_features" in arg_names
        self._no_output_bias = "no_output_bias" in arg_names
        self.has_logits = self.nvidia_protocol
        self.identity = f"inception-torchscript:{file_sha256(self.path)[:16]}"
        self.feature_dim = int(self._forward(torch.zeros(1, 3, 8, 8, device=self.device), False)[0].shape[1])

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"Inception takes 1- or 3-channel images, got {x.shape[1]} channels")
        x = (x.clamp(-1, 1) + 1) * 127.5  # [-1, 1] -> [0, 255], the range the NVIDIA network expects
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x

    def _forward(self, x: torch.Tensor, want_logits: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        x = self._prepare(x)
        if not self.nvidia_protocol:
            f = self.module(x)
            return f.reshape(f.shape[0], -1), None
        f = self.module(x, return_features=True)
        if not want_logits:
            return f.reshape(f.shape[0], -1), None
        probs = self.module(x, no_output_bias=True) if self._no_output_bias else self.module(x)
        return f.reshape(f.shape[0], -1), probs.double().clamp_min(1e-30).log()

    def describe(self) -> dict:
        return {**super().describe(), "path": str(self.path)}


class TorchFidelityInception(FeatureExtractor):
    """torch-fidelity's `inception-v3-compat` (2048-d features + unbiased logits), optional.

    torch-fidelity would download its weights on first use; runs here must not download, so
    the weights file (weights-inception-2015-12-05-6726825d.pth) has to be given by path.
    """

    name = "torch-fidelity"
    has_logits = True
    batch_size = 32
    feature_dim = 2048

    def __init__(self, weights_path: Optional[str | Path], device: str | torch.device = "cpu"):
        super().__init__(device)
        # Loaded by name, only here: torch-fidelity pulls torchvision (CUDA-linked on PyPI, broken
        # beside the CPU torch), so it is never a dependency, only used where the user installed it.
        try:
            FeatureExtractorInceptionV3 = importlib.import_module(
                "torch_fidelity.feature_extractor_inceptionv3").FeatureExtractorInceptionV3
        except ImportError as e:
            raise ImportError("the torch-fidelity backend needs `pip install torch-fidelity`; the offline "
                              "defaults are --extractor classifier or inception:PATH") from e
        if not weights_path or not Path(weights_path).is_file():
            raise FileNotFoundError(f"torch-fidelity weights file {weights_path!r} not found: pass "
                                    f"torch-fidelity:/path/to/weights-inception-2015-12-05-6726825d.pth "
                                    f"(nestar never downloads at run time)")
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=str(weights_path)).to(self.device).eval()
        self.identity = f"torch-fidelity:{file_sha256(weights_path)[:16]}"

    def _forward(self, x: torch.Tensor, want_logits: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # torch-fidelity takes uint8
        f, lg = self.net(u8)
        return f, (lg if want_logits else None)


def build_extractor(spec: str, data_cfg=None, *, device: str = "cpu", progress: bool = True,
                    cache_dir: Optional[str | Path] = None) -> FeatureExtractor:
    """`classifier` | `inception:PATH` | `torch-fidelity:WEIGHTS_PATH` -> a FeatureExtractor."""
    kind, _, arg = spec.partition(":")
    if kind == "classifier":
        from nestar.data import DataConfig
        from nestar.evaluation.classifier import get_classifier

        model, info = get_classifier(data_cfg or DataConfig(), cache_dir=cache_dir, device=device, progress=progress)
        return ClassifierExtractor(model, info, device)
    if kind == "inception":
        if not arg:
            raise ValueError(f"--extractor inception needs a path: inception:/path/to/inception-2015-12-05.pt; "
                             f"{INCEPTION_HINT}")
        return InceptionTorchScript(arg, device)
    if kind == "torch-fidelity":
        return TorchFidelityInception(arg or None, device)
    raise ValueError(f"unknown extractor {spec!r}: use classifier, inception:PATH or torch-fidelity:WEIGHTS")


__all__ = ["ClassifierExtractor", "FeatureExtractor", "InceptionTorchScript", "TorchFidelityInception",
           "build_extractor"]
