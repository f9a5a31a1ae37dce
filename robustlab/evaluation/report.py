"""Tables (markdown, CSV) and the JSON of an evaluation: one report for every suite.

:func:`markdown` is what ``robustlab eval`` prints; :func:`write_report` writes ``<stem>.md``, ``.json`` (with the
per-example outcomes), ``.csv`` (one line per stage and ε), ``_checks.csv`` and the plots of
:mod:`robustlab.evaluation.plots`. :func:`comparison_table` puts several models side by side (the demo).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from robustlab.checkpoint import atomic_write_text
from robustlab.evaluation.checks import Check, summary_line
from robustlab.evaluation.result import NORM_NAMES, EvaluationResult
from robustlab.strict_json import strict_dumps

NOT_A_CLAIM = ("**The {suite} suite is not a robustness claim**: it is not AutoAttack's composition at AutoAttack's "
               "budget (or not yet shown as strong), so it may overstate robust accuracy; the headline number comes "
               "from `--suite standard` (AutoAttack's attacks and settings).")


def pct(acc: float | None) -> str:
    return "–" if acc is None or math.isnan(acc) else f"{100 * acc:.1f}"


def _pair(acc: float | None) -> str:
    return "–" if acc is None or math.isnan(acc) else f"{100 * acc:.1f} ({100 * (1 - acc):.1f})"


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def checks_table(checks: Sequence[Check]) -> str:
    lines = ["| check | result | detail |", "|---|---|---|"]
    for c in checks:
        status = {"pass": "pass", "skipped": "skipped", "FAIL": "**FAIL**"}[c.status]
        lines.append(f"| {c.name} | {status} | {_cell(c.detail)} |")
    return "\n".join(lines) + "\n"


def headline(result: EvaluationResult) -> str:
    """One sentence: the suite, the threat model, clean and robust accuracy, the cost."""
    norm = NORM_NAMES.get(result.norm, result.norm)
    draws = (f", each final point predicted {result.settings.final_draws} times"
             if result.suite in ("rand", "adaptive_rand") else "")
    kind = "AutoAttack-strength" if result.claim else "not a robustness claim"
    eps = ", ".join(f"{e:g}" for e in result.eps_list)
    if not result.curve:
        robust = "no ε-bounded attack at this threat model, so no robust accuracy"
    elif len(result.curve) == 1:
        robust = f"**robust accuracy {_pair(result.robust_accuracy)}**"
    else:
        robust = "**worst case " + ", ".join(f"{_pair(a)} at ε={e:g}" for e, a in sorted(result.curve.items())) + "**"
    return (f"Suite `{result.suite}` ({kind}{draws}) at {norm} ε = {eps} on {result.n} test examples: clean accuracy "
            f"{_pair(result.clean)}, {robust}" + (" — randomised model: EOT attacks" if result.randomised else "")
            + f"; {result.seconds:.0f} s, {result.passes.get('forward_per_image', 0):.0f} forward and "
              f"{result.passes.get('backward_per_image', 0):.0f} backward passes per image. Accuracy % (error %).")


def cascade_table(result: EvaluationResult) -> str:
    """A cascade: one line per stage, what it attacked and fooled, the robust accuracy after it, its cost."""
    lines = ["| attack | ε | settings | attacked | fooled | robust accuracy after it (%) | seconds | forward / image | "
             "backward / image |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result.bounded_rows():
        if "robust_after" not in r:
            continue
        seconds = f"{r['seconds']:.1f}" + (" (resumed)" if r["resumed"] else "")
        lines.append(f"| {r['attack']} | {r['eps']:g} | {_cell(r['settings'])} | {r['attacked']} | {r['fooled']} | "
                     f"{pct(r['robust_after'])} | {seconds} | {r['forward_per_image']:.0f} | "
                     f"{r['backward_per_image']:.0f} |")
    return ("\n".join(lines) + "\n\nEach attack runs only on the examples still robust after the ones above it (the "
            "worst case per example).\n")


def curve_tables(result: EvaluationResult) -> str:
    """Not a cascade: one table per norm, a line per attack and a column per ε (and the worst case)."""
    out = []
    bounded = result.bounded_rows()
    for norm in dict.fromkeys(r["norm"] for r in bounded):
        rows = [r for r in bounded if r["norm"] == norm]
        eps = sorted({r["eps"] for r in rows})
        by_attack: dict[str, dict[float, dict]] = {}
        for r in rows:
            by_attack.setdefault(r["attack"], {})[r["eps"]] = r
        header = "| attack | examples | " + " | ".join(f"ε={e:g}" for e in eps) + " | settings |"
        lines = [f"**{NORM_NAMES.get(norm, norm)} attacks: accuracy % (error %)**", "", header,
                 "|" + "---|" * (len(eps) + 3)]
        for name, at in by_attack.items():
            first = next(iter(at.values()))
            cells = [_pair(at[e]["accuracy"]) if e in at else "–" for e in eps]
            lines.append(f"| {name.upper()} | {first['examples']} | " + " | ".join(cells)
                         + f" | {_cell(first['settings'])} |")
        if norm == result.norm:
            cells = [_pair(result.curve[e]) if e in result.curve else "–" for e in eps]
            lines.append(f"| **worst case** | {result.n} | " + " | ".join(cells)
                         + " | worst case per example over the rows above in this norm |")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def rho_table(result: EvaluationResult) -> str:
    """Minimal-perturbation attacks: accuracy, success rate, ρ_adv over successes and with failures."""
    lines = ["| attack | examples | accuracy % (error %) | success % | ρ_adv | ρ_adv with failures | mean ‖r‖₂ | "
             "settings |", "|---|---|---|---|---|---|---|---|"]
    for m in result.minimal_rows():
        lines.append(f"| {m['attack'].upper()} | {m['examples']} | {_pair(m['accuracy'])} | "
                     f"{100 * m['success_rate']:.1f} | {_num(m['rho'])} | {_num(m['rho_with_failures'])} | "
                     f"{_num(m['mean_l2'])} | {_cell(m['settings'])} |")
    return "\n".join(lines) + "\n"


def markdown(result: EvaluationResult, title: str = "Evaluation") -> str:
    """The whole report: the headline, the stages, the ρ table (minimal attacks) and the masking checks."""
    parts = [f"# {title}", ""]
    if not result.claim:
        parts += [NOT_A_CLAIM.format(suite=result.suite), ""]
    parts += [headline(result), ""]
    parts.append(cascade_table(result) if result.cascade else curve_tables(result))
    if result.minimal_rows():
        parts += ["**Minimal-perturbation attacks: ρ_adv = mean ‖r‖₂/‖x‖₂** (with failures: a failed example "
                  "counts with its last iterate)", "", rho_table(result)]
    parts += ["**Masking checks**", "", checks_table(result.checks), summary_line(result.checks), ""]
    return "\n".join(parts)


def write_rows_csv(result: EvaluationResult, path: Path) -> list[Path]:
    """``path``: one line per stage and ε (clean as ``none``, the worst case as ``worst_case``); and
    ``<stem>_checks.csv`` beside it. Returns the files written."""
    path = Path(path)
    columns = ["attack", "kind", "norm", "eps", "examples", "accuracy", "error", "robust_after", "success_rate",
               "rho", "rho_with_failures", "mean_l2", "seconds", "forward_per_image", "backward_per_image"]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, columns, extrasaction="ignore")
        w.writeheader()
        w.writerow({"attack": "none", "kind": "clean", "norm": result.norm, "eps": 0.0, "examples": result.n,
                    "accuracy": result.clean, "error": 1 - result.clean})
        for r in result.rows:
            w.writerow({**r, "error": 1 - r["accuracy"]})
        for e, a in sorted(result.curve.items()):
            w.writerow({"attack": "worst_case", "kind": "bounded", "norm": result.norm, "eps": e,
                        "examples": result.n, "accuracy": a, "error": 1 - a})
    checks = path.with_name(f"{path.stem}_checks.csv")
    with open(checks, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["check", "passed", "skipped", "detail"])
        for c in result.checks:
            w.writerow([c.name, c.passed, c.skipped, c.detail])
    return [path, checks]


def write_report(result: EvaluationResult, out_dir: Path, *, stem: str = "eval", title: str = "Evaluation",
                 extra: Mapping | None = None, class_names: Sequence[str] | None = None) -> dict[str, Path]:
    """Write ``<stem>.md``, ``.json``, ``.csv``, ``_checks.csv`` and the PNG plots to ``out_dir``: the accuracy
    against ε, ρ_adv (minimal attacks) and the gallery. Returns name → path."""
    from robustlab.evaluation import plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {"markdown": out_dir / f"{stem}.md"}
    atomic_write_text(files["markdown"], markdown(result, title))
    files["csv"], files["csv_checks"] = write_rows_csv(result, out_dir / f"{stem}.csv")
    if result.bounded_rows():
        files["plot_accuracy"] = out_dir / f"{stem}_accuracy_vs_eps.png"
        plots.plot_result(result, files["plot_accuracy"], title=title)
    if result.minimal_rows():
        files["plot_rho"] = out_dir / f"{stem}_rho.png"
        plots.plot_rho(result.minimal_rows(), files["plot_rho"], title=title)
    gallery = out_dir / f"{stem}_gallery.png"
    if plots.result_gallery(result, gallery, class_names=class_names):
        files["plot_gallery"] = gallery
    files["json"] = out_dir / f"{stem}.json"
    payload = {**(extra or {}), **result.to_dict(), "files": {k: str(v) for k, v in files.items()}}
    atomic_write_text(files["json"], strict_dumps(payload, indent=2))
    return files


def comparison_table(models: Mapping[str, Sequence[EvaluationResult]], *,
                     eps_filter: set[float] | None = None) -> str:
    """One line per model: clean accuracy and each (attack, ε) of its evaluations, in percent. A claim suite's
    column is its worst case, named by the suite in capitals (STANDARD); other suites give one column per attack."""
    columns: list[tuple[str, float]] = []
    cells: dict[str, dict[tuple[str, float], float]] = {}
    clean: dict[str, float] = {}
    for model, results in models.items():
        found = cells.setdefault(model, {})
        for r in results:
            clean.setdefault(model, r.clean)
            pairs = [((r.suite, e), a) for e, a in r.curve.items()] if r.claim else \
                [((row["attack"], row["eps"]), row["accuracy"]) for row in r.bounded_rows()]
            for key, acc in pairs:
                if eps_filter is None or key[1] in eps_filter:
                    found[key] = acc
                    if key not in columns:
                        columns.append(key)
    header = "| model | clean | " + " | ".join(f"{a.upper()} ε={e:g}" for a, e in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    for model in models:
        row = [pct(cells[model][c]) if c in cells[model] else "–" for c in columns]
        lines.append(f"| {model} | {pct(clean.get(model))} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
