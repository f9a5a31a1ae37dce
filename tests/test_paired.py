"""The reproduction protocol's statistics: paired intervals, the crossed bootstrap, gates, power and the two-axis
verdict (robustlab.paired)."""

import math

import numpy as np
import pytest

from robustlab.paired import (AS_PAPER, CONSISTENT, LARGER, NEGATIVE, OPPOSITE, POSITIVE, SMALLER, UNDETERMINED,
                              Interval, Verdict, compare, comparison_table, crossed_bootstrap_interval, design_power,
                              floor_gate, gates_table, masking_gate, mechanism_gate, seed_interval, seeds_for_power,
                              two_axis_verdict)


def test_seed_interval_matches_the_t_table_by_hand():
    # differences 1, 2, 3: mean 2, sample sd 1, se 1/√3; t(0.975, 2 df) = 4.303 (printed tables)
    i = seed_interval([1.0, 2.0, 3.0])
    half = 4.303 / math.sqrt(3)
    assert i.mean == pytest.approx(2.0)
    assert i.low == pytest.approx(2.0 - half, abs=1e-3) and i.high == pytest.approx(2.0 + half, abs=1e-3)
    assert i.df == 2 and i.source == "seeds"


def test_one_seed_gives_an_infinite_interval_and_an_undetermined_verdict():
    i = seed_interval([5.0])
    assert math.isinf(i.low) and math.isinf(i.high)
    assert two_axis_verdict(i, paper_effect=5.0) == Verdict(UNDETERMINED, UNDETERMINED)


def test_seed_interval_refuses_no_seeds():
    with pytest.raises(ValueError, match="non-empty"):
        seed_interval([])


def _interval(low, high):
    return Interval((low + high) / 2, low, high, (high - low) / 3.92, 1.96, "seeds × images (crossed)")


@pytest.mark.parametrize("low, high, paper, direction, size", [
    (0.5, 3.0, 2.0, AS_PAPER, CONSISTENT),
    (0.2, 0.9, 2.0, AS_PAPER, SMALLER),
    (2.5, 4.0, 2.0, AS_PAPER, LARGER),
    (-1.0, 3.0, 2.0, UNDETERMINED, CONSISTENT),   # holds both 0 and +2: nothing is decided about the direction
    (-3.0, -1.0, 2.0, OPPOSITE, SMALLER),
    (-9.0, -1.0, -7.2, AS_PAPER, CONSISTENT),     # a lower-is-better effect (error points)
    (-12.0, -8.0, -7.2, AS_PAPER, LARGER),
    # the one-sided cases the old rule called "contradicted": an interval touching 0 and below the paper's effect
    (-0.006, 0.072, 0.220, UNDETERMINED, SMALLER),  # critic − VAT, ρ of the critic attack
    (-0.9, 0.7, 0.9, UNDETERMINED, SMALLER),        # L2P − L2P-R: the upper bound is below the paper's effect
])
def test_two_axis_verdict_cases(low, high, paper, direction, size):
    assert two_axis_verdict(_interval(low, high), paper) == Verdict(direction, size)


def test_the_verdict_is_symmetric_in_the_sign_of_the_effect():
    for low, high, paper in [(0.2, 0.9, 2.0), (-1.0, 3.0, 2.0), (-3.0, -1.0, 2.0), (2.5, 4.0, 2.0)]:
        assert two_axis_verdict(_interval(low, high), paper) == two_axis_verdict(_interval(-high, -low), -paper)


def test_an_ablation_has_a_direction_and_no_size():
    assert two_axis_verdict(_interval(0.1, 0.3), None) == Verdict(POSITIVE)
    assert two_axis_verdict(_interval(-0.3, -0.1), None) == Verdict(NEGATIVE)
    assert two_axis_verdict(_interval(-0.3, 0.1), None) == Verdict(UNDETERMINED)
    with pytest.raises(ValueError, match="ablation"):
        two_axis_verdict(_interval(0.1, 0.3), 0.0)


