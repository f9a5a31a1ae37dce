"""The attack contract (DESIGN.md): ``attack(model, x, y) -> x_adv``.

An attack is constructed with its threat model (norm, ε, steps, ...) and called on a batch. It works on the
model's device, returns a detached tensor in the [0,1] box, puts the model in the mode it asks for (eval by
default: dropout off, batch-norm statistics frozen) and restores every submodule's mode afterwards. Gradients
are taken with ``torch.autograd.grad`` with respect to the input only (``losses.loss_gradient``), with the
parameters' ``requires_grad`` off for the call, so nothing accumulates on parameters.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
from torch import nn

from robustlab.modes import MODEL_MODES, model_mode, parameters_frozen
from robustlab.rng import seeded

class Attack(ABC):
    """Base class: subclasses implement :meth:`perturb`; ``__call__`` owns the model mode and detaching.

    Randomness has one mechanism: every attack draws from the global RNG. ``seed`` (an attack that takes one sets
    it): each call runs under :func:`robustlab.rng.seeded` (reproducible, and the caller's RNG is left as it
    was), as the evaluation runner does for every (stage, batch).
    """

    seed: int | None = None
    needs_images = False  # works on (N, C, H, W) images with H, W >= 2 (windows, pixels), not any tensor

    def __init__(self, *, model_mode: str = "eval"):
        if model_mode not in MODEL_MODES:
            raise ValueError(f"model_mode must be one of {MODEL_MODES}, got {model_mode!r}")
        self.model_mode = model_mode

    @contextlib.contextmanager
    def calling(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Iterator[None]:
        """What every entry point of an attack does around its work: the inputs checked once, the model in the
        attack's mode with frozen parameters, the RNG seeded when the attack has a seed."""
        with model_mode(model, self.model_mode), parameters_frozen(model):
            check_batch(model, x, y)
            with seeded(self.seed, x.device) if self.seed is not None else contextlib.nullcontext():
                yield

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.calling(model, x, y):
            x_adv = self.perturb(model, x.detach(), y.detach().long())  # any integer labels: int64 inside
        return x_adv.detach()

    @abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return adversarial examples for the batch; the model is already in the requested mode."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


NORM_SPELLINGS = {"linf": "linf", "l_inf": "linf", "inf": "linf", "l∞": "linf", "∞": "linf",
                  "l2": "l2", "l_2": "l2", "2": "l2"}


def parse_norm(norm: str, allowed: tuple[str, ...] = ("linf", "l2")) -> str:
    """The one spelling of a norm name ("linf" or "l2") for every spelling a user may write ("Linf", "L∞", "inf",
    "L2", ...), refused with one ValueError when it is not among ``allowed``."""
    key = NORM_SPELLINGS.get(str(norm).strip().lower().replace(" ", ""))
    if key is None or key not in allowed:
        names = " or ".join(repr(a) for a in allowed)
        raise ValueError(f"norm must be {names} (also written 'Linf', 'L∞', 'L2'), got {norm!r}")
    return key


def check_epsilon(eps: float, norm: str = "linf") -> float:
    """ε as a float: finite and >= 0; an L∞ ε above 1 (the whole [0,1] range) is refused as a unit mistake.

    ``norm`` is parsed first (:func:`parse_norm`), so every spelling of L∞ gets the same refusal."""
    norm = parse_norm(norm)
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"epsilon must be a finite number >= 0, got {eps}")
    if norm == "linf" and eps > 1:
        raise ValueError(f"an L∞ epsilon above 1 exceeds the [0,1] image range, got {eps} (did you mean {eps}/255?)")
    return eps


def check_seed(seed: int | None) -> int | None:
    if seed is not None and (isinstance(seed, bool) or int(seed) != seed):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    return None if seed is None else int(seed)


# model -> {input shape: number of classes}, learned by one side-effect-free forward pass of two examples.
_MODEL_CLASSES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def model_classes(model: nn.Module, x: torch.Tensor) -> int:
    """The number of classes ``model`` outputs for inputs shaped like ``x`` (cached per model and shape).

    The probe (two examples, so that a model which takes one example but not a batch is caught here, not in the
    middle of an attack) runs in eval mode without gradients and restores the global RNG, so it changes nothing:
    no batch-norm statistics, no noise draws. An input the model cannot take, or logits that are not one row per
    example over at least two classes, is a ValueError naming the shapes.
    """
    key = (tuple(x.shape[1:]), x.dtype)
    known = _MODEL_CLASSES.setdefault(model, {})
    if key not in known:
        param = next(model.parameters(), None)
        probe = (x[:2] if len(x) >= 2 else torch.cat([x[:1], x[:1]])).detach()
        probe = probe.to(param.device) if param is not None else probe
        devices = [probe.device.index or 0] if probe.device.type == "cuda" else []
        with torch.no_grad(), model_mode(model, "eval"), torch.random.fork_rng(devices=devices):
            try:
                logits = model(probe)
            except RuntimeError as exc:
                raise ValueError(f"the model does not accept inputs of shape {tuple(x.shape[1:])} and dtype "
                                 f"{x.dtype}: {str(exc).splitlines()[0]}") from None
        if logits.dim() != 2 or logits.shape[0] != len(probe):
            raise ValueError(f"the model must return logits of shape (batch, classes), one row per example: for a "
                             f"batch of {len(probe)} inputs of shape {tuple(x.shape[1:])} it returned "
                             f"{tuple(logits.shape)}")
        if logits.shape[1] < 2:
            raise ValueError(f"the model returns {logits.shape[1]} logit per example: a classifier needs at least "
                             f"2 classes (one logit per class, not a probability or a score)")
        known[key] = int(logits.shape[1])
    return known[key]


def check_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse, with one ValueError, a batch that would give a silently wrong result: every attack and evaluation
    entry calls this once per call (never inside an attack's loop).

    ``x``: a non-empty floating-point batch of images in [0,1] (a hint when it looks like 0–255), finite, in a
    shape the model takes; ``y``: integer labels (any integer dtype: the attacks use them as int64), one per
    example, in [0, classes).
    """
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("x and y must be torch tensors")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (N, ...) of images, got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must hold one label per example: x has {x.shape[0]}, y has shape {tuple(y.shape)}")
    if not x.is_floating_point():
        hint = " (uint8 images: divide by 255)" if x.dtype == torch.uint8 else ""
        raise ValueError(f"x must be floating-point images in [0,1], got {x.dtype}{hint}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class labels, got {y.dtype}")
    lo, hi = torch.aminmax(x.detach())  # NaN propagates to both, ±inf shows in one of them
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        raise ValueError("x holds NaN or infinite values")
    if float(lo) < 0 or float(hi) > 1:
        hint = " (it looks like 0–255 images: divide by 255)" if float(hi) > 1.5 else ""
        raise ValueError(f"x must lie in [0,1], got values in [{float(lo):g}, {float(hi):g}]{hint}")
    classes = model_classes(model, x)
    y_lo, y_hi = int(y.min()), int(y.max())
    if y_lo < 0 or y_hi >= classes:
        raise ValueError(f"labels must lie in [0, {classes}) for this model, got values in [{y_lo}, {y_hi}]")
