"""The one training loop every defense runs in.

The engine owns what is the same for every defense: data order, device, seeds, the main optimiser and its
learning-rate schedule, mixed precision on CUDA, data-parallel training under ``torchrun`` (``robustlab/distributed.py``), the progress
bar, JSONL metrics, checkpoints every epoch and exact resume. It never names a defense: it calls the recipe's hooks (``robustlab/defenses/base.py``).

Determinism: the order of the training data in epoch ``e`` depends only on ``(seed, e)``, and the global RNG
states (torch, numpy, random) are saved with every checkpoint, so a run resumed from epoch ``e`` on the CPU ends
with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tqdm.auto import tqdm

from robustlab.checkpoint import (CONFIG_FILE, STATE_FILE, atomic_write_text, find_latest_checkpoint, load_checkpoint,
                                  refuse_dangling_link, remove_stale_temporaries, save_checkpoint)
from robustlab.config import Config, config_differences
from robustlab.data import ImageDataset
from robustlab.data.augment import random_crop_flip
from robustlab.defenses import Batch, Defense, TrainContext, build_defense
from robustlab.distributed import (all_reduce_sum, average_gradients, barrier, broadcast_module, init_distributed,
                                   shard, synchronise_optimizer)
from robustlab.errors import BrokenModel, CheckpointError, ConfigError, TrainingDiverged
from robustlab.evaluation import EvalSettings, evaluate
from robustlab.evaluation.outcome import accuracy
from robustlab.experiment import config_from_dict, upgrade_stored_config
from robustlab.passes import count_passes
from robustlab.run_lock import RunLock
from robustlab.runs import build_model_for, load_run_data
from robustlab.scalars import ScalarLog
from robustlab.schedule import STEPWISE, lr_factor
from robustlab.strict_json import strict_dumps

METRICS_FILE = "metrics.jsonl"


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; anything else is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = str(name).partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(name)


def resolve_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA devices that support it, else fp16 on CUDA; never on the CPU."""
    if amp == "off" or device.type != "cuda":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _to_json(random.getstate()),
                             "numpy": _to_json(np.random.get_state())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_from_json(state["python"]))
    np.random.set_state(_from_json(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _to_json(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, (tuple, list)):
        return [_to_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _from_json(obj: Any) -> Any:
    if isinstance(obj, dict) and "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    if isinstance(obj, list):
        return tuple(_from_json(v) for v in obj)
    return obj


def build_optimizer(params, config: Config) -> torch.optim.Optimizer:
    o = config.optim
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("the defense left no trainable parameters for the main optimiser")
    groups = [{"params": params, "weight_decay": o.weight_decay}]
    if o.weight_decay_on == "weights":
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": o.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
    return torch.optim.Adam(groups, lr=o.lr, betas=tuple(o.betas))


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    """Shuffled index batches whose order depends only on ``(seed, epoch)``."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


class Trainer:
    """Train ``config.model`` with ``config.defense``; ``resume=True`` continues from the newest checkpoint.

    Everything that can fail on user input (dataset files, model and defense options) is checked in the
    constructor, before anything is written to the run directory.
    """

    def __init__(self, config: Config, *, resume: bool = False, log: Callable[[str], None] = print):
        self.config = config
        self.run_dir = config.out_dir
        self.resume = resume
        self._check_run_dir()
        seed_everything(config.run.seed)
        self.device = resolve_device(config.run.device)
        self.dist = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.log = log if self.dist.is_main else (lambda _msg: None)
        self._warned_one_draw = False  # the one-draw per-epoch robust accuracy of a randomised model, said once
        self._said_epoch_suite = False  # which suite measures the per-epoch robust accuracy, said once
        self.amp_dtype = resolve_amp_dtype(config.run.amp, self.device)
        self.dataset = dataset_on(load_run_data(config), self.device, config.data.on_device)
        self.model = build_model_for(config, self.dataset).to(self.device)
        if config.run.init_from and not resume:
            load_initial_weights(self.model, config.run.init_from)
        if config.run.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.defense: Defense = build_defense(config.defense["name"],
                                              {k: v for k, v in config.defense.items() if k != "name"})
        self.ctx = TrainContext(device=self.device, dataset=self.dataset, amp_dtype=self.amp_dtype,
                                base_lr=config.optim.lr, augment=config.data.augment, rank=self.dist.rank,
                                world_size=self.dist.world_size, log=self.log)
        self.defense.setup_all(self.model, self.ctx)
        for module in self.defense.all_aux_modules().values():
            module.to(self.device)
        broadcast_module(self.model, self.dist)
        for module in self.defense.all_aux_modules().values():
            broadcast_module(module, self.dist)
        for optimizer in self.defense.all_aux_optimizers().values():
            synchronise_optimizer(optimizer, self.dist)
        self.optimizer = build_optimizer(self.defense.trainable_parameters(self.model), config)
        self.main_params = [p for group in self.optimizer.param_groups for p in group["params"]]
        # The compiled wrapper shares the parameters; checkpoints keep using the plain module's state dict.
        self.train_model = torch.compile(self.model) if config.run.compile else self.model
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        # Everything the user gave is valid: take the run directory (rank 0 writes it) and clear what a killed
        # run left half-written.
        self.lock = RunLock(self.run_dir).acquire() if self.dist.is_main else None
        if self.dist.is_main:
            remove_stale_temporaries(self.run_dir)
        if resume:
            self._restore()
        if self.dist.rank > 0:  # independent attack starts / dropout masks per process
            torch.manual_seed(config.run.seed * 1_000_003 + 7919 * self.dist.rank + self.start_epoch)

    # --- run directory ----------------------------------------------------------------------------------------
    def _check_run_dir(self) -> None:
        refuse_dangling_link(self.run_dir, "run.out_dir")
        latest = self.run_dir / "checkpoints" / "latest"
        if latest.exists() and not self.resume:
            raise ConfigError(f"{self.run_dir} already holds a run; pass --resume to continue it, or set "
                              f"run.out_dir / run.name to start a new one")
        if self.resume and not latest.exists():
            raise CheckpointError(f"nothing to resume: no checkpoint in {self.run_dir}")

    def _restore(self) -> None:
        ckpt = find_latest_checkpoint(self.run_dir)
        model_state, state, saved_config = load_checkpoint(ckpt)
        try:  # both sides with today's defaults filled in: a key added since is not a difference
            stored = config_from_dict(upgrade_stored_config(saved_config)).to_dict()
        except ConfigError as exc:
            raise CheckpointError(f"{ckpt} holds a config that no longer validates: {exc}") from None
        differ = config_differences(stored, self.config.to_dict())
        if differ:
            raise CheckpointError(f"--resume would continue another experiment: {self.run_dir} was trained with a "
                              f"different " + "; ".join(differ) + " (start a new run.out_dir for a new experiment)")
        if self.config.eval.every and self.config.eval.every_suite != "quick" \
                and "every_suite" not in saved_config.get("eval", {}):
            self.log(f"{self.run_dir} began before eval.every_suite existed: its earlier epochs hold a column per "
                     f"attack (the quick suite); its next ones the {self.config.eval.every_suite} suite's "
                     f"(--set eval.every_suite='\"quick\"' keeps the old columns)")
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        for name, module in self.defense.all_aux_modules().items():
            module.load_state_dict(state["aux_modules"][name])
        for name, opt in self.defense.all_aux_optimizers().items():
            opt.load_state_dict(state["aux_optimizers"][name])
        self.defense.load_all_extra_state(state.get("defense", {}))
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        try:
            self.start_epoch = int(state["epoch"])
            self.ctx.global_step = int(state["global_step"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{ckpt / STATE_FILE} is corrupt: its epoch or global_step is not an integer "
                                  f"(epoch {state.get('epoch')!r}, global_step {state.get('global_step')!r})") from None
        self.history = self._read_history()[: self.start_epoch]
        self.log(f"resumed {self.run_dir} from {ckpt.name} (epoch {self.start_epoch}/{self.config.run.epochs})")

    def _read_history(self) -> list[dict[str, Any]]:
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return []
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise CheckpointError(f"{path} is corrupt: line {number} is not JSON") from None
        return rows

    def _write_history(self) -> None:
        atomic_write_text(self.run_dir / METRICS_FILE, "".join(strict_dumps(row) + "\n" for row in self.history))

    def _save(self, epoch: int) -> Path:
        state = {
            "epoch": epoch,
            "global_step": self.ctx.global_step,
            "optimizer": self.optimizer.state_dict(),
            "aux_modules": {k: m.state_dict() for k, m in self.defense.all_aux_modules().items()},
            "aux_optimizers": {k: o.state_dict() for k, o in self.defense.all_aux_optimizers().items()},
            "defense": self.defense.all_extra_state(),
            "rng": rng_state(),
        }
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return save_checkpoint(self.run_dir, epoch, self.model.state_dict(), state, self.config.to_dict(),
                               keep=self.config.run.keep_checkpoints)

    # --- training ---------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg = self.config
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2))
        procs = f" x {self.dist.world_size} processes" if self.dist.enabled else ""
        self.log(f"training {cfg.model['name']} with {cfg.defense['name']} on {cfg.data.name} "
                 f"({len(self.dataset.train_x)} train / {len(self.dataset.test_x)} test) on {self.device}{procs} "
                 f"for {cfg.run.epochs} epochs -> {self.run_dir}")
        scalars = ScalarLog(self.run_dir) if cfg.run.tensorboard and self.dist.is_main else None
        try:
            for epoch in range(self.start_epoch, cfg.run.epochs):
                row = self.train_epoch(epoch)
                self.history.append(row)
                if self.dist.is_main:  # rank 0 alone writes metrics and checkpoints
                    self._write_history()
                    self._save(epoch + 1)
                    if scalars is not None:
                        scalars.epoch(row)
                barrier(self.dist)
                self.log(format_epoch(row))
        finally:
            if scalars is not None:
                scalars.close()
            if self.lock is not None:
                self.lock.release()
        return TrainResult(self.run_dir, cfg.run.epochs, self.history)

    def _diverged(self, what: str, epoch: int) -> TrainingDiverged:
        latest = find_latest_checkpoint(self.run_dir) if (self.run_dir / "checkpoints").exists() else None
        kept = f"the last good checkpoint, {latest.name}, stays the latest" if latest else "no checkpoint was written"
        lr = self.optimizer.param_groups[0]["lr"]
        return TrainingDiverged(f"training diverged: {what} in epoch {epoch + 1}; {kept}. Lower optim.lr (now "
                                f"{lr:g}), or check the data and the defense's options")

    def _check_finite_weights(self, epoch: int) -> None:
        """Refuse to checkpoint an epoch whose weights went NaN or infinite (its loss may still have looked finite)."""
        bad = [name for name, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise self._diverged(f"the weights became NaN or infinite ({', '.join(bad[:3])}"
                                 + (", ..." if len(bad) > 3 else "") + ")", epoch)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, model, defense, ctx = self.config, self.train_model, self.defense, self.ctx
        ctx.epoch = epoch
        self._set_lr(lr_factor(cfg.schedule, epoch, cfg.run.epochs))
        stepwise = cfg.schedule.name in STEPWISE
        started, cpu_started = time.perf_counter(), time.process_time()
        # the classifier's passes from the epoch's start (AT²L crafts its examples there) to its last batch
        with count_passes(model) as counted:
            defense.on_epoch_start_all(model, ctx)
            model.train()
            sums: dict[str, torch.Tensor] = {}
            seen = 0
            x_all, y_all = self.dataset.train_x, self.dataset.train_y
            n_batches = -(-len(x_all) // cfg.data.batch_size)
            show = cfg.run.progress and self.dist.is_main
            bar = tqdm(epoch_batches(len(x_all), cfg.data.batch_size, cfg.run.seed, epoch), total=n_batches,
                       desc=f"epoch {epoch + 1}/{cfg.run.epochs}", disable=not show or None, leave=False)
            for batch_number, global_idx in enumerate(bar):
                if stepwise:
                    self._set_lr(lr_factor(cfg.schedule, epoch + (batch_number + 1) / n_batches, cfg.run.epochs))
                idx = shard(global_idx, self.dist)
                x = x_all[idx].to(self.device, non_blocking=True)
                y = y_all[idx].to(self.device, non_blocking=True)
                if cfg.data.augment == "crop_flip":
                    x = random_crop_flip(x)
                if cfg.run.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                out = defense.step(model, Batch(x, y, idx), ctx)
                finite = torch.isfinite(out.loss.detach()).float()
                if self.dist.enabled:  # every process stops together
                    finite = all_reduce_sum(finite, self.dist) / self.dist.world_size
                if float(finite) < 1:
                    loss = float(out.loss.detach())
                    raise self._diverged(f"the loss is {loss:g} at step {batch_number + 1} of {n_batches}", epoch)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(out.loss).backward()
                if self.dist.enabled:  # before the scaler's inf check, so every process takes the same decision
                    average_gradients(self.main_params, self.dist.world_size)
                defense.after_backward_all(ctx)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                defense.after_step_all(model, ctx)
                ctx.global_step += 1
                n = len(y)
                seen += n
                for key, value in out.metrics.items():
                    sums[key] = sums.get(key, 0) + value.detach().float() * n
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"],
                               # the classifier's own passes per training image (a defense's other networks,
                               # such as a critic or a discriminator, not counted): the epoch's cost in model passes
                               "train_forward_per_image": round(counted.forward / max(seen, 1), 2),
                               "train_backward_per_image": round(counted.backward / max(seen, 1), 2)}
        if self.dist.enabled:
            seen = int(all_reduce_sum(torch.tensor(float(seen), device=self.device), self.dist).item())
            sums = {k: all_reduce_sum(v, self.dist) for k, v in sorted(sums.items())}
        row.update({f"train_{k}": round(v.item() / max(seen, 1), 6) for k, v in sums.items()})
        row.update(defense.on_epoch_end_all(model, ctx))
        row["train_time_s"] = round(time.perf_counter() - started, 3)
        row["train_cpu_time_s"] = round(time.process_time() - cpu_started, 3)  # this process's CPU time, all threads
        self._check_finite_weights(epoch)
        if self.dist.is_main:
            row.update(self.evaluate_epoch(epoch))
        row["time_s"] = round(time.perf_counter() - started, 3)
        return row

    def _set_lr(self, factor: float) -> None:
        """The main optimiser's learning rates at ``factor`` × their base, and the factor in the context."""
        self.ctx.lr_factor = factor
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor

    def evaluate_epoch(self, epoch: int) -> dict[str, float]:
        """Clean test accuracy every epoch; robust accuracy every ``eval.every`` epochs on ``eval.subset``."""
        cfg = self.config.eval
        x, y = self.dataset.test_x, self.dataset.test_y
        row = {"test_acc": round(accuracy(self.model, x, y, batch_size=cfg.batch_size, device=self.device), 6)}
        last = epoch + 1 == self.config.run.epochs
        if cfg.every and ((epoch + 1) % cfg.every == 0 or last) and any(e > 0 for e in cfg.eps):
            row.update(self._robust_accuracy_of_epoch(epoch, row["test_acc"]))
        row.update(self.defense.evaluate_all(self.model, self.ctx))
        return row

    def _robust_accuracy_of_epoch(self, epoch: int, clean: float) -> dict[str, float]:
        """``eval.every_suite`` on the first ``eval.subset`` test examples: "adaptive" (one worst-case column per ε,
        ``test_adaptive_<ε>_acc``, whether the model is deterministic or randomised, when ``test_eot_samples`` is
        logged too) or "quick" (a column per attack of ``eval.attacks``). A randomised model is attacked with EOT over
        ``eval.eot_samples`` draws per gradient."""
        cfg = self.config.eval
        eps = [e for e in cfg.eps if e > 0]
        settings = EvalSettings(eps=eps, subset=cfg.subset, batch_size=cfg.batch_size, attacks=cfg.attacks,
                                pgd_steps=cfg.pgd_steps, pgd_step_size=cfg.pgd_step_size,
                                pgd_restarts=cfg.pgd_restarts, eot_samples=cfg.eot_samples, gallery=0)
        names = cfg.attacks if cfg.every_suite == "quick" else [cfg.every_suite]
        try:
            result = evaluate(self.model, self.dataset.test_x, self.dataset.test_y, settings, suite=cfg.every_suite,
                              device=self.device, checks=False)
        except BrokenModel as exc:  # no robustness number: every column counts as 0
            self.log(f"epoch {epoch + 1}: {exc}")
            return {f"test_{name}_{e:g}_acc": 0.0 for name in names for e in eps}
        if not self._said_epoch_suite:
            self._said_epoch_suite = True
            stages = "; ".join(f"{st['name']}: {st['settings']}" for st in result.stages)
            self.log(f"per-epoch robust accuracy: the {result.suite} suite on the first {result.n} test examples "
                     f"({stages}); a monitor, not a claim: `robustlab eval` measures the claimed number")
        row: dict[str, float] = {}
        if result.randomised:
            row["test_eot_samples"] = cfg.eot_samples
            if cfg.eot_samples == 1 and not self._warned_one_draw:
                self._warned_one_draw = True
                self.log("randomised model: the per-epoch robust accuracy attacks it with one noise draw "
                         "per gradient (eval.eot_samples = 1) and overstates its robustness")
        if cfg.every_suite == "quick":
            row.update({f"test_{name}_0_acc": clean for name in cfg.attacks if 0 in cfg.eps})
            row.update({f"test_{r['attack']}_{r['eps']:g}_acc": round(r["accuracy"], 6)
                        for r in result.bounded_rows()})
        else:  # one name for a deterministic and a randomised model (adaptive_rand): a run keeps its column
            row.update({f"test_{cfg.every_suite}_{e:g}_acc": round(a, 6) for e, a in result.curve.items()})
        return row


ON_DEVICE_AUTO_LIMIT = 4 * 2**30  # bytes


def dataset_on(dataset: ImageDataset, device: torch.device, policy: str) -> ImageDataset:
    """``data.on_device``: move the dataset's tensors to ``device`` once, instead of copying every batch.

    "auto" does it on CUDA when the tensors take under 4 GiB (MNIST: 0.2 GiB, CIFAR-10: 0.7 GiB); "always" on any
    non-CPU device; "never" keeps them in host memory (batches are copied as they are drawn).
    """
    if device.type == "cpu" or policy == "never":
        return dataset
    tensors = (dataset.train_x, dataset.train_y, dataset.test_x, dataset.test_y)
    size = sum(t.element_size() * t.nelement() for t in tensors)
    if policy == "auto" and (device.type != "cuda" or size >= ON_DEVICE_AUTO_LIMIT):
        return dataset
    return ImageDataset(dataset.name, *(t.to(device) for t in tensors), dataset.num_classes, dataset.mean,
                        dataset.std)


def load_initial_weights(model: torch.nn.Module, checkpoint: str) -> None:
    """``run.init_from``: load the model weights (safetensors) of a checkpoint or run directory, e.g. the PGD-AT
    model that TLA fine-tunes; the optimiser, epoch and RNG start fresh. The architectures must match."""
    model_state, _state, _config = load_checkpoint(checkpoint)
    try:
        model.load_state_dict(model_state)
    except RuntimeError as exc:
        raise CheckpointError(f"run.init_from = {checkpoint}: weights do not fit the model: {exc}") from None


def format_epoch(row: dict[str, Any]) -> str:
    parts = [f"epoch {row['epoch']}"]
    for key, value in row.items():
        if key != "epoch" and isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
    return " ".join(parts)