def test_power_is_80_percent_at_2_8_standard_errors_and_undefined_without_spread():
    i = Interval(0.0, -1.96, 1.96, 1.0, 1.96, "x")
    assert i.power(2.8016) == pytest.approx(0.80, abs=0.005)
    assert i.power(0.0) == pytest.approx(0.05, abs=0.001)  # the false-positive rate
    assert i.detectable() == pytest.approx(2.8016, abs=1e-3)
    # a metric stuck at its bound in both arms has no spread: no power figure (it used to read 100%)
    assert math.isnan(seed_interval([0.0, 0.0, 0.0]).power(2.9))


def test_t_power_is_lower_than_normal_power_with_few_seeds():
    t3 = seed_interval([0.0, 1.0, 2.0, 3.0])  # 3 df
    normal = Interval(t3.mean, t3.low, t3.high, t3.se, 1.96, "x")
    assert t3.power(2.0) < normal.power(2.0)


def test_design_power_by_hand_and_the_seeds_it_asks_for():
    # sd 2, 9 seeds: se 2/3; effect 2 = 3 se; t(0.975, 8) = 2.306 -> power = Φ(3 − 2.306) + Φ(−5.306) = Φ(0.694)
    assert design_power(2.0, 2.0, 9) == pytest.approx(0.756, abs=0.002)
    n = seeds_for_power(2.0, 2.0)
    assert design_power(2.0, 2.0, n) >= 0.8 > design_power(2.0, 2.0, n - 1)
    # the test set's own error does not shrink with seeds: a small effect can be out of reach
    assert seeds_for_power(0.5, 1.0, image_se=0.5) is None
    assert design_power(1.0, 1.0, 1) == 0.0


def test_crossed_bootstrap_of_identical_arms_is_zero_and_of_a_constant_shift_is_that_shift():
    rng = np.random.default_rng(0)
    a = (rng.random((4, 300)) < 0.6).astype(float)
    same = crossed_bootstrap_interval(a, a.copy(), resamples=200)
    assert (same.low, same.high, same.mean) == (0.0, 0.0, 0.0)
    shifted = crossed_bootstrap_interval(a, a + 0.1, resamples=200)
    assert shifted.low == pytest.approx(0.1) and shifted.high == pytest.approx(0.1)


def _crossed(rng, n_seeds, n_images, mu, seed_sd, image_sd, noise_sd):
    """A (seeds, images) table of differences: mu + seed effect + image effect (shared by all seeds) + noise."""
    return (mu + rng.normal(0, seed_sd, (n_seeds, 1)) + rng.normal(0, image_sd, (1, n_images))
            + rng.normal(0, noise_sd, (n_seeds, n_images)))


def test_crossed_bootstrap_covers_the_true_difference_about_95_percent_of_the_time():
    # known variance components, the image effect dominating (as when every seed is tested on the same images):
    # the crossed interval holds the true mean ~95% of the time, the t interval over seeds (blind to which images
    # were drawn) far less
    rng = np.random.default_rng(7)
    trials, crossed_hits, seed_hits = 200, 0, 0
    for t in range(trials):
        d = _crossed(rng, 10, 200, 1.0, seed_sd=0.5, image_sd=3.0, noise_sd=2.0)
        i = crossed_bootstrap_interval(np.zeros_like(d), d, resamples=400, seed=t)
        crossed_hits += i.low <= 1.0 <= i.high
        s = seed_interval(d.mean(axis=1))
        seed_hits += s.low <= 1.0 <= s.high
    assert 0.89 <= crossed_hits / trials <= 0.99
    assert seed_hits / trials < 0.8


def test_crossed_bootstrap_finds_a_real_difference_and_refuses_mismatched_arms():
    rng = np.random.default_rng(1)
    base = (rng.random((6, 1000)) < 0.50).astype(float)
    better = (rng.random((6, 1000)) < 0.60).astype(float)  # +10 points
    i = crossed_bootstrap_interval(base, better, resamples=500)
    assert 0.05 < i.low < 0.1 < i.high < 0.15
    assert two_axis_verdict(i, 0.1) == Verdict(AS_PAPER, CONSISTENT)
    with pytest.raises(ValueError, match="one shape"):
        crossed_bootstrap_interval(np.zeros((3, 10)), np.zeros((3, 11)))


