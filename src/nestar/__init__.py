"""nestar: Nested AutoRegressive image generation with continuous tokens, and its baselines."""

__version__ = "0.1.0"
