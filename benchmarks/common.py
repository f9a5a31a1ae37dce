"""Helpers shared by the benchmarks: train-or-reuse a run, mean ± std cells, generated blocks between markers."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robustlab.checkpoint import find_latest_checkpoint  # noqa: E402
from robustlab.engine import Trainer  # noqa: E402
from robustlab.experiment import load_config  # noqa: E402


def train_or_reuse(config_file: str | Path, run_dir: Path, label: str, *, seed: int, overrides: list[str] = (),
                   epochs: int | None = None, train_subset: int | None = None, device: str = "cpu",
                   log: Callable[[str], None] = print) -> Trainer:
    """Train ``config_file`` (relative to the repo) into ``run_dir`` on ``device`` (the CPU by default), without
    progress bars.

    A finished run is reused and an interrupted one resumed from its last checkpoint, so a rerun of a benchmark
    only trains what is missing (training is seeded and deterministic on the CPU: the numbers do not change).
    """
    sets = [*overrides, f"run.seed={seed}", f"run.out_dir={json.dumps(str(run_dir))}", "run.progress=false",
            f"run.device={json.dumps(device)}"]
    if epochs:
        sets.append(f"run.epochs={epochs}")
    if train_subset:
        sets.append(f"data.train_subset={train_subset}")
    config = load_config(ROOT / config_file, sets)
    ckpt = find_latest_checkpoint(run_dir) if run_dir.exists() else None
    trainer = Trainer(config, resume=ckpt is not None, log=lambda m: None)
    if trainer.start_epoch < config.run.epochs:
        log(f"[{label} seed {seed}] training {config.run.epochs - trainer.start_epoch} epochs -> {run_dir}")
        trainer.fit()
    else:
        log(f"[{label} seed {seed}] reusing the finished run in {run_dir}")
    return trainer


def mean_std(values: list[float], digits: int = 1) -> str:
    """"m ± s" (sample std) over seeds; one value alone; "–" for none."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def between_markers(text: str, begin: str, end: str, block: str, page: str) -> str:
    """``text`` with what stands between the marker lines ``begin`` and ``end`` replaced by ``block`` (a generated
    table or output, kept in a page written by hand)."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise SystemExit(f"{page} must hold {begin} and then {end}, once each")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{block}\n{end}{tail}"


def write_between_markers(path: Path, begin: str, end: str, block: str) -> None:
    """Rewrite the page ``path`` with ``block`` between its marker lines (:func:`between_markers`)."""
    path.write_text(between_markers(path.read_text(), begin, end, block, path.name))


def write_report(path: str | Path, lines: list[str]) -> None:
    """Write a markdown report (parent folders created), one trailing newline."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {path}", flush=True)
