"""Target classes are chosen in one place (robustlab/attacks/targets.py), with the same words for every attack."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustlab.attacks import FGSM, IFGSM, PGD, IterativeLeastLikely, LeastLikely, build_attack
from robustlab.attacks.targets import least_likely_class, random_other_class, top_other_classes
from robustlab.rng import seeded


@settings(max_examples=40, deadline=None)
@given(classes=st.integers(2, 12), n=st.integers(1, 64), seed=st.integers(0, 2**31))
def test_a_random_other_class_is_never_the_label(classes, n, seed):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=gen)
    with seeded(seed):
        t = random_other_class(y, classes)
    assert bool((t != y).all()) and int(t.min()) >= 0 and int(t.max()) < classes


def test_random_targets_cover_every_other_class_and_repeat_under_a_seed():
    y = torch.zeros(3000, dtype=torch.long)
    with seeded(1):
        a = random_other_class(y, 10)
    with seeded(1):
        b = random_other_class(y, 10)
    assert torch.equal(a, b) and set(a.tolist()) == set(range(1, 10))
    with pytest.raises(ValueError, match="at least 2 classes"):
        random_other_class(y, 1)


def test_least_likely_and_top_classes_order_by_logit():
    logits = torch.tensor([[0.1, 2.0, -3.0, 1.0]])
    model = torch.nn.Identity()
    assert least_likely_class(model, logits).tolist() == [2]
    assert [int(t) for t in top_other_classes(logits, 9)] == [3, 0, 2]


def test_the_named_targets_are_the_attacks_targets(trained_digits_mlp, digits):
    model, x, y = trained_digits_mlp, digits.test_x[:200], digits.test_y[:200]
    # LL and I-LL are FGSM and I-FGSM toward the least likely class: the same points.
    assert torch.equal(LeastLikely(0.3)(model, x, y), FGSM(0.3, target="least_likely")(model, x, y))
    assert torch.equal(IterativeLeastLikely(0.3)(model, x, y), IFGSM(0.3, target="least_likely")(model, x, y))
    # target="random": the points are classified as the chosen class (never the label) where the attack succeeded.
    pgd = build_attack("pgd", 0.3, steps=20, target="random")
    with seeded(5):
        x_adv = pgd(model, x, y)
    with seeded(5):
        chosen = random_other_class(y, 10)
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    assert (pred == chosen).float().mean() > 0.5 and bool((pred[pred == chosen] != y[pred == chosen]).all())


@pytest.mark.parametrize("options, match", [({"target": "largest"}, "target must be None or one of"),
                                            ({"target": "random", "targeted": True}, "give one of the two")])
def test_a_bad_target_is_refused(options, match):
    with pytest.raises(ValueError, match=match):
        PGD(0.1, **options)
