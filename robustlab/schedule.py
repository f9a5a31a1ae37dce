"""Learning-rate schedules as pure functions of the epoch, so a resumed run needs no scheduler state."""

from __future__ import annotations

import math

from robustlab.config import ScheduleConfig


def lr_factor(schedule: ScheduleConfig, epoch: int, total_epochs: int) -> float:
    """Multiplier of the base learning rate for 0-based ``epoch`` (linear warm-up, then the named schedule)."""
    if schedule.warmup_epochs and epoch < schedule.warmup_epochs:
        return (epoch + 1) / (schedule.warmup_epochs + 1)
    if schedule.name == "constant":
        return 1.0
    if schedule.name == "multistep":
        return schedule.gamma ** sum(1 for m in schedule.milestones if epoch >= m)
    if schedule.name == "cosine":
        span = max(1, total_epochs - schedule.warmup_epochs)
        progress = (epoch - schedule.warmup_epochs) / span
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule.name!r}")
