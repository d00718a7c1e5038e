"""Optional TensorBoard logging (`--train.tensorboard=true`; extra: `pip install 'nestar[tensorboard]'`).

Every row the trainer writes to log.csv (loss and per-module losses, lr, grad norm, images/s) also
goes to `<run_dir>/tensorboard/` as `train/<name>` scalars. The CSV log stays the record of truth.
"""

from __future__ import annotations

from pathlib import Path

from nestar.config import ConfigError


class TensorBoardLogger:
    """A SummaryWriter that takes the trainer's CSV rows ({'step': s, name: value, ...})."""

    def __init__(self, log_dir: str | Path, resumed_step: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch raises ImportError when the tensorboard package is missing
            raise ConfigError(
                "train.tensorboard=true needs the tensorboard package: "
                "pip install 'nestar[tensorboard]' (or set --train.tensorboard=false)"
            ) from e
        # A resumed run hides the events a crashed run logged after its checkpoint (TensorBoard drops
        # those with step >= purge_step on reading), as Trainer._trim_log does for log.csv.
        self.writer = SummaryWriter(
            str(log_dir), purge_step=resumed_step + 1 if resumed_step else None
        )
        self.log_dir = Path(log_dir)

    def log(self, row: dict) -> None:
        step = int(row["step"])
        for name, value in row.items():
            if name != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.flush()  # rows come every log_every steps: cheap, and a crash loses nothing

    def close(self) -> None:
        self.writer.close()
