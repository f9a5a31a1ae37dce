"""Learning-rate schedules as pure functions of the epoch, so a resumed run needs no scheduler state.

Most schedules are evaluated once per epoch; those in :data:`STEPWISE` (one-cycle) at every step, at the
fractional epoch ``epoch + (step + 1) / steps_per_epoch``.
"""

from __future__ import annotations

import math

from robustlab.config import ScheduleConfig


STEPWISE = ("one_cycle",)


def lr_factor(schedule: ScheduleConfig, epoch: float, total_epochs: int) -> float:
    """Multiplier of the base learning rate for 0-based ``epoch`` (linear warm-up, then the named schedule).

    ``one_cycle`` (Smith & Topin 2019, as fast adversarial training uses it): linear from 0 to 1 at ``peak`` ×
    the training length, then linear down to 0 at the end.
    """
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
    if schedule.name == "one_cycle":
        progress = min(max(epoch / max(total_epochs, 1), 0.0), 1.0)
        return progress / schedule.peak if progress < schedule.peak else (1.0 - progress) / (1.0 - schedule.peak)
    raise ValueError(f"unknown schedule {schedule.name!r}")
