"""benchmarks/eval_zoo.py's tables: records measured at other seeds are found by name and averaged per method."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import eval_zoo  # noqa: E402


def test_a_seed_record_is_told_from_a_variant_by_its_name():
    assert eval_zoo.seed_of("standard") == 0
    assert eval_zoo.seed_of("reference[seed=2]") == 2
    assert eval_zoo.seed_of("adaptive[probe_give_up=[],seed=1]") is None  # a variant measured at seed 1
    assert eval_zoo.seed_of("adaptive[square_probe=0.2]") is None


def test_the_seeds_table_averages_each_method_over_its_seeds():
    entry = eval_zoo.BY_NAME["mnist5k_mart"]
    record = lambda accuracy, seconds: {"robust_accuracy": accuracy, "seconds": seconds}  # noqa: E731
    results = {entry.name: {"standard": record(0.16, 100.0), "standard[seed=1]": record(0.14, 100.0),
                            "adaptive": record(0.17, 50.0), "adaptive[seed=1]": record(0.14, 30.0),
                            "adaptive[probe_give_up=[],seed=1]": record(0.90, 1.0)}}
    lines = eval_zoo.seeds_table(results, [entry], ["standard", "adaptive"])
    rows = {line.split(" | ")[1]: line for line in lines if line.startswith("| mnist5k_mart")}
    assert rows["robustlab standard"].endswith("| 16.0 | 14.0 | 15.00 | 1.00 |")
    assert rows["robustlab adaptive"].endswith("| 17.0 | 14.0 | 15.50 | 0.40 |")  # the variant is not a seed
    assert eval_zoo.seeds_table({entry.name: {"standard": record(0.1, 1.0)}}, [entry], ["standard"]) == []


def test_the_reference_takes_a_seed_and_nothing_else():
    with pytest.raises(ValueError, match="seed only"):
        eval_zoo.measure(eval_zoo.BY_NAME["mnist5k_mart"], "reference", 10, None, False, {"square_probe": 0.2})
