"""The reproduction protocol's statistics: paired intervals, power and the verdict (robustlab.paired)."""

import math

import numpy as np
import pytest

from robustlab.paired import (CONTRADICTED, INCONCLUSIVE, REPRODUCED, Interval, bootstrap_interval, compare,
                              comparison_table, seed_interval, verdict)


def test_seed_interval_matches_the_t_table_by_hand():
    # differences 1, 2, 3: mean 2, sample sd 1, se 1/√3; t(0.975, 2 df) = 4.303 (printed tables)
    i = seed_interval([1.0, 2.0, 3.0])
    half = 4.303 / math.sqrt(3)
    assert i.mean == pytest.approx(2.0)
    assert i.low == pytest.approx(2.0 - half, abs=1e-3) and i.high == pytest.approx(2.0 + half, abs=1e-3)
    assert i.df == 2 and i.source == "seeds"


def test_one_seed_gives_an_infinite_interval_and_no_verdict():
    i = seed_interval([5.0])
    assert math.isinf(i.low) and math.isinf(i.high)
    assert verdict(i, paper_effect=5.0) == INCONCLUSIVE


def test_seed_interval_refuses_no_seeds():
    with pytest.raises(ValueError, match="non-empty"):
        seed_interval([])


def _interval(low, high):
    return Interval((low + high) / 2, low, high, (high - low) / 3.92, 1.96, "seeds × images")


@pytest.mark.parametrize("low, high, paper, expected", [
    (0.5, 3.0, 2.0, REPRODUCED),         # excludes 0 on the paper's side, holds its effect
    (0.2, 0.9, 2.0, REPRODUCED),         # on the paper's side but smaller: still excludes 0
    (-1.0, 1.0, 2.0, CONTRADICTED),      # holds 0, excludes the paper's +2
    (-3.0, -1.0, 2.0, CONTRADICTED),     # the opposite sign
    (-1.0, 3.0, 2.0, INCONCLUSIVE),      # holds both 0 and +2
    (-9.0, -1.0, -7.2, REPRODUCED),      # a lower-is-better effect (error points), in the paper's direction
    (-2.0, 4.0, -7.2, CONTRADICTED),     # excludes the paper's -7.2
    (-12.0, 3.0, -7.2, INCONCLUSIVE),
])
def test_verdict_cases(low, high, paper, expected):
    assert verdict(_interval(low, high), paper) == expected


def test_power_is_80_percent_at_2_8_standard_errors():
    i = Interval(0.0, -1.96, 1.96, 1.0, 1.96, "seeds × images")
    assert i.power(2.8016) == pytest.approx(0.80, abs=0.005)
    assert i.power(0.0) == pytest.approx(0.05, abs=0.001)  # the false-positive rate
    assert i.detectable() == pytest.approx(2.8016, abs=1e-3)


def test_t_power_is_lower_than_normal_power_with_few_seeds():
    t3 = seed_interval([0.0, 1.0, 2.0, 3.0])  # 3 df
    normal = Interval(t3.mean, t3.low, t3.high, t3.se, 1.96, "x")
    assert t3.power(2.0) < normal.power(2.0)


def test_bootstrap_of_identical_arms_is_zero_and_of_a_constant_shift_is_that_shift():
    rng = np.random.default_rng(0)
    a = (rng.random((4, 300)) < 0.6).astype(float)
    same = bootstrap_interval(a, a.copy(), resamples=200)
    assert (same.low, same.high, same.mean) == (0.0, 0.0, 0.0)
    shifted = bootstrap_interval(a, a + 0.1, resamples=200)
    assert shifted.low == pytest.approx(0.1) and shifted.high == pytest.approx(0.1)


def test_bootstrap_finds_a_real_difference_and_its_size():
    rng = np.random.default_rng(1)
    base = (rng.random((6, 1000)) < 0.50).astype(float)
    better = (rng.random((6, 1000)) < 0.60).astype(float)  # +10 points
    i = bootstrap_interval(base, better, resamples=500)
    assert i.low > 0.05 and i.low < 0.1 < i.high < 0.15
    assert verdict(i, paper_effect=0.1) == REPRODUCED


def test_bootstrap_refuses_mismatched_arms():
    with pytest.raises(ValueError, match="one shape"):
        bootstrap_interval(np.zeros((3, 10)), np.zeros((3, 11)))


def test_compare_pairs_by_seed_and_uses_the_wider_interval():
    base = {0: 50.0, 1: 52.0, 2: 49.0, 3: 70.0}  # seed 3 has no partner: left out
    meth = {0: 53.0, 1: 53.0, 2: 53.0}
    rng = np.random.default_rng(2)
    outcomes_b = {s: (rng.random(400) < 0.5) for s in range(3)}
    outcomes_m = {s: (rng.random(400) < 0.53) for s in range(3)}
    c = compare("PGD-40", "AT", "A3T", 1.65, base, meth, baseline_outcomes=outcomes_b, method_outcomes=outcomes_m)
    assert c.differences == (3.0, 1.0, 4.0)
    assert c.by_images is not None and c.by_images.source == "seeds × images"
    assert c.interval.width == max(c.by_seeds.width, c.by_images.width)
    row = comparison_table([c]).splitlines()[-1]
    assert "A3T − AT" in row and f"**{c.verdict}**" in row and "+3.0, +1.0, +4.0" in row
    assert c.to_dict()["verdict"] == c.verdict


def test_compare_refuses_arms_without_a_shared_seed():
    with pytest.raises(ValueError, match="no seed is shared"):
        compare("m", "a", "b", 1.0, {0: 1.0}, {1: 2.0})


def test_a_reproduced_effect_smaller_than_the_papers_says_so():
    from robustlab.paired import qualifier

    assert qualifier(_interval(0.2, 0.9), 2.0) == "smaller than the paper's"
    assert qualifier(_interval(2.5, 4.0), 2.0) == "larger than the paper's"
    assert qualifier(_interval(0.5, 3.0), 2.0) == ""
    assert qualifier(_interval(-1.0, 1.0), 2.0) == ""  # not reproduced: nothing to qualify
    assert qualifier(_interval(-9.0, -8.0), -7.2) == "larger than the paper's"


def test_no_verdict_when_the_baseline_leaves_no_room_for_the_papers_effect():
    # both arms detect at 99.8%: a +3.69-point gain would pass 100%, so a zero difference says nothing
    at_ceiling = compare("AUC", "AT", "TLA", 3.69, {0: 99.8, 1: 99.9}, {0: 99.8, 1: 99.9}, bounds=(0.0, 100.0))
    assert not at_ceiling.room and at_ceiling.verdict == INCONCLUSIVE and "no room" in at_ceiling.verdict_text
    with_room = compare("AUC", "AT", "TLA", 3.69, {0: 90.0, 1: 91.0}, {0: 90.0, 1: 91.0}, bounds=(0.0, 100.0))
    assert with_room.room and with_room.verdict == CONTRADICTED
