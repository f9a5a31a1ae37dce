"""The resumable per-example state of an evaluation, kept in a folder named by what the evaluation is.

``state_root/<key>/rank<r>.{json,safetensors}``: ``key`` is a short hash of the evaluation's identity
(:func:`evaluation_identity`: the suite's stages, the threat model, the examples, the weights), so a second threat model, ε,
suite or model evaluated from the same place gets its own folder and resumes on its own. What is saved after
every batch: the clean outcome and, per unit of work (a stage at one ε), the fraction of draws still correct per
example (1 where the unit did not attack it), ρ and ‖r‖₂ of minimal attacks, the batches done and their cost; and
the adversarial points each batch found.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from robustlab.checkpoint import atomic_write_text
from robustlab.errors import ConfigError
from robustlab.evaluation.settings import EvalSettings
from robustlab.evaluation.suites import Suite

STATE_FORMAT = 3  # a state written in another format is another evaluation
# What decides the outcome besides the suite's stages (which hold every budget): the threat model and the examples.
OUTCOME_SETTINGS = ("norm", "eps", "subset", "batch_size", "seed")
SPEED_ONLY_OPTIONS = ("batched",)  # stage options that change how fast, not what is computed


class OtherEvaluationState(ConfigError):
    """The state folder holds another evaluation (model, data, settings or format differ)."""


def _digest(parts) -> str:
    """sha256 of (label, tensor) pairs: each label's text, then the tensor's bytes."""
    h = hashlib.sha256()
    for label, t in parts:
        h.update(label.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's parameters and buffers: a resumed evaluation must be of the same weights."""
    return _digest(sorted(model.state_dict().items()))


def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' shapes and bytes (the evaluated examples: another dataset of the same size is
    another evaluation)."""
    return _digest((str(tuple(t.shape)), t) for t in tensors)


def evaluation_identity(suite: Suite, settings: EvalSettings, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                        num_classes: int, world_size: int, fingerprint: str | None = None,
                        transfer_source: nn.Module | None = None) -> dict:
    """Everything that decides an evaluation's per-example outcome, and nothing that only changes its speed or
    its checks: the suite's stages (budgets included), the threat model and batches, the examples, the weights
    (and a transfer source's), the precision the attacks run in, the processes."""
    spec = suite.to_dict()
    for stage in spec["stages"]:
        for key in ("options", "probe_options"):
            if key in stage:
                stage[key] = {k: v for k, v in stage[key].items() if k not in SPEED_ONLY_OPTIONS}
    device = x.device.type if x.is_cuda else next(model.parameters(), x).device.type
    autocast = torch.is_autocast_enabled(device)
    return {"format": STATE_FORMAT, "suite": spec,
            "settings": {k: getattr(settings, k) for k in OUTCOME_SETTINGS},
            "data": tensor_digest(x, y), "model": fingerprint or model_fingerprint(model),
            "transfer_source": model_fingerprint(transfer_source) if transfer_source is not None else None,
            "precision": str(torch.get_autocast_dtype(device)) if autocast else "float32",
            "classes": num_classes, "world_size": world_size}


def state_key(meta: dict) -> str:
    """The folder name of an evaluation: 16 hex digits of the sha256 of its identity."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]


class EvaluationState:
    """This process's share of the per-example outcome, saved after every batch when ``folder`` is given."""

    def __init__(self, folder: Path | None, rank: int, meta: dict, n: int, units: list[str]):
        self.path = folder / f"rank{rank}" if folder is not None else None
        self.meta = json.loads(json.dumps(meta, default=str)) if folder is not None else meta  # as read back
        self.units = units
        self.clean: torch.Tensor | None = None
        self.outcome = torch.ones(len(units), n)
        self.rho = torch.full((len(units), n), float("nan"), dtype=torch.float64)
        self.l2 = torch.full((len(units), n), float("nan"), dtype=torch.float64)
        # the logit margin z_y − max z_j: at the clean point, and per unit at the point it returned (inf: not run)
        self.clean_margin = torch.full((n,), float("inf"))
        self.margin = torch.full((len(units), n), float("inf"))
        self.done: dict[str, int] = {}
        self.stats: dict[str, dict] = {}
        self.resumed: set[str] = set()  # units with batches done before this process started
        if self.path is not None and self.path.with_suffix(".json").exists():
            self._load()

    def _load(self) -> None:
        file = self.path.with_suffix(".json")
        try:
            saved = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise OtherEvaluationState(f"{file} is not an evaluation state ({exc}); delete {file.parent} "
                                       f"or use --fresh") from None
        if saved.get("meta") != self.meta:
            differ = sorted(k for k in set(saved.get("meta", {})) | set(self.meta)
                            if saved.get("meta", {}).get(k) != self.meta.get(k))
            raise OtherEvaluationState(f"{file.parent} holds the state of another evaluation (differs in: "
                                       f"{', '.join(differ)}); delete it or use --fresh")
        tensors = load_file(str(self.path.with_suffix(".safetensors")))
        self.clean = tensors.get("clean")
        self.outcome, self.rho, self.l2 = tensors["outcome"], tensors["rho"], tensors["l2"]
        self.clean_margin, self.margin = tensors["clean_margin"], tensors["margin"]
        self.done, self.stats = saved["done"], saved["stats"]
        self.resumed = {unit for unit, batches in self.done.items() if batches}

    def _adv_file(self, unit: str, batch: int) -> Path:
        return self.path.parent / f"{self.path.name}_adv_{unit}_{batch}.safetensors"

    def save_points(self, unit: str, batch: int, index: torch.Tensor, points: torch.Tensor) -> None:
        """The adversarial points a batch found (written once per batch: the state stays small)."""
        if self.path is not None and len(index):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._save_tensors({"index": index.contiguous(), "x": points.contiguous()}, self._adv_file(unit, batch))

    def _save_tensors(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        """Write-then-rename (one temporary per process): a kill mid-write never leaves a corrupt file."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(tensors, str(tmp))
        tmp.replace(path)

    def load_points(self, unit: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (index, points) of the batches of ``unit`` done before a resume, in the order they were found."""
        found = []
        for batch in range(self.done.get(unit, 0)):
            file = self._adv_file(unit, batch) if self.path is not None else None
            if file is not None and file.exists():
                saved = load_file(str(file))
                found.append((saved["index"], saved["x"]))
        return found

    def _gallery_file(self, unit: str) -> Path:
        return self.path.parent / f"{self.path.name}_gallery_{unit}.safetensors"

    def save_gallery(self, unit: str, x: torch.Tensor, pred: torch.Tensor) -> None:
        """A unit's gallery column (its points and predictions on the first examples), so a resume keeps it."""
        if self.path is not None:
            self._save_tensors({"x": x.contiguous(), "pred": pred.contiguous()}, self._gallery_file(unit))

    def load_gallery(self, unit: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        file = self._gallery_file(unit) if self.path is not None else None
        if file is None or not file.exists():
            return None
        saved = load_file(str(file))
        return saved["x"], saved["pred"]

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"outcome": self.outcome, "rho": self.rho, "l2": self.l2, "margin": self.margin,
                   "clean_margin": self.clean_margin}
        if self.clean is not None:
            tensors["clean"] = self.clean
        self._save_tensors(tensors, self.path.with_suffix(".safetensors"))
        atomic_write_text(self.path.with_suffix(".json"), json.dumps(
            {"meta": self.meta, "done": self.done, "stats": self.stats}, indent=1))
