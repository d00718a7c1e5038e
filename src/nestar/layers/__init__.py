"""Shared network layers, below heads and models: transformer with KV cache, adaLN block, class embedding."""

from nestar.layers.adaln import AdaLNBlock, Modulation
from nestar.layers.conditioning import ClassEmbedding
from nestar.layers.transformer import Block, KVCache, Transformer

__all__ = ["AdaLNBlock", "Block", "ClassEmbedding", "KVCache", "Modulation", "Transformer"]
