"""The shared active-examples set and the one restart/target wrapper (robustlab/attacks/active.py)."""

from __future__ import annotations

import torch

from robustlab.attacks import APGDDLR, PGD
from robustlab.attacks.active import ActiveSet, run_copies, success_mask
from robustlab.attacks.targets import top_other_classes


def test_retire_keeps_the_first_fooling_row_and_drops_every_row_of_its_example():
    x = torch.arange(3.0).view(3, 1)
    example = torch.tensor([0, 1, 2, 0, 1, 2])  # two copies of each example
    active = ActiveSet(x[example], torch.zeros(6, dtype=torch.long), example=example, out=x.clone())
    rows = torch.arange(6.0).view(6, 1) + 10
    fooled = torch.tensor([False, True, False, True, True, False])  # example 1 by rows 1 and 4, example 0 by 3
    (state,) = active.retire(fooled, rows, torch.arange(6))
    assert active.out.flatten().tolist() == [13.0, 11.0, 2.0]  # the first fooling row of example 1 is row 1
    assert active.success.tolist() == [True, True, False]
    assert active.example.tolist() == [2, 2] and state.tolist() == [2, 5]
    active.finish(torch.tensor([[20.0], [25.0]]))
    assert active.out.flatten().tolist() == [13.0, 11.0, 20.0]  # the never-fooled example: its first row


class _FoolsOnCopy:
    """A fake attack core: example i is fooled by the copy whose target equals i % 3 (rows carry targets)."""

    def __init__(self):
        self.rows_seen = 0
        self.copies = []

    def __call__(self, model, active):
        self.rows_seen += len(active)
        self.copies.append(active.copy.tolist())
        fooled = active.target.eq(active.example % 3)
        (x,) = active.retire(fooled, active.x + 1, active.x + 1)
        active.finish(x)


def test_batched_and_sequential_copies_find_the_same_successes():
    x, y = torch.zeros(6, 2), torch.zeros(6, dtype=torch.long)
    targets = [torch.full((6,), t) for t in (0, 1)]
    skip = torch.tensor([False, False, False, False, False, True])
    batched, sequential = _FoolsOnCopy(), _FoolsOnCopy()
    out_b, ok_b = run_copies(None, x, y, batched, targets=targets, batched=True, skip=skip)
    out_s, ok_s = run_copies(None, x, y, sequential, targets=targets, batched=False, skip=skip)
    # examples 0, 3 fooled by target 0, example 1, 4 by target 1; 2 by none; 5 skipped (misclassified clean)
    assert ok_b.tolist() == ok_s.tolist() == [True, True, False, True, True, True]
    assert torch.equal(out_b, out_s) and torch.equal(out_b[5], x[5])
    assert batched.rows_seen == 10 and sequential.rows_seen == 5 + 3  # the second run only sees the unfooled
    assert batched.copies == [[0] * 5 + [1] * 5] and sequential.copies == [[0] * 5, [1] * 3]  # run of each row


def test_top_other_classes_orders_by_logit_and_caps_at_classes_minus_one():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert [int(t) for t in top_other_classes(logits, 9)] == [3, 2, 0]
    assert success_mask(logits, torch.tensor([1])).tolist() == [False]
    assert success_mask(logits, torch.tensor([1]), targeted=True).tolist() == [True]


def test_early_exit_keeps_a_point_for_every_example_that_any_iterate_fooled(trained_digits_mlp, digits):
    x, y = digits.test_x[:200], digits.test_y[:200]
    model = trained_digits_mlp
    seen = []  # predictions at every iterate of the full run (each gradient pass sees the whole batch; the
    # boundary's one-example probe of the model is not an iterate)
    handle = model.register_forward_hook(
        lambda _m, _i, out: seen.append(out.argmax(1).ne(y)) if len(out) == len(y) else None)
    try:
        last = PGD(0.05, steps=10, step_size=0.02, random_start=False, early_stop=False)(model, x, y)
    finally:
        handle.remove()
    any_iterate = torch.stack(seen).any(0)
    first = PGD(0.05, steps=10, step_size=0.02, random_start=False)(model, x, y)
    with torch.no_grad():
        wrong_last, wrong_first = model(last).argmax(1).ne(y), model(first).argmax(1).ne(y)
    assert torch.equal(wrong_first, any_iterate | wrong_last)  # same trajectory until an example leaves
    assert int(wrong_first.sum()) >= int(wrong_last.sum()) > 0
    unchanged = ~wrong_first
    assert torch.equal(first[unchanged], last[unchanged])  # the robust examples ran every step


def test_batched_targets_are_as_strong_as_one_target_after_another(robust_digits_cnn, digits):
    x, y = digits.test_x, digits.test_y
    accs = []
    for batched in (True, False):
        torch.manual_seed(0)
        x_adv = APGDDLR(0.15, steps=30, top_targets=3, batched=batched)(robust_digits_cnn, x, y)
        assert (x_adv - x).abs().max() <= 0.15 + 1e-6
        with torch.no_grad():
            accs.append(float(robust_digits_cnn(x_adv).argmax(1).eq(y).float().mean()))
    assert abs(accs[0] - accs[1]) <= 0.02, accs
