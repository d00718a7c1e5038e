"""MAR baseline (docs/design.md, "Baselines"): masked AR with a bidirectional encoder-decoder and the flow head.

The outer model is MAR's MAE-style encoder/decoder, shared with the ARINAR baseline
(`masked_ar.MaskedARBackbone` / `masked_ar.MaskedARModel`), so MAR and ARINAR differ only in the head:
- `buffer_size` buffer tokens hold the class embedding (null class = `num_classes`, label dropout
  at training); the encoder sees [buffer; known tokens] only, the decoder all positions with a
  learned mask token at unknown ones; z = decoder output + a learned per-position embedding.
  Everything is bidirectional, so no KV cache is possible: every step re-runs both stacks.
- Training: one mask ratio per batch from N(1.0, 0.25^2) truncated to [0.7, 1], a random order per
  image; the flow loss covers masked tokens only.
- Sampling: a random order per image drawn from the passed generator; `num_iter` steps (MAR's
  default 64) on the cosine schedule remaining(s) = floor(N cos(pi/2 (s+1)/S)), at least one token
  per step; guidance weight linear in the share of tokens known after the step, as MAR does
  (`cfg_schedule='linear'`), applied to the head velocity over all channels; guidance_scale == 1
  runs no unconditional branch.

Choice: the encoder/decoder split (MAR's published architecture, 12+12 blocks at MAR-B) rather than
one bidirectional stack; `mar-s` keeps MAR's 64 buffer tokens (its setting for 256-token images) and
splits the depth of nestar-s evenly (12 + 12 blocks of width 256). MAR's attention/projection
dropout (0.1) is not used: no model in this project has dropout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nestar.heads import FlowHeadConfig, FlowMLPHead
from nestar.models.masked_ar import MaskedARConfig, MaskedARModel
from nestar.models.spec import ModelSpec, register_model


@dataclass
class MARConfig(MaskedARConfig):
    """MAR: the masked-AR outer model (MaskedARConfig) and the flow `head`; z has width `dim`."""

    head: FlowHeadConfig = field(default_factory=FlowHeadConfig)


class MAR(MaskedARModel):
    """MAR: masked-AR encoder/decoder + rectified-flow MLP head (MAR's DiffLoss with flow matching)."""

    def __init__(self, config: MARConfig):
        super().__init__(config, lambda: FlowMLPHead(config.token_dim, config.dim, config.head))


register_model(
    ModelSpec(
        "mar",
        MARConfig,
        MAR,
        "MAR: masked AR (encoder/decoder) with the flow head",
        presets={"tiny": "mar-tiny", "s": "mar-s", "fmnist": "mar-fmnist"},
    )
)
