"""TLA (spec §3): pool mining, positives, the loss with L_norm; ALP; detection AUC; kNN retrieval; init_from."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.defenses import Batch, TrainContext, build_defense
from robustlab.defenses.alp import logit_pairing
from robustlab.defenses.pool_mining import PoolMiner, nearest_other_class, sample_positive_indices
from robustlab.defenses.tla import norm_penalty, tla_loss
from robustlab.defenses.triplet import TripletLoss
from robustlab.defenses.triplet_mining import build_miner
from robustlab.detection import centroid_scores, class_centroids, detection_auc, plot_roc, softmax_scores
from robustlab.engine import Trainer
from robustlab.errors import CheckpointError, ConfigError
from robustlab.experiment import config_from_dict
from robustlab.retrieval import feature_embeddings, knn_retrieval_precision


class IdentityFeatures(nn.Module):
    """h(x) = x flattened, logits = a fixed linear head: embeddings are known exactly."""

    def __init__(self, dim: int = 2, classes: int = 3):
        super().__init__()
        self.fc = nn.Linear(dim, classes)

    def features(self, x):
        return x.flatten(1)

    def head(self, h):
        return self.fc(h)

    def forward(self, x):
        return self.head(self.features(x))


def dataset_ctx(train_x, train_y):
    data = types.SimpleNamespace(train_x=train_x, train_y=train_y)  # the pool and positives come from train_x
    return TrainContext(device=torch.device("cpu"), dataset=data, epoch=0)


# --- semi-hard mining ------------------------------------------------------------------------------------------

def test_nearest_other_class_picks_most_similar_other_class_item():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    # pool: item 0 is the anchor-0 direction but the same class (must be masked), item 1 at 30° (class 1),
    # item 2 at 60° (class 2), item 3 = anchor-1 direction with class 1 (masked for anchor 1), item 4 at 45° (class 0)
    c30, s30 = math.cos(math.pi / 6), math.sin(math.pi / 6)
    pool = torch.tensor([[2.0, 0.0], [c30, s30], [s30, c30], [0.0, 3.0], [1.0, 1.0]])
    pool_labels = torch.tensor([0, 1, 2, 1, 0])
    index, valid = nearest_other_class(anchors, pool, labels, pool_labels)
    assert index.tolist() == [1, 2]   # anchor 1: cos 60°-item = .866 > 45°-item .707 > 30°-item .5
    assert valid.tolist() == [True, True]
    # an anchor whose pool holds only its own class is invalid
    _, valid = nearest_other_class(anchors[:1], pool[:1], labels[:1], pool_labels[:1])
    assert valid.tolist() == [False]


def test_pool_miner_in_triplet_loss_returns_nearest_pool_image_reforwarded_with_grad():
    torch.manual_seed(0)
    model = IdentityFeatures()
    train_x = torch.tensor([[1.0, 0.1], [0.2, 1.0], [0.9, 0.5], [-1.0, 0.0], [0.0, -1.0]])
    train_y = torch.tensor([0, 1, 2, 0, 1])
    x = torch.tensor([[1.0, 0.0]])
    x_adv = torch.tensor([[1.0, 0.3]], requires_grad=False)
    loss = TripletLoss(margin=0.05, distance="abs_cosine", miner=PoolMiner(pool_size=100), embedding="features")
    result = loss(model, x, torch.tensor([0]), x_adv, x_positive=torch.tensor([[1.0, 0.1]]),
                  ctx=dataset_ctx(train_x, train_y))
    # other-class pool items: (0.2, 1) cos ≈ .47, (0.9, .5) cos ≈ .98, (0, −1) cos ≈ −.29 → (0.9, 0.5)
    assert torch.equal(result.negatives.x, torch.tensor([[0.9, 0.5]]))
    assert result.negative.requires_grad is False  # identity features of a constant input: no parameters
    # with parameters in the embedding the re-forwarded negative carries a graph
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
        lin.bias.zero_()
    model.features = lambda inp: lin(inp.flatten(1))
    result = loss(model, x, torch.tensor([0]), x_adv, x_positive=torch.tensor([[1.0, 0.1]]),
                  ctx=dataset_ctx(train_x, train_y))
    assert torch.equal(result.negatives.x, torch.tensor([[0.9, 0.5]]))
    assert result.negative.requires_grad
    result.mean().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_pool_miner_embeds_in_eval_mode_and_restores_train_mode():
    modes = []

    class Probe(IdentityFeatures):
        def features(self, x):
            modes.append(self.training)
            return x.flatten(1)

    model = Probe().train()
    train_x, train_y = torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    miner = build_miner("pool", pool_size=4)
    from robustlab.defenses.triplet_mining import MiningRequest

    req = MiningRequest(model=model, x=train_x[:2], y=train_y[:2], x_adv=train_x[:2], anchor=train_x[:2],
                        clean=None, anchor_logits=None, ctx=dataset_ctx(train_x, train_y), embedding="features")
    neg = miner.mine(req)
    assert modes == [False, False] and model.training
    assert neg.x.shape == (2, 2)


def test_random_negative_ablation_picks_other_class_pool_items_at_random():
    train_x = torch.arange(40, dtype=torch.float32).view(20, 2)
    train_y = torch.arange(20) % 4
    miner = PoolMiner(pool_size=20, choice="random")
    from robustlab.defenses.triplet_mining import MiningRequest

    y = torch.zeros(8, dtype=torch.long)
    seen = set()
    for _ in range(5):
        req = MiningRequest(model=IdentityFeatures(), x=train_x[:8], y=y, x_adv=train_x[:8], anchor=train_x[:8],
                            clean=None, anchor_logits=None, ctx=dataset_ctx(train_x, train_y))
        neg = miner.mine(req)
        rows = [int(r[0].item()) // 2 for r in neg.x]  # back to training indices
        assert all(train_y[r] != 0 for r in rows)
        seen.update(rows)
    assert len(seen) > 5  # not a fixed choice
    with pytest.raises(ConfigError, match="pool choice"):
        PoolMiner(choice="hardest")
    with pytest.raises(ConfigError, match="pool_size"):
        PoolMiner(pool_size=0)


def test_positive_is_a_different_image_of_the_same_class():
    train_y = torch.tensor([0, 1, 0, 1, 2, 0])
    y = torch.tensor([0, 1, 2, 0])
    own = torch.tensor([0, 1, 4, 5])
    for seed in range(20):
        index, valid = sample_positive_indices(train_y, y, own, torch.Generator().manual_seed(seed))
        assert train_y[index[valid]].tolist() == y[valid].tolist()
        assert not (index[valid] == own[valid]).any()
        assert valid.tolist() == [True, True, False, True]  # class 2 has a single training image


# --- the loss ----------------------------------------------------------------------------------------------------

def test_tla_loss_by_hand_with_norm_term():
    y = torch.tensor([0, 1])
    logits = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    n = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss, parts = tla_loss(logits, y, a, p, n, lam_trip=0.5, lam_norm=1e-2, margin=0.05)
    # anchor 0: D(a,p) = 1 − 1/√2, D(a,n) = 0 → hinge = 1 − 1/√2 + .05; anchor 1: D(a,p) = 1 − |−1| = 0,
    # D(a,n) = 1 → 0 − 1 + .05 < 0 → 0  (the absolute value makes the opposite direction a perfect positive)
    h0 = 1 - 1 / math.sqrt(2) + 0.05
    assert parts["hinge"].tolist() == pytest.approx([h0, 0.0])
    assert parts["triplet"].item() == pytest.approx(h0 / 2)
    # L_norm = mean over 2×2 entries of a² + p² + n² = (1+0+4+0 + 1+1+0+1 + 1+0+1+0) / 4 = 10 / 4
    assert parts["norm"].item() == pytest.approx(2.5)
    assert norm_penalty(a, p, n).item() == pytest.approx(2.5)
    ce = ((math.log(math.e + 1) - 1) + math.log(2)) / 2
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert loss.item() == pytest.approx(ce + 0.5 * (h0 / 2 + 1e-2 * 2.5), rel=1e-6)
    # an invalid anchor contributes no hinge; label smoothing changes only the CE
    _, masked = tla_loss(logits, y, a, p, n, lam_trip=0.5, lam_norm=0.0, margin=0.05,
                         valid=torch.tensor([False, True]))
    assert masked["triplet"].item() == 0.0
    _, smooth = tla_loss(logits, y, a, p, n, lam_trip=0.5, lam_norm=0.0, margin=0.05, label_smoothing=0.1)
    assert smooth["ce"].item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item())


def test_tla_defense_loss_matches_tla_loss_on_its_own_triplets():
    torch.manual_seed(0)
    model = IdentityFeatures(dim=4, classes=3)
    train_x, train_y = torch.rand(30, 4), torch.arange(30) % 3
    defense = build_defense("tla", {"pool_size": 10, "lam_norm": 0.1,
                                    "attack": {"eps": 0.1, "steps": 2, "step_size": 0.05}})
    ctx = dataset_ctx(train_x, train_y)
    defense.on_epoch_start(model, ctx)
    out = defense.step(model, Batch(train_x[:6], train_y[:6], torch.arange(6)), ctx)
    assert (out.x_adv - train_x[:6]).abs().max() <= 0.1 + 1e-6
    assert {"ce", "norm", "triplet_hinge", "acc_adv"} <= set(out.metrics)
    ce = F.cross_entropy(out.logits_adv, train_y[:6])
    assert out.loss.item() > ce.item()  # the L_norm term alone is > 0
    out.loss.backward()
    assert model.fc.weight.grad is not None


def test_tla_with_lam_trip_zero_is_the_plain_ce_and_only_measures_its_triplets():
    """The AT arm of the reproduction: loss = CE(f(x_adv), y) exactly, the triplet statistics logged beside it."""
    torch.manual_seed(0)
    model = IdentityFeatures(dim=4, classes=3)
    train_x, train_y = torch.rand(30, 4), torch.arange(30) % 3
    defense = build_defense("tla", {"pool_size": 10, "lam_trip": 0.0, "lam_norm": 0.0,
                                    "attack": {"eps": 0.1, "steps": 2, "step_size": 0.05}})
    ctx = dataset_ctx(train_x, train_y)
    defense.on_epoch_start(model, ctx)
    out = defense.step(model, Batch(train_x[:6], train_y[:6], torch.arange(6)), ctx)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits_adv, train_y[:6]))
    assert {"triplet_active", "triplet_d_pos", "triplet_d_neg"} <= set(out.metrics)
    out.loss.backward()
    ce_only = model.fc.weight.grad.clone()
    model.zero_grad()
    F.cross_entropy(model(out.x_adv), train_y[:6]).backward()
    assert torch.allclose(model.fc.weight.grad, ce_only)  # the measured triplets add no gradient


def test_tla_options_are_validated():
    with pytest.raises(ConfigError, match="negatives"):
        config_from_dict({"defense": {"name": "tla", "negatives": "hardest"}})
    with pytest.raises(ConfigError, match="pool_size"):
        build_defense("tla", {"pool_size": 0})
    with pytest.raises(ConfigError, match="label_smoothing"):
        build_defense("tla", {"label_smoothing": 1.0})
    with pytest.raises(ConfigError, match="distance"):
        build_defense("tla", {"distance": "manhattan"})
    with pytest.raises(ConfigError, match="lam_pair"):
        build_defense("alp", {"lam_pair": -1.0})


# --- ALP --------------------------------------------------------------------------------------------------------

def test_alp_loss_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z_adv = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    assert logit_pairing(z, z_adv).item() == pytest.approx((2 + 4) / 2)
    y = torch.tensor([0, 1])
    model = IdentityFeatures(dim=2, classes=2)
    with torch.no_grad():
        model.fc.weight.copy_(torch.eye(2))
        model.fc.bias.zero_()
    defense = build_defense("alp", {"lam_pair": 0.5})
    defense.attack = lambda m, x, y: z_adv  # a fixed "attack": logits of x' = x' through the identity head
    out = defense.step(model, Batch(z, y), dataset_ctx(z, y))
    ce = 0.5 * F.cross_entropy(z, y) + 0.5 * F.cross_entropy(z_adv, y)
    assert out.loss.item() == pytest.approx(ce.item() + 0.5 * 3.0, rel=1e-6)
    assert out.metrics["pairing"].item() == pytest.approx(3.0)


# --- detection and retrieval ------------------------------------------------------------------------------------

@pytest.mark.slow  # importing scikit-learn and matplotlib: ~8 s on a busy CPU
def test_detection_auc_matches_hand_value_and_sklearn(tmp_path):
    from sklearn.metrics import roc_auc_score

    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    wrong = torch.tensor([False, False, True, True])
    result = detection_auc(scores, wrong)
    # positive/negative pairs ranked correctly: (.35>.1), (.8>.1), (.8>.4); wrong: (.35<.4) → 3/4
    assert result.auc == pytest.approx(0.75)
    assert result.auc == pytest.approx(roc_auc_score(wrong.numpy(), scores.numpy()))
    assert (result.positives, result.negatives) == (2, 2)
    with pytest.raises(ValueError, match="both"):
        detection_auc(scores, torch.ones(4, dtype=torch.bool))
    plot_roc({"toy": result}, tmp_path / "roc.png")
    assert 0 < (tmp_path / "roc.png").stat().st_size < 150_000


def test_softmax_and_centroid_scores_by_hand():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    assert softmax_scores(logits).tolist() == pytest.approx([0.25, 0.5])
    emb = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    centroids = class_centroids(emb, torch.tensor([0, 0, 1]), 2)
    assert centroids.tolist() == [[2.0, 0.0], [0.0, 2.0]]
    query = torch.tensor([[1.0, 1.0], [0.0, 5.0]])
    # query 0 predicted 0: 1 − cos 45°; query 1 predicted 0: 1 − |cos 90°| = 1
    got = centroid_scores(query, torch.tensor([0, 0]), centroids)
    assert got.tolist() == pytest.approx([1 - 1 / math.sqrt(2), 1.0])
    with pytest.raises(ValueError, match="class"):
        class_centroids(emb, torch.tensor([0, 0, 0]), 2)


def test_knn_retrieval_precision_on_constructed_case():
    refs = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.05]])
    ref_y = torch.tensor([0, 0, 1, 1, 1])
    queries = torch.tensor([[1.0, 0.02], [0.05, 1.0]])
    q_y = torch.tensor([0, 0])
    # query 0: 3 nearest by 1 − |cos| are refs 0, 1 and 4 (|cos| ≈ 1: the sign does not matter) → 2 of 3 label 0
    # query 1: refs 2, 3, then 1 → 1 of 3 label 0
    assert knn_retrieval_precision(queries, q_y, refs, ref_y, k=3) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert knn_retrieval_precision(queries, q_y, refs, ref_y, k=1) == pytest.approx(0.5)
    # Euclidean: query 0's 3 nearest are 0, 1, 3 → 2/3 as well; query 1 → 2, 3, 1 → 1/3
    assert knn_retrieval_precision(queries, q_y, refs, ref_y, k=3, metric="l2") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k must be"):
        knn_retrieval_precision(queries, q_y, refs, ref_y, k=6)


def test_feature_embeddings_are_batched_eval_mode_features(digits):
    from robustlab.models import build_model

    model = build_model("mlp_a3t", in_shape=digits.in_shape, num_classes=10).train()
    emb = feature_embeddings(model, digits.test_x[:7], batch_size=3)
    with torch.no_grad():
        expected = model.eval().features(digits.test_x[:7]).flatten(1)
    assert torch.allclose(emb, expected, atol=1e-6)


# --- training: tla, alp, init_from ------------------------------------------------------------------------------

def tiny_config(tmp_path, name, defense, epochs=1, **run):
    return config_from_dict({
        "run": {"name": name, "out_dir": str(tmp_path / name), "epochs": epochs, "device": "cpu",
                "progress": False, **run},
        "data": {"name": "digits", "batch_size": 50, "train_subset": 300, "test_subset": 100},
        "model": {"name": "mlp_a3t"}, "optim": {"name": "adam", "lr": 1e-3},
        "defense": defense, "eval": {"every": 0},
    })


def test_tla_training_separates_negatives_from_positives(tmp_path):
    """A short real run: the hinge falls, the gap D(a, n) − D(a, p) grows, the test accuracy is far above chance."""
    config = tiny_config(tmp_path, "tla", {"name": "tla", "lam_trip": 5.0, "margin": 0.2, "pool_size": 30,
                                           "attack": {"eps": 0.05, "steps": 2, "step_size": 0.03}}, epochs=6)
    config.optim.lr = 3e-3
    history = Trainer(config, log=lambda _m: None).fit().history
    hinge = [row["train_triplet_hinge"] for row in history]
    gap = [row["train_triplet_d_neg"] - row["train_triplet_d_pos"] for row in history]
    assert all(np.isfinite(hinge))
    assert hinge[-1] < 0.6 * hinge[0]
    assert gap[-1] > gap[0] + 0.05
    assert history[-1]["test_acc"] > 0.8


def test_alp_and_tla_short_runs_and_init_from(tmp_path):
    alp = Trainer(tiny_config(tmp_path, "alp", {"name": "alp",
                                                "attack": {"eps": 0.05, "steps": 2}}), log=lambda _m: None)
    row = alp.fit().final
    assert np.isfinite(row["train_pairing"]) and row["train_pairing"] >= 0
    # run.init_from: a fine-tuning run starts from the ALP weights
    config = tiny_config(tmp_path, "tla_ft", {"name": "tla", "pool_size": 20,
                                              "attack": {"eps": 0.05, "steps": 1, "step_size": 0.05}},
                         init_from=str(tmp_path / "alp"))
    tla = Trainer(config, log=lambda _m: None)
    for key, value in alp.model.state_dict().items():
        assert torch.equal(tla.model.state_dict()[key], value), key
    assert np.isfinite(tla.fit().final["train_loss"])
    bad = tiny_config(tmp_path, "bad", {"name": "standard"}, init_from=str(tmp_path / "alp"))
    bad.model = {"name": "fc1200x3"}
    with pytest.raises(CheckpointError, match="init_from"):
        Trainer(bad, log=lambda _m: None)


def test_analyse_metric_on_a_trained_model_separates_errors_and_loses_retrieval_under_attack(trained_digits_mlp,
                                                                                              digits):
    from robustlab.attacks import PGD
    from robustlab.metric_analysis import analyse_metric

    x, y = digits.test_x[:200], digits.test_y[:200]
    x_adv = PGD(0.1, steps=10, step_size=0.02)(trained_digits_mlp, x, y)
    result = analyse_metric(trained_digits_mlp, x, x_adv, y, digits.train_x, digits.train_y, 10, k=5)
    assert 0.6 < result.auc_softmax <= 1.0 and 0.5 < result.auc_centroid <= 1.0  # both scores beat chance
    assert result.knn_clean > 0.8 and result.knn_adv < result.knn_clean - 0.2  # the attack moves h(x) away
    assert set(result.curves) == {"softmax", "centroid"} and result.to_dict()["k"] == 5
    with pytest.raises(ValueError):
        analyse_metric(trained_digits_mlp, x, x_adv[:10], y, digits.train_x, digits.train_y, 10)