def test_compare_pairs_by_seed_and_uses_the_wider_interval():
    base = {0: 50.0, 1: 52.0, 2: 49.0, 3: 70.0}  # seed 3 has no partner: left out
    meth = {0: 53.0, 1: 53.0, 2: 53.0}
    rng = np.random.default_rng(2)
    outcomes_b = {s: (rng.random(400) < 0.5) for s in range(3)}
    outcomes_m = {s: (rng.random(400) < 0.53) for s in range(3)}
    c = compare("PGD-40", "AT", "A3T", 1.65, base, meth, baseline_outcomes=outcomes_b, method_outcomes=outcomes_m)
    assert c.differences == (3.0, 1.0, 4.0)
    assert c.by_images is not None and c.by_images.source == "seeds × images (crossed)"
    assert c.interval.width == max(c.by_seeds.width, c.by_images.width)
    row = comparison_table([c]).splitlines()[-1]
    assert "A3T − AT" in row and f"**{c.verdict_text}**" in row and "+3.0, +1.0, +4.0" in row
    assert c.to_dict()["direction"] == c.verdict.direction


def test_compare_refuses_arms_without_a_shared_seed():
    with pytest.raises(ValueError, match="no seed is shared"):
        compare("m", "a", "b", 1.0, {0: 1.0}, {1: 2.0})


def test_a_metric_at_its_bound_in_both_arms_gets_no_verdict():
    # AT²L under the standard suite: both arms at 100% error on every seed ("+0.0 [0, 0], power 100%" before)
    c = compare("standard-suite error", "AT", "AT²L", -2.0, {0: 100.0, 1: 100.0, 2: 100.0},
                {0: 100.0, 1: 100.0, 2: 100.0}, bounds=(0.0, 100.0))
    assert c.verdict is None and c.verdict_text.startswith("no verdict: not saturated")
    assert math.isnan(c.power)


def test_no_verdict_when_the_baseline_leaves_no_room_for_the_papers_effect():
    # the baseline detects at 98.5%: a +3.69-point gain would pass 100%, so a zero difference says nothing
    at_ceiling = compare("AUC", "AT", "TLA", 3.69, {0: 98.5, 1: 98.4}, {0: 98.6, 1: 98.0}, bounds=(0.0, 100.0))
    assert at_ceiling.verdict is None and "not saturated" in at_ceiling.verdict_text
    with_room = compare("AUC", "AT", "TLA", 3.69, {0: 90.0, 1: 91.0}, {0: 90.0, 1: 95.0}, bounds=(0.0, 100.0))
    assert with_room.verdict == Verdict(UNDETERMINED, CONSISTENT)


def test_a_failed_or_unmeasured_gate_withholds_the_verdict_and_names_itself():
    masked = masking_gate("AT", suite_accuracy=0.1, pgd_accuracy=4.3, max_gap=3.0)
    floor = floor_gate("AT", 0.1, 25.0, "standard-suite accuracy", "the demo's PGD-AT recipe reaches 35%")
    idle = mechanism_gate("critic", "critic accuracy on adversarial pairs ≥ 0.65 at epoch 6", "0.50", False)
    unknown = mechanism_gate("L2P", "θ differs from L2P-R's", "not logged", None)
    assert not masked.passed and not floor.passed
    base, meth = {0: 4.0, 1: 5.0, 2: 3.0}, {0: 8.0, 1: 9.0, 2: 10.0}
    for gate in (masked, floor, idle, unknown):
        c = compare("PGD-100", "AT", "TLA", 2.9, base, meth, gates=[gate])
        status = "not measured" if gate.passed is None else "failed"
        assert c.verdict is None and c.verdict_text == f"no verdict: {gate.label} {status}"
        assert c.to_dict()["direction"] is None
    ok = masking_gate("AT", 35.0, 37.0, 3.0)
    c = compare("PGD-100", "AT", "TLA", 2.9, base, meth, gates=[ok])
    assert ok.passed and c.verdict == Verdict(AS_PAPER, CONSISTENT)
    table = gates_table([ok, masked, masked, idle])
    assert table.count("| not masked | AT |") == 2 and table.splitlines()[2].endswith("**FAIL** |")
