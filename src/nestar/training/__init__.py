"""One trainer for every model, safetensors checkpoints, EMA."""
from nestar.training.checkpoint import (
    CheckpointCorruptError, CheckpointError, load_checkpoint, load_pretrained, read_checkpoint_config, read_checkpoint_info, save_checkpoint,
    save_pretrained, write_checkpoint,
)
from nestar.training.trainer import Trainer, TrainingDivergedError, TrainResult

__all__ = [
    "CheckpointCorruptError", "CheckpointError", "Trainer", "TrainResult", "TrainingDivergedError", "load_checkpoint", "load_pretrained",
    "read_checkpoint_config", "read_checkpoint_info", "save_checkpoint", "save_pretrained", "write_checkpoint",
]
