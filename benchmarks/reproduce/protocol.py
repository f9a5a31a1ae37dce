"""The reproduction protocol shared by ``benchmarks/reproduce/*.py``: paired arms, cached per-example measurements,
the comparison table and the document.

* An **arm** is a config plus overrides; ``run_dir(arm, seed)`` is its run for one seed. Both arms of a comparison
  are trained with the same ``run.seed``, which fixes the data order and the initialisation (paired seeds).
* Every measurement is a vector of **per-example outcomes** on the same test images (1 = still correct), kept in
  the run's archive (below) under a key that spells out the attack and its settings, so a rerun only
  computes what is missing, and the paired bootstrap over seeds × images (:mod:`robustlab.paired`) can use them.
* Robust accuracy comes from the ``standard`` suite (AutoAttack-strength, resumable state in the run directory);
  the paper's own attacks are measured beside it.
* ``runs/`` is not committed, so what a run produced is **archived** beside the document
  (``docs/results/reproduction/NAME_runs/RUN.json``: the per-epoch log, the sha256 of the final weights and every
  measurement; :class:`Archive`). A later checkout reports from the archive (``--report-only``) and only trains and
  measures what is missing; a run trained again must produce the archived weights, or its archive is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import mean_std, train_or_reuse  # noqa: E402
from robustlab.evaluation import benchmark  # noqa: E402
from robustlab.checkpoint import (  # noqa: E402
    MANIFEST_FILE, MODEL_FILE, atomic_write_text, find_latest_checkpoint, load_checkpoint)
from robustlab.config import parse_config  # noqa: E402
from robustlab.evaluation.outcome import attack_outcome  # noqa: E402
from robustlab.evaluation.runner import outcome_of  # noqa: E402
from robustlab.paired import Comparison, Gate, compare, comparison_table, gates_table  # noqa: E402
from robustlab.runs import load_run_data, load_trained_model  # noqa: E402

MEASUREMENTS_FILE = "reproduce.json"


class Archive:
    """The committed record of each run of a reproduction: ``<folder>/<run name>.json`` holding ``history`` (the
    per-epoch log), ``weights_sha256`` (of the final checkpoint's weights) and ``measurements`` (per-example
    outcomes by key, as :class:`Measurements`). ``Archive.folder`` is set by :func:`begin` (None: no archive)."""

    folder: Path | None = None

    @classmethod
    def path(cls, run_dir: Path) -> Path | None:
        return None if cls.folder is None else cls.folder / f"{Path(run_dir).name}.json"

    @classmethod
    def read(cls, run_dir: Path) -> dict:
        path = cls.path(run_dir)
        return json.loads(path.read_text()) if path is not None and path.is_file() else {}

    @classmethod
    def update(cls, run_dir: Path, **fields) -> None:
        path = cls.path(run_dir)
        if path is None:
            return
        record = {**cls.read(run_dir), **fields}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, separators=(",", ":")) + "\n")

    @classmethod
    def has(cls, run_dir: Path, keys: Sequence[str]) -> bool:
        """Whether every one of the measurements ``keys`` of the run is archived."""
        return set(keys) <= set(cls.read(run_dir).get("measurements", {}))

    @classmethod
    def record_training(cls, run_dir: Path) -> None:
        """Archive the finished run's log and weights hash; refuse a run whose weights differ from the archived
        ones (its archived measurements are of another model: delete ``<run>.json`` to start that run over)."""
        ckpt = find_latest_checkpoint(run_dir)
        if ckpt is None:
            return
        weights = json.loads((ckpt / MANIFEST_FILE).read_text())[MODEL_FILE]
        archived = cls.read(run_dir).get("weights_sha256")
        if archived not in (None, weights):
            raise RuntimeError(f"{run_dir.name}: the weights trained now differ from the archived ones in "
                               f"{cls.path(run_dir)} (code or data changed since); delete that file to measure the "
                               f"new run from scratch")
        config = json.loads((run_dir / "config.json").read_text())
        config["run"].pop("out_dir", None)  # this machine's path: the archive is named after the run instead
        machine = cls.read(run_dir).get("machine") or this_machine()
        cls.update(run_dir, config=config, history=history(run_dir), weights_sha256=weights, machine=machine)


class WeightsNotHere:
    """The model of an archived run whose weights are not in this checkout: any use of it is :class:`Missing`
    (a report from the archive never uses it; training the run again with the same seed brings the weights back)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def _missing(self, *args, **kwargs):
        raise Missing(f"{self.run_dir.name}: only its archive is here; train it again (same seed) to measure more")

    __call__ = _missing

    def __getattr__(self, name):
        self._missing()


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: a config (relative to the repository) and its overrides."""

    label: str
    config: str
    overrides: tuple[str, ...] = ()
    slug: str = ""

    def run_dir(self, root: Path, seed: int) -> Path:
        return root / f"{self.slug or self.label.lower()}_seed{seed}"


def begin(args, name: str) -> Path:
    """Common start of a reproduction: one torch thread, ``--report-only``, the ``--quick`` locations under
    ``runs/``, the archive beside the document; returns the runs root."""
    torch.set_num_threads(1)
    Measurements.report_only = bool(getattr(args, "report_only", False))
    Document.smoke, Document.runs = bool(getattr(args, "quick", False)), set()
    LEFT_OUT.clear()
    if getattr(args, "quick", False):
        args.runs, args.out = args.runs + "_quick", str(Path(args.runs + "_quick") / f"{name}.md")
    Archive.folder = ROOT / Path(args.out).parent / f"{Path(args.out).stem}_runs"
    return ROOT / args.runs


def finished_epochs(run_dir: Path) -> int:
    """The last completed epoch of a run (its archived log when it has no checkpoint here; 0 when neither)."""
    ckpt = find_latest_checkpoint(run_dir) if (run_dir / "checkpoints" / "latest").exists() else None
    if ckpt is None:
        return max((r.get("epoch", 0) for r in Archive.read(run_dir).get("history", [])), default=0)
    _, state, _ = load_checkpoint(ckpt)
    return int(state["epoch"])


def train(arm: Arm, seed: int, root: Path, *, epochs: int, extra: tuple[str, ...] = (), needs: Sequence[str] = (),
          device: str = "cpu", log: Callable[[str], None] = print) -> Path:
    """Train (or resume, or reuse) ``arm`` with ``seed`` for ``epochs`` epochs; returns the run directory.

    ``needs``: the measurements the caller will take of the run; a run archived as finished with all of them is
    not trained again (its weights are not needed)."""
    out = arm.run_dir(root, seed)
    if Measurements.report_only:
        if finished_epochs(out) < epochs:
            raise Missing(f"{out.name}: not trained to {epochs} epochs")
        return out
    if needs and find_latest_checkpoint(out) is None and finished_epochs(out) >= epochs and Archive.has(out, needs):
        log(f"[{arm.label} seed {seed}] trained and measured: reported from {Archive.path(out)}")
        return out
    started = time.perf_counter()
    train_or_reuse(arm.config, out, arm.label, seed=seed, overrides=[*arm.overrides, *extra], epochs=epochs,
                   device=device, log=log)
    if time.perf_counter() - started > 5:
        log(f"[{arm.label} seed {seed}] trained in {time.perf_counter() - started:.0f} s")
    Archive.record_training(out)
    return out


class Missing(Exception):
    """A run or measurement that is not there yet: in ``--report-only`` mode (which computes nothing), or a
    measurement of an archived run whose weights are not here (:class:`WeightsNotHere`)."""


class Measurements:
    """The per-example outcomes measured on one run, kept in the run's :class:`Archive` (``<run>/reproduce.json``
    when there is no archive), written after each measurement, merged with what another process measuring the same
    run wrote meanwhile (the scripts' second measuring process).

    ``Measurements.report_only = True`` (the scripts' ``--report-only``): nothing is computed, a missing measurement
    raises :class:`Missing`, so a document can be written from whatever is finished.
    """

    report_only = False

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        Document.runs.add(Path(run_dir).name)
        self.path = None if Archive.folder is not None else run_dir / MEASUREMENTS_FILE
        self.data: dict[str, dict] = self.stored()

    def stored(self) -> dict[str, dict]:
        """What is saved now (another process, measuring other attacks of the same run, may have added to it)."""
        if self.path is None:
            return Archive.read(self.run_dir).get("measurements", {})
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def get(self, key: str, compute: Callable[[], tuple[np.ndarray, dict]]) -> np.ndarray:
        """The outcomes under ``key``, computed (outcomes, extra info) and saved when missing."""
        if key not in self.data:
            self.data = {**self.stored(), **self.data}
        if key not in self.data:
            if Measurements.report_only:
                raise Missing(f"{Path(self.run_dir).name}: {key}")
            started = time.perf_counter()
            outcomes, info = compute()
            measured = {"outcomes": np.asarray(outcomes, dtype=float).round(4).tolist(),
                        "seconds": round(time.perf_counter() - started, 1), **info}
            self.data = {**self.stored(), **self.data, key: measured}
            if self.path is None:
                Archive.update(self.run_dir, measurements=self.data)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self.path, json.dumps(self.data))
        return np.asarray(self.data[key]["outcomes"], dtype=float)

    def info(self, key: str) -> dict:
        return {k: v for k, v in self.data.get(key, {}).items() if k != "outcomes"}


def attack_correct(model, x, y, attack=None, *, seed: int = 1234) -> tuple[np.ndarray, dict]:
    """Per-example correctness under ``attack`` (None: clean), random starts seeded."""
    torch.manual_seed(seed)
    outcome = attack_outcome(model, x, y, attack=attack)
    return outcome.correct.cpu().numpy(), {}


def draws_correct(model, x, y, draws: int) -> np.ndarray:
    """Per example, the fraction of ``draws`` predictions that are correct (1 or 0 for a deterministic model;
    non-finite logits are wrong)."""
    with torch.no_grad():
        return outcome_of(model, x, y, draws)[0].numpy()


def standard_correct(model, x, y, eps: float, state_dir: Path, *, suite: str = "standard",
                     log: Callable[[str], None] = print) -> tuple[np.ndarray, dict]:
    """Per-example robustness under the AutoAttack-strength suite (resumable in ``state_dir``), with its checks."""
    result = benchmark(model, x, y, eps=eps, suite=suite, state_dir=state_dir, log=log)
    failed = [c.name for c in result.checks if not c.passed]
    return result.robust.cpu().numpy(), {"failed_checks": failed, "suite": result.suite}


def chunks(key: str, n: int, chunk: int) -> list[tuple[str, int, int]]:
    """(key, first, end) of each ``chunk`` of the first ``n`` examples: ``"KEY n=END"`` for the first chunk,
    ``"KEY images=FIRST-END"`` after it. Each chunk is cached and archived on its own, so an interrupted
    measurement keeps its finished chunks and a larger ``n`` later only adds chunks."""
    return [(f"{key} n={min(a + chunk, n)}" if a == 0 else f"{key} images={a}-{min(a + chunk, n)}", a,
             min(a + chunk, n)) for a in range(0, n, chunk)]


def chunked_outcomes(m: Measurements, key: str, n: int, compute: Callable[[int, int], tuple[np.ndarray, dict]],
                     *, chunk: int = 500) -> np.ndarray:
    """The outcomes on the first ``n`` examples, ``compute(first, end)`` measuring one chunk (:func:`chunks`)."""
    return np.concatenate([m.get(k, lambda a=a, b=b: compute(a, b)) for k, a, b in chunks(key, n, chunk)])


def standard_key(eps: float) -> str:
    """The key (chunk prefix, :func:`chunks`) of the standard suite's outcomes at ``eps``."""
    return f"standard eps={eps}"


def standard_outcomes(m: Measurements, model, x, y, eps: float, run_dir: Path, n: int, *,
                      chunk: int = 500) -> tuple[np.ndarray, list[str]]:
    """The standard suite's per-example outcomes on the first ``n`` images, measured in chunks of ``chunk``
    (:func:`chunks`), and the names of the masking checks that failed in any chunk."""
    n = min(n, len(x))
    key = standard_key(eps)
    outcomes = chunked_outcomes(m, key, n, lambda a, b: standard_correct(
        model, x[a:b], y[a:b], eps, run_dir / f"standard_eps{eps}_{a}-{b}", log=lambda _: None), chunk=chunk)
    failed = {c for k, _, _ in chunks(key, n, chunk) for c in m.info(k).get("failed_checks", [])}
    return outcomes, sorted(failed)


def history(run_dir: Path) -> list[dict]:
    """The run's per-epoch log (``metrics.jsonl``; the archived one when the run is not here)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return Archive.read(run_dir).get("history", [])
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def epoch_table(run_dirs: dict[str, list[Path]], keys: list[tuple[str, str]], epochs: list[int],
                scale: float = 1.0, digits: int = 3) -> str:
    """Markdown: per arm and epoch, mean ± std over its runs of each logged (key, header)."""
    lines = ["| arm | epoch | " + " | ".join(h for _, h in keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for label, dirs in run_dirs.items():
        logs = [history(d) for d in dirs]
        for e in epochs:
            rows = [next((r for r in log if r.get("epoch") == e), None) for log in logs]
            cells = [mean_std([scale * r[k] for r in rows if r is not None and k in r], digits) for k, _ in keys]
            lines.append(f"| {label} | {e} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


LEFT_OUT: list[str] = []  # what skip_missing left out of this report, in order


@contextlib.contextmanager
def skip_missing():
    """In ``--report-only`` mode, leave out whatever is not measured yet (said, and kept in :data:`LEFT_OUT`);
    otherwise a no-op."""
    try:
        yield
    except Missing as exc:
        LEFT_OUT.append(str(exc))
        print(f"[report-only] left out: {exc}", flush=True)


def compare_arms(metric: str, baseline: str, method: str, paper_effect: float | None, results: dict, key: str, *,
                 scale: float = 100.0, bounds: tuple[float, float] | None = (0.0, 100.0),
                 gates: Sequence[Gate] = ()) -> Comparison | None:
    """:func:`robustlab.paired.compare` of ``results[arm][seed][key]`` (per-example outcomes, or one number per run)
    × ``scale``, over the seeds both arms have measured, with the experiment's ``gates`` (a ``--quick`` smoke run
    adds a failing "full protocol" gate: it gives no verdict); None when the arms share no seed."""
    a = {s: r[key] for s, r in results.get(baseline, {}).items() if key in r}
    b = {s: r[key] for s, r in results.get(method, {}).items() if key in r}
    if not set(a) & set(b):
        return None
    if Document.smoke:
        gates = [*gates, Gate("full protocol", "this document", "the script's own settings (not --quick)",
                              "--quick smoke run: few seeds, epochs and images", False)]
    return compare(metric, baseline, method, paper_effect, {s: scale * float(np.mean(v)) for s, v in a.items()},
                   {s: scale * float(np.mean(v)) for s, v in b.items()},
                   baseline_outcomes={s: v for s, v in a.items() if np.ndim(v)} or None,
                   method_outcomes={s: v for s, v in b.items() if np.ndim(v)} or None, scale=scale, bounds=bounds,
                   gates=tuple(gates))


def defense_attack_table(defense: dict):
    """The single training attack of a config's ``[defense]`` table as an ``AttackTable`` (name, ε, options): its
    ``[defense.attack]``, AWP's base defense's, or AT²L's one attack at its ε; None for a defense with none (standard
    training, VAT, margin, the critic) or several (an AT²L ensemble of attacks)."""
    from robustlab.config import AttackTable
    from robustlab.defenses import build_defense

    built = build_defense(defense["name"], {k: v for k, v in defense.items() if k != "name"})
    options = getattr(built, "base", built).options  # AWP perturbs the weights of its base defense's objective
    table = getattr(options, "attack", None)
    attacks = getattr(options, "attacks", None)
    if table is None and attacks is not None and list(attacks) == ["fgsm"]:
        table = AttackTable(name="fgsm", eps=options.eps)
    return table


def training_attack_table(run_dir: Path):
    """:func:`defense_attack_table` of a run, from its archived config (else the run's own ``config.json``), the
    stored config upgraded as a resume reads it, so a default step size it kept is counted; None without one."""
    from robustlab.experiment import config_from_dict, upgrade_stored_config

    raw = Archive.read(run_dir).get("config")
    if raw is None and (Path(run_dir) / "config.json").is_file():
        raw = json.loads((Path(run_dir) / "config.json").read_text())
    return None if raw is None else defense_attack_table(config_from_dict(upgrade_stored_config(raw)).defense)


def training_attack(run_dir: Path) -> tuple[str, float, int, float] | None:
    """(name, ε, steps, step size) of :func:`training_attack_table`; None for a run without one."""
    table = training_attack_table(run_dir)
    if table is None:
        return None
    extra = table.options()
    steps = int(extra.get("steps", 1))
    return table.name, float(table.eps), steps, float(extra.get("step_size") or 2.5 * table.eps / steps)


def matched_attack_gate(baseline: str, baseline_dirs: Sequence[Path], method: str,
                        method_dirs: Sequence[Path]) -> Gate:
    """Both arms trained against the same attack (name, ε, steps, step size): otherwise the comparison measures
    the attacks' difference as much as the methods'."""
    def describe(dirs):
        found = {training_attack(d) for d in dirs}
        return found, "; ".join("–" if a is None else f"{a[0]}-{a[2]} ε {a[1]:g} step {a[3]:.4g}" for a in found)
    a, a_text = describe(baseline_dirs)
    b, b_text = describe(method_dirs)
    known = None not in a | b and len(a) == len(b) == 1
    return Gate("matched training attack", f"{method} vs {baseline}", "the same training attack in both arms",
                f"{baseline}: {a_text}; {method}: {b_text}", (a == b) if known else None)


def load(run_dir: Path, epoch: int | None = None):
    """(model, data) of a finished run, or of its ``epoch`` checkpoint, on the CPU in eval mode; for a run known
    only from its archive, (:class:`WeightsNotHere`, data)."""
    if Measurements.report_only and finished_epochs(run_dir) == 0:
        raise Missing(f"{run_dir.name}: not trained")
    archived = Archive.read(run_dir)
    if find_latest_checkpoint(run_dir) is None and "config" in archived:
        return WeightsNotHere(run_dir), load_run_data(parse_config(archived["config"]))
    where = run_dir if epoch is None else run_dir / "checkpoints" / f"epoch-{epoch:04d}"
    model, _, data, _ = load_trained_model(str(where))
    return model.eval(), data


def arm_table(rows: dict[str, dict[int, dict[str, float]]], columns: list[tuple[str, str]], digits: int = 1) -> str:
    """Markdown: one row per arm, mean ± sample std over its seeds for each (key, header) column."""
    lines = ["| arm | seeds | " + " | ".join(h for _, h in columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for label, by_seed in rows.items():
        cells = [mean_std([r[k] for r in by_seed.values() if k in r], digits) for k, _ in columns]
        lines.append(f"| {label} | {len(by_seed)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_lines(comparisons: list[Comparison], digits: int = 1, unit: str = "points") -> str:
    """One plain sentence per claim: the verdict on both axes (or the gate that withheld it) and its numbers."""
    out = []
    for c in comparisons:
        i = c.interval
        span = ("no interval (one seed)" if not np.isfinite(i.width)
                else f"95% CI [{i.low:+.{digits}f}, {i.high:+.{digits}f}]")
        measured = f"{i.mean:+.{digits}f}" + (f" {unit}" if unit else "")
        if c.paper_effect is None:
            against = "an ablation (the paper has no such arm)"
        else:
            power = "–" if np.isnan(c.power) else f"{100 * c.power:.0f}%"
            against = (f"the paper's {c.paper_effect:+.{max(digits, 2)}f}; post-hoc power to see it {power}, "
                       f"smallest effect detectable with 80% power ±{i.detectable():.{digits}f}")
        out.append(f"- **{c.metric}, {c.method} − {c.baseline}: {c.verdict_text}.** Measured {measured} ({span}, "
                   f"{i.source}) against {against}.")
    return "\n".join(out)


def headline(comparisons: list[Comparison], digits: int = 1) -> str:
    """The document's opening verdicts: one line per claim, both axes or the gate that withheld the verdict."""
    def line(c: Comparison) -> str:
        i = c.interval
        span = "one seed" if not np.isfinite(i.width) else f"CI [{i.low:+.{digits}f}, {i.high:+.{digits}f}]"
        paper = "ablation" if c.paper_effect is None else f"the paper {c.paper_effect:+.{max(digits, 2)}f}"
        return (f"- {c.metric}, {c.method} − {c.baseline}: **{c.verdict_text}** ({i.mean:+.{digits}f}, {span}; "
                f"{paper})")
    return "\n".join(line(c) for c in comparisons)


def gates_section(comparisons: list[Comparison]) -> str:
    """The validity gates of every comparison (each once), failures first; what a failed gate means."""
    gates = [g for c in comparisons for g in c.gates]
    if not gates:
        return "No gate applies to these comparisons."
    return ("A comparison gets a verdict only when every gate on it passed; a failed or unmeasured gate gives "
            "\"no verdict\" and names itself.\n\n" + gates_table(gates))


def command_line(script: str, argv: list[str] | None, folder: str = "benchmarks/reproduce") -> str:
    """The command that reproduces the document (``--report-only`` only renders it: left out)."""
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only"]
    return f"nice -n 10 .venv/bin/python {folder}/{script}" + (" " + shlex.join(args) if args else "")


def this_machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch thread")


def machine_line() -> str:
    """Where the document's runs were trained (as their archives record it), so that a report rendered elsewhere
    is the same document."""
    if Archive.folder is None:
        return this_machine()
    found = sorted({Archive.read(Archive.folder / name).get("machine") or "" for name in Document.runs})
    known = [m for m in found if m]
    if not known:
        return "the runs' machine is not recorded in their archives (archived before it was)"
    return "runs trained on " + "; ".join(known) + (" and machines not recorded" if "" in found else "")


def plan(label: str, todo_train: int, total_train: int, train_s: float, todo_eval: int, eval_s: float) -> None:
    """Print the expected runtime of what is left (estimates measured on a shared 2-core CPU, one thread)."""
    minutes = (todo_train * train_s + todo_eval * eval_s) / 60
    print(f"[{label}] {todo_train} of {total_train} runs to train (~{train_s:.0f} s each) and ~{todo_eval} "
          f"evaluations (~{eval_s:.0f} s each): expect ~{minutes:.0f} min on one core; finished work is reused.",
          flush=True)


class Document:
    """What the document being written rests on: ``runs`` (every run whose measurements it read) and ``smoke``
    (``--quick``: titled as a smoke run, no verdicts)."""

    runs: set[str] = set()
    smoke = False


RUNS_MARK = "<!-- runs: "


class ReportRefused(SystemExit):
    """A ``--report-only`` document from less than the committed one holds: refused, the committed one kept."""


def committed_runs(path: Path) -> set[str] | None:
    """The runs a committed document names in its closing marker (None: no document, or one without a marker)."""
    if not path.is_file():
        return None
    line = next((ln for ln in path.read_text().splitlines() if ln.startswith(RUNS_MARK)), None)
    return None if line is None else set(line[len(RUNS_MARK):].removesuffix(" -->").split())


def write_document(path: Path, text: str, comparisons: Sequence[Comparison] = ()) -> None:
    """Write the document (and ``<stem>.json``: its verdicts and gates, which the README's claims table reads).

    A ``--report-only`` document never destroys a result: when it would hold fewer runs than the committed one, or
    when anything was left out and a document is already there, it is refused with one line naming what is missing.
    A ``--quick`` document is titled as a smoke run (its comparisons carry no verdict)."""
    before = committed_runs(path)
    if Measurements.report_only and path.is_file():
        missing = sorted(before - Document.runs) if before is not None else []
        if missing or LEFT_OUT:
            what = ", ".join(missing or sorted({m.split(":")[0] for m in LEFT_OUT}))
            raise ReportRefused(f"refusing to overwrite {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"
                                f" from less than it holds; missing: {what} (train and measure them, or restore "
                                f"their archive)")
    if Document.smoke:
        title, _, rest = text.partition("\n")
        text = (f"{title} — SMOKE RUN (--quick)\n\n**A smoke run of the script (few seeds, epochs and images): it "
                f"checks the pipeline, not the paper. No verdicts.**\n{rest}")
    path.parent.mkdir(parents=True, exist_ok=True)
    marker = f"{RUNS_MARK}{' '.join(sorted(Document.runs))} -->"
    path.write_text(text.rstrip() + "\n\n" + marker + "\n")
    summary = {"document": path.name, "smoke": Document.smoke, "runs": sorted(Document.runs),
               "comparisons": [c.to_dict() for c in comparisons]}
    path.with_suffix(".json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    print(f"wrote {path}", flush=True)


__all__ = ["LEFT_OUT", "Archive", "Arm", "Document", "Measurements", "Missing", "ReportRefused", "WeightsNotHere",
           "arm_table", "attack_correct", "begin", "chunked_outcomes", "chunks", "command_line", "compare_arms",
           "comparison_table", "defense_attack_table", "draws_correct", "epoch_table", "finished_epochs",
           "gates_section", "headline", "history", "load", "machine_line", "matched_attack_gate", "mean_std", "plan",
           "skip_missing", "standard_correct", "standard_key", "standard_outcomes", "train", "training_attack",
           "training_attack_table", "verdict_lines", "write_document"]
