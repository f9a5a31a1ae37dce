"""AT²L's ensemble (Algorithm 2) and rounds (Algorithm 1): the pairs (a, m) of an attack set A and a model set M,
and each round's adversarial examples of the training set, built against the current f and the frozen models.

See :mod:`robustlab.defenses.at2l` for the generation modes (``round``, ``round_full``, ``online``).
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks import Attack
from robustlab.attacks.registry import build_training_attack
from robustlab.errors import ConfigError
from robustlab.runs import load_source_model

#: The paper's attack sets (§3.3).
ATTACK_SETS: dict[str, tuple[str, ...]] = {
    "gradient": ("fgsm", "ll", "ifgsm", "ill"),
    "optimization": ("cw_l2",),
    "optimisation": ("cw_l2",),
    "mixed": ("fgsm", "ll", "ifgsm", "ill", "cw_l2"),
}
TRAINING_ATTACKS = ("fgsm", "ll", "ifgsm", "ill", "pgd", "cw_l2")
SELF = "self"  # the name of the defended model f in M


def expand_attacks(names: list[str]) -> list[str]:
    """Expand set names (gradient / optimization / mixed) and drop duplicates, keeping the order."""
    out: list[str] = []
    for name in names:
        for attack in ATTACK_SETS.get(name, (name,)):
            if attack not in out:
                out.append(attack)
    return out


def load_frozen_model(path: str, device) -> nn.Module:
    """A pre-trained model of M from its checkpoint: eval mode, no parameter gradients."""
    model = load_source_model(path, device=device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class AdversarialEnsemble:
    """A × M of Algorithm 2 (``options``: AT²L's), with the current round's examples in ``store``."""

    def __init__(self, options):
        self.options = o = options
        self.attack_names = expand_attacks(o.attacks)
        self.model_names = ([SELF] if o.include_self else []) + list(o.models)
        self.pairs = [(a, m) for a in self.attack_names for m in self.model_names]  # (a, m) ∈ A × M
        self.frozen: dict[str, nn.Module] = {}
        self.attacks: dict[str, Attack] = {}
        self.store: torch.Tensor | None = None       # round: (N, ...); round_full: (|pairs|, N, ...)
        self.store_pair: torch.Tensor | None = None  # round: the (a, m) index of each stored example
        self.generated_rounds = 0
        try:  # every attack of the set at its final ε must be valid now, not at the first round
            for name in self.attack_names:
                self.make_attack(name, o.eps)
        except ValueError as exc:
            raise ConfigError(f"defense: {exc}") from None

    def setup(self, model: nn.Module, ctx) -> None:
        o = self.options
        if o.generation != "online" and ctx.augment != "none":
            raise ConfigError(f"defense at2l with generation = {o.generation!r} pre-generates adversarial examples "
                              f"of the stored training images and needs data.augment = 'none' "
                              f"(or generation = 'online')")
        device = ctx.device
        for path in o.models:
            if path not in self.frozen:
                self.frozen[path] = load_frozen_model(path, device)
        dataset = ctx.dataset
        if dataset is not None and self.frozen:
            probe = dataset.train_x[:2].to(device)
            with torch.no_grad():
                for path, m in self.frozen.items():
                    try:
                        out = m(probe)
                    except RuntimeError as exc:
                        raise ConfigError(f"defense.models: {path} does not accept this dataset's images: {exc}"
                                          ) from None
                    if out.shape[1] != dataset.num_classes:
                        raise ConfigError(f"defense.models: {path} predicts {out.shape[1]} classes, the dataset "
                                          f"has {dataset.num_classes}")

    def model_of(self, name: str, model: nn.Module) -> nn.Module:
        return model if name == SELF else self.frozen[name]

    def make_attack(self, name: str, eps: float) -> Attack:
        o = self.options
        if name in ("fgsm", "ll"):
            return build_training_attack(name, eps, model_mode=o.attack_mode)
        if name in ("ifgsm", "ill"):
            return build_training_attack(name, eps, steps=o.iter_steps, step_size=o.iter_step_size,
                                         model_mode=o.attack_mode)
        if name == "pgd":
            return build_training_attack("pgd", eps, steps=o.iter_steps, step_size=o.iter_step_size,
                                         model_mode=o.attack_mode)
        if name == "cw_l2":
            return build_training_attack("cw_l2", max_iter=o.cw_max_iter, binary_search_steps=o.cw_binary_steps,
                                         initial_const=o.cw_initial_const, lr=o.cw_lr, model_mode=o.attack_mode)
        raise ConfigError(f"unknown training attack {name!r}")

    def start_round(self, model: nn.Module, ctx, eps: float, adversarial: bool) -> None:
        """This epoch's attacks at ``eps``, and (``adversarial``, not ``online``) the round's examples."""
        self.attacks = {name: self.make_attack(name, eps) for name in self.attack_names}
        self.store = self.store_pair = None
        if adversarial and self.options.generation != "online":
            self.pregenerate(model, ctx.dataset.train_x, ctx.dataset.train_y, ctx.device)

    def craft(self, pair: int, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples of ``(x, y)`` under the pair ``(a, m) = self.pairs[pair]``."""
        attack_name, model_name = self.pairs[pair]
        return self.attacks[attack_name](self.model_of(model_name, model), x, y)

    def _craft_chunks(self, pair: int, model: nn.Module, x: torch.Tensor, y: torch.Tensor, device) -> torch.Tensor:
        size = self.options.gen_batch_size
        out = torch.empty_like(x)
        for start in range(0, len(x), size):
            xb = x[start:start + size].to(device)
            yb = y[start:start + size].to(device)
            out[start:start + size] = self.craft(pair, model, xb, yb).to(out.device, out.dtype)
        return out

    def pregenerate(self, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, device) -> None:
        """Build this round's adversarial examples of the whole training set (stored next to ``train_x``)."""
        n = len(train_x)
        if self.options.generation == "round_full":
            self.store = torch.stack([self._craft_chunks(p, model, train_x, train_y, device)
                                      for p in range(len(self.pairs))])
        else:
            pair_of = torch.randint(len(self.pairs), (n,))
            store = torch.empty_like(train_x)
            for p in range(len(self.pairs)):
                idx = (pair_of == p).nonzero().squeeze(1)
                if len(idx):
                    store[idx] = self._craft_chunks(p, model, train_x[idx], train_y[idx], device)
            self.store, self.store_pair = store, pair_of
        self.generated_rounds += 1

    def adversarial_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
                          ) -> torch.Tensor:
        """x_adv for the batch: looked up by the examples' training-set ``index`` in this round's examples, or
        crafted now (``generation = "online"``)."""
        o = self.options
        if o.generation == "online":
            pair_of = torch.randint(len(self.pairs), (len(y),))
            x_adv = torch.empty_like(x)
            for p in pair_of.unique().tolist():
                idx = (pair_of == p).nonzero().squeeze(1).to(x.device)
                x_adv[idx] = self.craft(p, model, x[idx], y[idx])
            return x_adv
        if index is None or self.store is None:
            raise RuntimeError("at2l with pre-generated rounds needs the batch's training-set indices (Batch.index, "
                               "set by the engine) and on_epoch_start to have run")
        index = index.to(self.store.device)
        if o.generation == "round_full":
            pair_of = torch.randint(len(self.pairs), (len(index),), device=self.store.device)
            x_adv = self.store[pair_of, index]
        else:
            x_adv = self.store[index]
        return x_adv.to(x.device, non_blocking=True)
