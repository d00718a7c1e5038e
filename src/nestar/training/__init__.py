"""One trainer for every model, checkpoints, EMA."""
from nestar.training.checkpoint import CheckpointError
from nestar.training.trainer import Trainer, TrainingDivergedError, TrainResult

__all__ = ["CheckpointError", "Trainer", "TrainResult", "TrainingDivergedError"]
