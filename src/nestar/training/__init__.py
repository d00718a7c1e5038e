"""One trainer for every model (checkpoint format: nestar.serialization; EMA: training/ema.py)."""

from nestar.training.trainer import Trainer, TrainingDivergedError, TrainResult

__all__ = ["Trainer", "TrainResult", "TrainingDivergedError"]
