"""Loading KL autoencoder weights from local checkpoint files (the public KL-16 release, or others).

The public KL-16 VAE of MAR is distributed as `kl16.ckpt`: a torch pickle whose "model" entry is
the state dict of `AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))`. nestar cannot download
it: obtain the file manually and point `--tokenizer.path` at it (default location
`pretrained_models/vae/kl16.ckpt`, MAR's, or `$NESTAR_KL16_PATH`).

Pickles are only ever opened with `torch.load(..., weights_only=True)`, which restores tensors and
plain containers and refuses arbitrary objects. `.safetensors` files are read directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from nestar.tokenizers.vae_weights import (  # noqa: F401  (re-exported: the KL-16 loading API)
    OBTAIN_HINT,
    LoadReport,
    TokenizerCheckpointError,
    load_weights,
    read_state_dict,
)

DEFAULT_KL16_PATH = "pretrained_models/vae/kl16.ckpt"
KL16_SCALE = 0.2325  # 1/std of KL-16 latents over ImageNet (MAR); no mean shift


def default_kl16_path() -> Path:
    return Path(os.environ.get("NESTAR_KL16_PATH") or DEFAULT_KL16_PATH)


def load_kl16(path: Optional[str | Path] = None, strict: bool = False):
    """The KL-16 autoencoder with weights from a local file; returns (KLAutoencoder, LoadReport)."""
    from nestar.tokenizers.kl_vae import KLAutoencoder, kl16_config

    path = Path(path) if path else default_kl16_path()
    sd = read_state_dict(path)
    vae = KLAutoencoder(kl16_config())
    report = load_weights(vae, sd, str(path), strict=strict)
    return vae.eval(), report
