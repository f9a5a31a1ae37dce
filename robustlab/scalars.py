"""TensorBoard scalars of a training run (``run.tensorboard = true``): every number of the per-epoch log.

The events go to ``<run dir>/tensorboard/``, one scalar per log key with the epoch as its step, so
``tensorboard --logdir runs`` compares runs side by side; ``metrics.jsonl`` stays the record the library reads.
A resumed run appends (TensorBoard shows the latest value of a step written twice).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from robustlab.errors import ConfigError

__all__ = ["ScalarLog"]


class ScalarLog:
    """A TensorBoard writer for the epoch rows of one run (rank 0 only)."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("run.tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def epoch(self, row: dict[str, Any]) -> None:
        """Every finite number of the epoch's row, at step ``row["epoch"]``."""
        step = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
