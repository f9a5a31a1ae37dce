"""Robust accuracy of a model under attacks, over a list of ε (a whole curve in one call)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from robustlab.attacks import Attack, build_attack
from robustlab.attacks.base import model_mode
from robustlab.config import EvalConfig

AttackFactory = Callable[[float], Attack]


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: Attack | None = None,
             batch_size: int = 500, device: torch.device | str | None = None, progress: bool = False,
             desc: str = "") -> float:
    """Fraction of ``(x, y)`` classified correctly, after ``attack`` if given; the model is evaluated in eval mode."""
    if len(x) == 0:
        raise ValueError("cannot compute accuracy on an empty set")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.long, device=device)
    with model_mode(model, "eval"):
        for start in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress, leave=False):
            xb = x[start:start + batch_size].to(device, non_blocking=True)
            yb = y[start:start + batch_size].to(device, non_blocking=True)
            if attack is not None:
                xb = attack(model, xb, yb)
            correct += _predict(model, xb).eq(yb).sum()
    return correct.item() / len(x)


def attack_factories(cfg: EvalConfig) -> dict[str, AttackFactory]:
    """ε → attack for each attack named in the ``[eval]`` section."""
    factories: dict[str, AttackFactory] = {}
    for name in cfg.attacks:
        if name == "pgd":
            factories[name] = lambda eps: build_attack(
                "pgd", eps, steps=cfg.pgd_steps, restarts=cfg.pgd_restarts,
                step_size=cfg.pgd_step_size if cfg.pgd_step_size > 0 else None)
        else:
            factories[name] = lambda eps, name=name: build_attack(name, eps)
    return factories


@dataclass
class CurvePoint:
    attack: str
    eps: float
    accuracy: float

    @property
    def error(self) -> float:
        return 1.0 - self.accuracy


def robustness_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, factories: dict[str, AttackFactory],
                     eps_list: list[float], *, batch_size: int = 500, device: torch.device | str | None = None,
                     progress: bool = False) -> tuple[float, list[CurvePoint]]:
    """Clean accuracy and the accuracy under each attack at each ε (ε = 0 is the clean accuracy)."""
    clean = accuracy(model, x, y, batch_size=batch_size, device=device, progress=progress, desc="clean")
    points = []
    for name, factory in factories.items():
        for eps in eps_list:
            acc = clean if eps == 0 else accuracy(model, x, y, attack=factory(eps), batch_size=batch_size,
                                                  device=device, progress=progress, desc=f"{name} eps={eps:g}")
            points.append(CurvePoint(name, float(eps), acc))
    return clean, points


def load_trained_model(checkpoint: str, device: torch.device | str = "cpu"):
    """Model, config and dataset of a checkpoint (a run directory or one of its ``checkpoints/epoch-*``)."""
    from robustlab.checkpoint import load_checkpoint
    from robustlab.config import config_from_dict
    from robustlab.data import load_dataset
    from robustlab.engine import build_model_for
    from robustlab.errors import CheckpointError

    model_state, state, config_dict = load_checkpoint(checkpoint)
    try:
        config = config_from_dict(config_dict)
    except Exception as exc:  # a config that no longer validates is a corrupt checkpoint for the user
        raise CheckpointError(f"checkpoint {checkpoint} holds an invalid config: {exc}") from None
    data = load_dataset(config.data.name, root=config.data.root or None, download=config.data.download)
    data = data.subset(config.data.train_subset, config.data.test_subset)
    model = build_model_for(config, data)
    try:
        model.load_state_dict(model_state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {checkpoint}: weights do not fit the model: {exc}") from None
    return model.to(device).eval(), config, data, state
