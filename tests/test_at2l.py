"""AT²L (eq. 2, Algorithms 1-2), the shared triplet machinery and the input-randomisation wrapper."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from robustlab.defenses import Batch, TrainContext, build_defense
from robustlab.defenses.at2l import AT2L
from robustlab.defenses.at2l_ensemble import AdversarialEnsemble, expand_attacks
from robustlab.defenses.triplet import TripletLoss, triplet_hinge
from robustlab.defenses.triplet_mining import (MiningRequest, Negatives, NegativeMiner, build_miner, get_distance,
                                               register_miner)
from robustlab.engine import Trainer
from robustlab.errors import CheckpointError, ConfigError
from robustlab.experiment import config_from_dict


def at2l_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, negative_index: torch.Tensor,
              *, lam1: float, lam2: float, margin: float, distance: str = "linf",
              valid: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. (2) on given logits, with the negatives given as indices into the clean batch: the oracle the defense's
    loss is checked against (itself checked by hand below).

    Returns the loss and its parts: ``ce`` = the normalised cross-entropy part, ``triplet`` = (1/k) Σ hinge.
    """
    k = len(y)
    ce = (F.cross_entropy(logits_clean, y, reduction="sum")
          + lam1 * F.cross_entropy(logits_adv, y, reduction="sum")) / ((1.0 + lam1) * k)
    hinge = triplet_hinge(logits_adv, logits_clean, logits_clean[negative_index], margin, distance)
    if valid is not None:
        hinge = torch.where(valid, hinge, torch.zeros_like(hinge))
    triplet = hinge.sum() / k
    return ce + lam2 * triplet, {"ce": ce, "triplet": triplet, "hinge": hinge}



def ce_by_hand(z: list[float], label: int) -> float:
    return math.log(sum(math.exp(v) for v in z)) - z[label]


# --- eq. (2) on fixed logits -----------------------------------------------------------------------------------

def test_at2l_loss_by_hand_hinge_active_and_inactive():
    y = torch.tensor([0, 1])
    clean = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    adv = torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.5]])
    neg = torch.tensor([1, 0])
    lam1, lam2, alpha = 0.3, 1.0, 1.0
    loss, parts = at2l_loss(clean, adv, y, neg, lam1=lam1, lam2=lam2, margin=alpha)
    # anchor 0: ‖(0,1,0)−(2,0,0)‖∞ = 2, ‖(0,1,0)−(0,2,0)‖∞ = 1 → hinge 2 − 1 + 1 = 2 (active)
    # anchor 1: ‖(0,2,.5)−(0,2,0)‖∞ = .5, ‖(0,2,.5)−(2,0,0)‖∞ = 2 → .5 − 2 + 1 < 0 → 0 (inactive)
    assert parts["hinge"].tolist() == [2.0, 0.0]
    ce = (ce_by_hand([2, 0, 0], 0) + ce_by_hand([0, 2, 0], 1)
          + lam1 * (ce_by_hand([0, 1, 0], 0) + ce_by_hand([0, 2, 0.5], 1))) / ((1 + lam1) * 2)
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert parts["triplet"].item() == pytest.approx(1.0)  # (2 + 0) / k
    assert loss.item() == pytest.approx(ce + lam2 * 1.0, rel=1e-6)
    # a wider margin activates anchor 1 too: .5 − 2 + 2 = .5
    _, wide = at2l_loss(clean, adv, y, neg, lam1=lam1, lam2=lam2, margin=2.0)
    assert wide["hinge"].tolist() == [3.0, 0.5]


