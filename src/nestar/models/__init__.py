"""Model families. Importing this package registers every family's ModelSpec (models/spec.py)."""

# Each module registers its family at import; this order is the order of every table and bench.
from nestar.models import nestar, raster, mar, arinar, nextscale  # noqa: F401  isort: skip
from nestar.models.base import GenerativeModel, GuidedBatch, SampleOutput, TokenModelConfig
from nestar.models.spec import MODEL_SPECS, ModelSpec, register_model

__all__ = [
    "GenerativeModel",
    "GuidedBatch",
    "MODEL_SPECS",
    "ModelSpec",
    "SampleOutput",
    "TokenModelConfig",
    "register_model",
]
