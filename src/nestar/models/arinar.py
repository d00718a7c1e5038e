"""ARINAR baseline: MAR's masked-AR outer model + an inner AR over each token's channels.

The outer model is `masked_ar.MaskedARModel`; the head (`heads/gmm_ar.py`) generates a token's C
channels one by one, each from a 1-D Gaussian mixture. See docs/design.md, "Baselines".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nestar.heads.gmm_ar import GMMARHead, GMMHeadConfig
from nestar.models.masked_ar import MaskedARConfig, MaskedARModel
from nestar.models.spec import ModelSpec, register_model


@dataclass
class ARINARConfig(MaskedARConfig):
    """ARINAR: the masked-AR outer model (MaskedARConfig) and the inner-AR GMM `head`."""

    enc_depth: int = 6
    dec_depth: int = 6
    buffer_size: int = 8
    head: GMMHeadConfig = field(default_factory=GMMHeadConfig)


class ARINAR(MaskedARModel):
    """ARINAR: masked-AR outer model, inner AR over channels with a K-component GMM per channel."""

    def __init__(self, config: ARINARConfig):
        super().__init__(config, lambda: GMMARHead(config.token_dim, config.dim, config.head))


register_model(
    ModelSpec(
        "arinar",
        ARINARConfig,
        ARINAR,
        "ARINAR: masked AR with an inner AR GMM head over channels",
        presets={"tiny": "arinar-tiny", "s": "arinar-s", "fmnist": "arinar-fmnist"},
    )
)