def test_at2l_normalisation_is_one_plus_lambda1_times_k():
    torch.manual_seed(0)
    logits, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    neg = torch.tensor([1, 0, 3, 2])
    mean_ce = F.cross_entropy(logits, y).item()
    for lam1 in (0.0, 0.3, 1.5):  # clean = adversarial logits: the CE part is the mean CE for every λ1
        _, parts = at2l_loss(logits, logits, y, neg, lam1=lam1, lam2=0.0, margin=1.0)
        assert parts["ce"].item() == pytest.approx(mean_ce, rel=1e-6)
    adv = torch.randn(4, 5)
    loss, _ = at2l_loss(logits, adv, y, neg, lam1=0.3, lam2=1.0, margin=1.0)
    twice, _ = at2l_loss(torch.cat([logits, logits]), torch.cat([adv, adv]), torch.cat([y, y]),
                         torch.cat([neg, neg + 4]), lam1=0.3, lam2=1.0, margin=1.0)
    assert twice.item() == pytest.approx(loss.item(), rel=1e-6)  # a sum over k divided by k
    expected = (F.cross_entropy(logits, y, reduction="sum")
                + 0.3 * F.cross_entropy(adv, y, reduction="sum")) / (1.3 * 4)
    _, parts = at2l_loss(logits, adv, y, neg, lam1=0.3, lam2=1.0, margin=1.0)
    assert parts["ce"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_gradients_flow_through_all_three_embeddings():
    y = torch.tensor([0, 1])
    clean = torch.tensor([[2.0, 0.0], [0.0, 2.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.5], [0.0, 2.0]], requires_grad=True)
    _, parts = at2l_loss(clean, adv, y, torch.tensor([1, 0]), lam1=0.3, lam2=1.0, margin=1.0)
    parts["triplet"].backward()
    # anchor 0 active: d_pos = ‖(1,1.5)−(2,0)‖∞ at coordinate 1, d_neg = ‖(1,1.5)−(0,2)‖∞ at coordinate 0;
    # anchor 1 inactive (0 − 2 + 1 < 0): no gradient from it
    assert adv.grad[0].abs().sum() > 0 and adv.grad[1].abs().sum() == 0   # the anchor
    assert clean.grad[0, 1] != 0 and clean.grad[0, 0] == 0                # the positive, through d_pos
    assert clean.grad[1, 0] != 0 and clean.grad[1, 1] == 0                # the negative, through d_neg


# --- distances -------------------------------------------------------------------------------------------------

def test_distances_on_constructed_vectors():
    u = torch.tensor([[3.0, 4.0], [1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    v = torch.tensor([[0.0, 0.0], [0.0, 5.0], [-3.0, 0.0], [1.0, 1.0]])
    assert get_distance("l2")(u[:1], v[:1]).item() == pytest.approx(5.0)
    assert get_distance("linf")(u[:1], v[:1]).item() == pytest.approx(4.0)
    cos, abs_cos = get_distance("cosine"), get_distance("abs_cosine")
    assert cos(u[1:], v[1:]).tolist() == pytest.approx([1.0, 2.0, 0.0], abs=1e-6)      # orthogonal, opposite, parallel
    assert abs_cos(u[1:], v[1:]).tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)  # 1 − |cos|: opposite = 0
    assert triplet_hinge(u[:1], v[:1], u[:1], 0.5, "l2").item() == pytest.approx(5.5)
    with pytest.raises(ConfigError, match="unknown triplet distance"):
        get_distance("l3")


# --- negative selection ----------------------------------------------------------------------------------------

def _request(y, predicted, num_classes=6, seed=0):
    logits = F.one_hot(torch.tensor(predicted), num_classes).float()
    emb = torch.zeros(len(y), 2)
    return MiningRequest(model=None, x=emb, y=torch.tensor(y), x_adv=emb, anchor=emb, clean=emb,
                         anchor_logits=logits, generator=torch.Generator().manual_seed(seed))


def test_negative_rule_predicted_class_else_any_other_class():
    y = [0, 0, 1, 2, 2]
    # anchor 0: predicted 2 (wrong, in the batch) → {3, 4};  anchor 1: predicted 5 (absent) → other class {2, 3, 4}
    # anchor 2: predicted 1 = its label → other class {0, 1, 3, 4};  anchors 3, 4: predicted 0 → {0, 1}
    predicted = [2, 5, 1, 0, 0]
    allowed = [{3, 4}, {2, 3, 4}, {0, 1, 3, 4}, {0, 1}, {0, 1}]
    miner = build_miner("predicted")
    seen = [set() for _ in y]
    for seed in range(60):
        neg = miner.mine(_request(y, predicted, seed=seed))
        assert neg.valid.all()
        assert neg.from_predicted.tolist() == [True, False, False, True, True]
        for i, j in enumerate(neg.index.tolist()):
            assert j in allowed[i] and y[j] != y[i]
            seen[i].add(j)
    assert seen == allowed  # uniform over the allowed set: every candidate shows up


def test_random_miner_binary_and_single_class_batches():
    neg = build_miner("random").mine(_request([0, 1, 1], [0, 0, 0], num_classes=2))
    assert neg.index.tolist()[0] in (1, 2) and neg.index.tolist()[1:] == [0, 0]  # binary: the opposite label
    neg = build_miner("predicted").mine(_request([1, 1, 1], [0, 0, 1], num_classes=2))
    assert not neg.valid.any()  # nothing of another class in the batch: no triplet
    loss = TripletLoss(margin=1.0)
    logits = torch.randn(3, 2)
    result = loss(None, logits, torch.tensor([1, 1, 1]), logits, anchor=logits, clean=logits)
    assert result.mean().item() == 0.0 and result.valid.sum() == 0


def test_pool_miner_interface_returns_negative_inputs():
    """A miner may return negative inputs from outside the batch (how TLA's pool miner plugs in)."""

    class FirstOtherFromPool(NegativeMiner):
        def __init__(self, pool_x, pool_y):
            self.pool_x, self.pool_y = pool_x, pool_y

        def mine(self, request):
            pick = (self.pool_y[None, :] != request.y[:, None]).float().argmax(1)
            return Negatives(x=self.pool_x[pick])

    model = torch.nn.Linear(3, 4)
    pool_x, pool_y = torch.eye(3), torch.tensor([0, 1, 2])
    x, y = torch.ones(2, 3), torch.tensor([0, 1])
    x_adv = x + 0.1
    loss = TripletLoss(margin=0.5, distance="l2", miner=FirstOtherFromPool(pool_x, pool_y))
    result = loss(model, x, y, x_adv)
    expected = triplet_hinge(model(x_adv), model(x), model(pool_x[torch.tensor([1, 0])]), 0.5, "l2")
    assert torch.allclose(result.values, expected)
    # TLA-style positives: another image of the same class instead of the anchor's own clean x
    x_pos = torch.zeros(2, 3)
    result = loss(model, x, y, x_adv, x_positive=x_pos)
    expected = triplet_hinge(model(x_adv), model(x_pos), model(pool_x[torch.tensor([1, 0])]), 0.5, "l2")
    assert torch.allclose(result.values, expected)
    assert result.anchor.requires_grad and result.positive.requires_grad and result.negative.requires_grad
    with pytest.raises(ConfigError, match="unknown negative miner"):
        build_miner("semi_hard_nowhere")
    with pytest.raises(ValueError, match="registered twice"):
        register_miner("predicted")(FirstOtherFromPool)


# --- the defense and the term in training ----------------------------------------------------------------------

TINY = {
    "run": {"seed": 0, "epochs": 3, "progress": False},
    "data": {"name": "digits", "batch_size": 32, "train_subset": 320, "test_subset": 200},
    "model": {"name": "model_d", "hidden": 64, "depth": 2},
    "optim": {"name": "adam", "lr": 0.003},
    "defense": {"name": "at2l", "eps": 0.1},
}


def tiny(out_dir, **sections):
    raw = json.loads(json.dumps(TINY))
    raw["run"]["out_dir"] = str(out_dir)
    for name, values in sections.items():
        if name in ("model", "defense"):
            raw[name] = dict(values)  # a new name brings its own options
        else:
            raw.setdefault(name, {}).update(values)
    return config_from_dict(raw)


def test_defense_loss_matches_equation_2_and_the_fgsm_at_plus_triplet_term(digits):
    torch.manual_seed(0)
    from robustlab.models import build_model

    model = build_model("model_d", in_shape=digits.in_shape, num_classes=10, hidden=32, depth=1).eval()
    # two examples of different classes: each anchor's only possible negative is the other example
    idx = torch.tensor([int((digits.train_y == 3).nonzero()[0]), int((digits.train_y == 7).nonzero()[0])])
    x, y = digits.train_x[idx], digits.train_y[idx]
    ctx = TrainContext(device=torch.device("cpu"), dataset=None, epoch=1)
    at2l = build_defense("at2l", {"eps": 0.2, "generation": "online", "joint_forward": False})
    at2l.on_epoch_start(model, ctx)
    out = at2l.step(model, Batch(x, y), ctx)
    expected, _ = at2l_loss(model(x), model(out.x_adv), y, torch.tensor([1, 0]), lam1=0.3, lam2=1.0, margin=1.0)
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert (out.x_adv - x).abs().max() <= 0.2 + 1e-6
    # FGSM-AT eq. (1) with λ = 0.3 plus the triplet term (λ 1, α 1) is the same loss
    composed = build_defense("fgsm_at", {"lam": 0.3, "terms": [{"name": "triplet"}], "attack": {"eps": 0.2}})
    composed.on_epoch_start(model, ctx)
    assert torch.allclose(composed.step(model, Batch(x, y), ctx).loss, expected, atol=1e-6)


def test_triplet_term_composes_with_pgd_at(tmp_path):
    config = tiny(tmp_path / "run", run={"epochs": 1},
                  defense={"name": "pgd_at",
                           "terms": [{"name": "triplet", "weight": 0.5, "margin": 1.0, "distance": "l2"}],
                           "attack": {"eps": 0.1, "steps": 2}})
    trainer = Trainer(config, log=lambda _: None)
    row = trainer.fit().final
    assert row["train_triplet_value"] > 0 and math.isfinite(row["train_triplet_value"])
    assert row["train_triplet_value"] == pytest.approx(0.5 * row["train_triplet_hinge"], rel=1e-5)
    assert 0 < row["train_triplet_neg_predicted"] <= 1
    with pytest.raises(ConfigError, match="unknown negative miner"):
        tiny(tmp_path / "bad", defense={"name": "pgd_at", "terms": [{"name": "triplet", "negatives": "hard"}]})
    with pytest.raises(ConfigError, match="unknown triplet distance"):
        tiny(tmp_path / "bad", defense={"name": "pgd_at", "terms": [{"name": "triplet", "distance": "l1"}]})


def test_triplet_term_with_own_attack_on_standard_training(tmp_path):
    config = tiny(tmp_path / "run", run={"epochs": 1},
                  defense={"name": "standard", "terms": [{"name": "triplet", "attack": "fgsm", "eps": 0.1,
                                                          "embedding": "features", "distance": "abs_cosine"}]})
    row = Trainer(config, log=lambda _: None).fit().final
    assert "train_triplet_value" in row and math.isfinite(row["train_triplet_value"])


def test_short_at2l_run_trains(tmp_path):
    config = tiny(tmp_path / "run", run={"epochs": 4}, data={"train_subset": 0})
    result = Trainer(config, log=lambda _: None).fit()
    rows = result.history
    assert rows[0].get("round") == 0 and [r["round"] for r in rows[1:]] == [1, 2, 3]
    assert "train_acc_adv" in rows[1] and "train_triplet_hinge" in rows[1]
    assert rows[-1]["train_loss"] < rows[1]["train_loss"]  # the loss of eq. (2) decreases over the rounds
    assert rows[-1]["test_acc"] > 0.6  # chance is 0.1


def _frozen_checkpoint(tmp_path, digits_name="digits"):
    config = tiny(tmp_path / "frozen", run={"epochs": 1}, defense={"name": "standard"},
                  model={"name": "model_d", "hidden": 32, "depth": 1})
    Trainer(config, log=lambda _: None).fit()
    return str(tmp_path / "frozen")


@pytest.mark.parametrize("generation", ["round", "round_full"])
def test_ensemble_pregenerates_every_pair_once_per_round(tmp_path, monkeypatch, generation):
    frozen = _frozen_checkpoint(tmp_path)
    calls: list[tuple[int, int, int]] = []
    epoch_of = {"now": -1}
    original_craft = AdversarialEnsemble.craft

    def counting_craft(self, pair, model, x, y):
        calls.append((epoch_of["now"], pair, len(x)))
        return original_craft(self, pair, model, x, y)

    original_start = AT2L.on_epoch_start

    def tracking_start(self, model, ctx):
        epoch_of["now"] = ctx.epoch
        return original_start(self, model, ctx)

    gaps = []
    original_loss = AT2L.loss

    def checking_loss(self, model, batch, ctx):
        out = original_loss(self, model, batch, ctx)
        if out.x_adv is not None:  # the looked-up adversarial examples belong to this batch's images
            gaps.append(float((out.x_adv - batch.x).abs().amax()))
        return out

    monkeypatch.setattr(AdversarialEnsemble, "craft", counting_craft)
    monkeypatch.setattr(AT2L, "on_epoch_start", tracking_start)
    monkeypatch.setattr(AT2L, "loss", checking_loss)
    config = tiny(tmp_path / "run", defense={"name": "at2l", "eps": 0.1, "attacks": ["fgsm", "ll"],
                                             "models": [frozen], "generation": generation,
                                             "gen_batch_size": 1000})
    trainer = Trainer(config, log=lambda _: None)
    trainer.fit()
    defense = trainer.defense
    assert defense.ensemble.pairs == [("fgsm", "self"), ("fgsm", frozen), ("ll", "self"), ("ll", frozen)]
    assert defense.ensemble.generated_rounds == 2
    n = 320
    assert not [c for c in calls if c[0] == 0]  # the pretraining epoch crafts nothing
    for epoch in (1, 2):  # every round regenerates
        per_pair = {p: sum(c[2] for c in calls if c[0] == epoch and c[1] == p) for p in range(4)}
        if generation == "round":
            assert sum(per_pair.values()) == n  # each example once, its (a, m) drawn uniformly
            assert all(40 <= v <= 120 for v in per_pair.values()), per_pair
        else:
            assert per_pair == {p: n for p in range(4)}  # Algorithm 2 literally: all of X for every (a, m)
    assert gaps and max(gaps) <= 0.1 + 1e-6 and min(gaps) > 0


def test_ensemble_options_are_validated(tmp_path):
    assert expand_attacks(["mixed"]) == ["fgsm", "ll", "ifgsm", "ill", "cw_l2"]
    assert expand_attacks(["gradient", "fgsm", "optimization"]) == ["fgsm", "ll", "ifgsm", "ill", "cw_l2"]
    with pytest.raises(ConfigError, match="unknown training attack"):
        tiny(tmp_path, defense={"name": "at2l", "attacks": ["deepfool"]})
    with pytest.raises(ConfigError, match="include_self"):
        tiny(tmp_path, defense={"name": "at2l", "include_self": False})
    with pytest.raises(ConfigError, match="augment"):
        Trainer(tiny(tmp_path / "aug", data={"augment": "crop_flip"}), log=lambda _: None)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        Trainer(tiny(tmp_path / "missing", defense={"name": "at2l", "models": [str(tmp_path / "nope")]}),
                log=lambda _: None)


def test_mixed_set_with_cw_runs_online(digits):
    from robustlab.models import build_model

    torch.manual_seed(0)
    model = build_model("model_d", in_shape=digits.in_shape, num_classes=10, hidden=32, depth=1)
    defense = build_defense("at2l", {"attacks": ["mixed"], "generation": "online", "cw_max_iter": 5,
                                     "cw_binary_steps": 1, "iter_steps": 2})
    ctx = TrainContext(device=torch.device("cpu"), dataset=None, epoch=1)
    defense.on_epoch_start(model, ctx)
    out = defense.step(model, Batch(digits.train_x[:40], digits.train_y[:40]), ctx)
    out.loss.backward()
    assert math.isfinite(out.loss.item()) and out.x_adv.shape == (40, 1, 8, 8)


# --- input randomisation ---------------------------------------------------------------------------------------

def test_random_resize_pad_shape_box_and_randomness():
    from robustlab.models.randomization import RandomResizePad

    layer = RandomResizePad(out_size=31, min_size=28)
    x = torch.rand(16, 1, 28, 28) + 0.1  # strictly positive: zeros in the output are padding
    out = layer(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == (16, 1, 31, 31)
    size, top, left = layer.draw(16, x.device, torch.Generator().manual_seed(0))
    for i in range(16):
        r, t, lft = int(size[i]), int(top[i]), int(left[i])
        assert 28 <= r < 31 and 0 <= t <= 31 - r and 0 <= lft <= 31 - r
        inside = out[i, :, t:t + r, lft:lft + r]
        assert (inside > 0).all()  # the resized image fills its box ...
        assert out[i].abs().sum() == pytest.approx(inside.abs().sum())  # ... and nothing is outside it
    assert len({(int(s), int(t), int(lft)) for s, t, lft in zip(size, top, left)}) > 1  # per-example draws
    assert not torch.equal(layer(x), layer(x))  # random at every call
    same = layer.place(x[:1], torch.tensor([28]), torch.tensor([1]), torch.tensor([2]))
    assert torch.equal(same[0, :, 1:29, 2:30], x[0])  # r = H: a pure shift
    shared = RandomResizePad(31, 28, per_example=False)
    s, t, lft = shared.draw(8, x.device)
    assert len(set(s.tolist())) == 1 and len(set(t.tolist())) == 1 and len(set(lft.tolist())) == 1


def test_randomised_model_with_triplet_term_trains(tmp_path):
    from robustlab.models import build_model

    model = build_model("random_resize_pad", in_shape=(1, 28, 28), num_classes=10, base="model_d",
                        base_options={"hidden": 16, "depth": 1})
    assert model.randomize.out_size == 31 and model.randomize.min_size == 28
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    model(x).sum().backward()
    assert x.grad.abs().sum() > 0  # attacks get gradients through the layer
    config = tiny(tmp_path / "run", run={"epochs": 3}, data={"train_subset": 0},
                  model={"name": "random_resize_pad", "base": "model_d", "base_options": {"hidden": 32, "depth": 1},
                         "out_size": 10},
                  defense={"name": "fgsm_at", "lam": 0.3, "warmup_epochs": 1,
                           "terms": [{"name": "triplet", "weight": 1.0, "margin": 2.0}],
                           "attack": {"eps": 0.1}})  # λ2 1, α 2 (AT²L B.2)
    row = Trainer(config, log=lambda _: None).fit().final
    assert "train_triplet_value" in row and row["test_acc"] > 0.3
