"""Tables (markdown, CSV) and plots (PNG) from evaluation results.

Three kinds of input: ``Results`` (model name → clean accuracy and curve points: the demo's comparison of models),
a :class:`~robustlab.standard.StandardResult` (the AutoAttack-strength ``standard``/``rand`` suites: the headline
robust accuracy) and a :class:`~robustlab.suite.SuiteResult` (the ``fast``/``quick`` suites: every attack of the
library, ρ_adv). :func:`write_standard_report` and :func:`write_suite_report` write what ``robustlab eval``
produces.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from robustlab.evaluate import CurvePoint

if TYPE_CHECKING:  # pragma: no cover
    from robustlab.checks import Check
    from robustlab.evaluate import MinimalSummary
    from robustlab.standard import StandardResult
    from robustlab.suite import SuiteResult

Results = Mapping[str, tuple[float, list[CurvePoint]]]  # model name -> (clean accuracy, curve points)


def _columns(results: Results) -> list[tuple[str, float]]:
    cols: list[tuple[str, float]] = []
    for _, points in results.values():
        for p in points:
            if p.eps > 0 and (p.attack, p.eps) not in cols:
                cols.append((p.attack, p.eps))
    return cols


def markdown_table(results: Results, *, eps_filter: set[float] | None = None) -> str:
    """One row per model: clean accuracy and the accuracy under each (attack, ε), in percent."""
    cols = [c for c in _columns(results) if eps_filter is None or c[1] in eps_filter]
    header = "| model | clean | " + " | ".join(f"{a.upper()} ε={e:g}" for a, e in cols) + " |"
    lines = [header, "|" + "---|" * (len(cols) + 2)]
    for model, (clean, points) in results.items():
        lookup = {(p.attack, p.eps): p.accuracy for p in points}
        cells = [f"{100 * lookup[c]:.1f}" if c in lookup else "–" for c in cols]
        lines.append(f"| {model} | {100 * clean:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(results: Results, path: Path) -> None:
    """Long format: model, attack, eps, accuracy, error (clean accuracy as attack ``none``, ε 0)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "attack", "eps", "accuracy", "error"])
        for model, (clean, points) in results.items():
            writer.writerow([model, "none", 0.0, f"{clean:.6f}", f"{1 - clean:.6f}"])
            for p in points:
                writer.writerow([model, p.attack, p.eps, f"{p.accuracy:.6f}", f"{p.error:.6f}"])


def plot_accuracy_vs_eps(results: Results, path: Path, title: str = "Accuracy under attack", *,
                         xlabel: str = "ε (L∞)") -> None:
    """One line per (model, attack): accuracy in percent against ε, starting from the clean accuracy at ε = 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v"]
    for i, (model, (clean, points)) in enumerate(results.items()):
        attacks = list(dict.fromkeys(p.attack for p in points))
        for j, attack in enumerate(attacks):
            pts = sorted((p.eps, p.accuracy) for p in points if p.attack == attack)
            if not pts or pts[0][0] > 0:
                pts = [(0.0, clean)] + pts
            ax.plot([e for e, _ in pts], [100 * a for _, a in pts], linestyle=styles[j % len(styles)],
                    marker=markers[i % len(markers)], color=f"C{i}", label=f"{model} / {attack.upper()}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- one model under an attack suite ---------------------------------------------------------------------------

NORM_NAMES = {"linf": "L∞", "l2": "L2", "l0": "L0"}


def _pair(acc: float) -> str:
    return "–" if acc is None or math.isnan(acc) else f"{100 * acc:.1f} ({100 * (1 - acc):.1f})"


def _num(v: float, fmt: str = ".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def bounded_tables(result: "SuiteResult") -> str:
    """One markdown table per norm: a row per attack, a column per ε, cells "accuracy % (error %)"."""
    out = []
    for norm in dict.fromkeys(p.norm for p in result.points):
        points = [p for p in result.points if p.norm == norm]
        eps = sorted({p.eps for p in points})
        rows: dict[str, dict[float, CurvePoint]] = {}
        for p in points:
            rows.setdefault(p.attack, {})[p.eps] = p
        if norm == "linf":
            for row in result.ensemble:
                rows.setdefault("worst_case", {})[row["eps"]] = CurvePoint("worst_case", row["eps"], row["accuracy"],
                                                                           n=row["n"])
        header = "| attack | examples | " + " | ".join(f"ε={e:g}" for e in eps) + " | settings |"
        lines = [f"**{NORM_NAMES.get(norm, norm)} attacks: accuracy % (error %)**", "", header,
                 "|" + "---|" * (len(eps) + 3)]
        for name, by_eps in rows.items():
            n = max(p.n for p in by_eps.values())
            if name == "worst_case":
                members = sorted({a for r in result.ensemble for a in r["attacks"]}, key=list(result.attacks).index)
                settings = "worst case per example over " + ", ".join(m.upper() for m in members)
            else:
                settings = result.attacks.get(name, {}).get("settings", "")
            cells = [_pair(by_eps[e].accuracy) if e in by_eps else "–" for e in eps]
            label = "**worst case**" if name == "worst_case" else name.upper()
            lines.append(f"| {label} | {n} | " + " | ".join(cells) + f" | {_cell(settings)} |")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def rho_table(minimal: Sequence["MinimalSummary"], attacks: Mapping[str, dict] | None = None) -> str:
    """Minimal-perturbation attacks: accuracy, success rate, ρ_adv over successes and with failures."""
    lines = ["| attack | examples | accuracy % (error %) | success % | ρ_adv | ρ_adv with failures | mean ‖r‖₂ | "
             "settings |", "|---|---|---|---|---|---|---|---|"]
    for m in minimal:
        settings = (attacks or {}).get(m.attack, {}).get("settings", "")
        lines.append(f"| {m.attack.upper()} | {m.n} | {_pair(m.accuracy)} | {100 * m.success_rate:.1f} | "
                     f"{_num(m.rho)} | {_num(m.rho_with_failures)} | {_num(m.mean_l2)} | {_cell(settings)} |")
    return "\n".join(lines) + "\n"


def checks_table(checks: Sequence["Check"]) -> str:
    lines = ["| check | result | detail |", "|---|---|---|"]
    for c in checks:
        status = {"pass": "pass", "skipped": "skipped", "FAIL": "**FAIL**"}[c.status]
        lines.append(f"| {c.name} | {status} | {_cell(c.detail)} |")
    return "\n".join(lines) + "\n"


NOT_A_CLAIM = ("**The {suite} suite is not a robustness claim**: its attacks run with cut budgets and overstate "
               "robust accuracy; the headline number comes from `--suite standard` (AutoAttack's attacks and "
               "settings).")


def standard_markdown(result: "StandardResult", title: str = "Evaluation") -> str:
    """The report of an AutoAttack-strength suite: the headline, the attack stages and the masking checks."""
    from robustlab.checks import summary_line

    norm = "L∞" if result.norm == "linf" else "L2"
    draws = f", each final point predicted {result.settings.final_draws} times" if result.suite == "rand" else ""
    lines = [f"# {title}", "",
             f"Suite `{result.suite}` (AutoAttack-strength{draws}) at {norm} ε = {result.eps:g} on {result.n} test "
             f"examples: clean accuracy {_pair(result.clean)}, **robust accuracy {_pair(result.robust_accuracy)}**"
             + (" — randomised model: EOT attacks" if result.randomised else "")
             + f"; {result.seconds:.0f} s, {result.passes.get('forward_per_image', 0):.0f} forward and "
               f"{result.passes.get('backward_per_image', 0):.0f} backward passes per image.", "",
             "| attack | settings | attacked | fooled | robust accuracy after it (%) | seconds | forward / image | "
             "backward / image |", "|---|---|---|---|---|---|---|---|"]
    for r in result.rows:
        lines.append(f"| {r['attack']} | {_cell(r['settings'])} | {r['attacked']} | {r['fooled']} | "
                     f"{100 * r['robust_after']:.1f} | {r['seconds']:.1f} | {r['forward_per_image']:.0f} | "
                     f"{r['backward_per_image']:.0f} |")
    lines += ["", "Each attack runs only on the examples still robust after the ones above it (the worst case per "
              "example).", "", "**Masking checks**", "", checks_table(result.checks), summary_line(result.checks), ""]
    return "\n".join(lines)


def write_standard_report(result: "StandardResult", out_dir: Path, *, stem: str = "eval_standard",
                          title: str = "Evaluation", extra: Mapping | None = None) -> dict[str, Path]:
    """Write ``<stem>.md`` and ``<stem>.json`` (with the per-example outcomes) to ``out_dir``."""
    import json

    from robustlab.checkpoint import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out_dir / f"{stem}.md", "json": out_dir / f"{stem}.json"}
    atomic_write_text(files["markdown"], standard_markdown(result, title))
    payload = {**(extra or {}), **result.to_dict(), "files": {k: str(v) for k, v in files.items()}}
    atomic_write_text(files["json"], json.dumps(json_safe(payload), indent=2, allow_nan=False))
    return files


def suite_markdown(result: "SuiteResult", title: str = "Evaluation") -> str:
    """The whole report of a suite: accuracy tables, the ρ table and the masking checks."""
    from robustlab.checks import summary_line

    parts = [f"# {title}", "", NOT_A_CLAIM.format(suite=result.suite), "",
             f"Suite `{result.suite}`: clean accuracy {_pair(result.clean)} on {result.n} test examples"
             + (" — **randomised model**: predictions differ between passes; EOT-PGD added" if result.randomised
                else "") + f"; {result.seconds:.0f} s.", ""]
    if result.points:
        parts.append(bounded_tables(result))
    if result.minimal:
        parts += ["**Minimal-perturbation attacks: ρ_adv = mean ‖r‖₂/‖x‖₂** (with failures: a failed example "
                  "counts with its last iterate)", "", rho_table(result.minimal, result.attacks)]
    parts += ["**Masking checks**", "", checks_table(result.checks), summary_line(result.checks), ""]
    return "\n".join(parts)


def write_suite_csv(result: "SuiteResult", path: Path) -> list[Path]:
    """``path`` (long format: attack, norm, eps, examples, accuracy, error; clean as ``none``, worst case as
    ``worst_case``), ``<stem>_rho.csv`` and ``<stem>_checks.csv`` beside it. Returns the files written."""
    path = Path(path)
    written = [path]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["attack", "norm", "eps", "examples", "accuracy", "error"])
        w.writerow(["none", "", 0.0, result.n, f"{result.clean:.6f}", f"{1 - result.clean:.6f}"])
        for p in result.points:
            w.writerow([p.attack, p.norm, p.eps, p.n, f"{p.accuracy:.6f}", f"{p.error:.6f}"])
        for row in result.ensemble:
            w.writerow(["worst_case", row["norm"], row["eps"], row["n"], f"{row['accuracy']:.6f}",
                        f"{row['error']:.6f}"])
    if result.minimal:
        rho = path.with_name(f"{path.stem}_rho.csv")
        with open(rho, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["attack", "examples", "accuracy", "error", "success_rate", "rho", "rho_with_failures",
                        "mean_l2", "seconds"])
            for m in result.minimal:
                w.writerow([m.attack, m.n, f"{m.accuracy:.6f}", f"{m.error:.6f}", f"{m.success_rate:.6f}",
                            f"{m.rho:.6f}", f"{m.rho_with_failures:.6f}", f"{m.mean_l2:.6f}", f"{m.seconds:.3f}"])
        written.append(rho)
    checks = path.with_name(f"{path.stem}_checks.csv")
    with open(checks, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["check", "passed", "skipped", "detail"])
        for c in result.checks:
            w.writerow([c.name, c.passed, c.skipped, c.detail])
    written.append(checks)
    return written


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_suite_curves(result: "SuiteResult", path: Path, title: str = "Accuracy under attack") -> None:
    """Accuracy against ε, one line per attack (worst case in black), one panel per norm."""
    plt = _pyplot()
    norms = list(dict.fromkeys(p.norm for p in result.points)) or ["linf"]
    fig, axes = plt.subplots(1, len(norms), figsize=(6.4 * len(norms), 4.4), squeeze=False)
    markers = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
    for ax, norm in zip(axes[0], norms):
        attacks = list(dict.fromkeys(p.attack for p in result.points if p.norm == norm))
        for i, attack in enumerate(attacks):
            pts = [(0.0, result.clean)] + sorted((p.eps, p.accuracy) for p in result.points
                                                 if p.norm == norm and p.attack == attack)
            ax.plot([e for e, _ in pts], [100 * a for _, a in pts], marker=markers[i % len(markers)],
                    color=f"C{i % 10}", label=attack.upper(), linewidth=1.2)
        if norm == "linf" and result.ensemble:
            pts = [(0.0, result.clean)] + sorted((r["eps"], r["accuracy"]) for r in result.ensemble)
            ax.plot([e for e, _ in pts], [100 * a for _, a in pts], color="black", linewidth=2.4,
                    label="worst case")
        ax.set_xlabel(f"ε ({NORM_NAMES.get(norm, norm)})")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.set_title(f"{title} ({NORM_NAMES.get(norm, norm)})")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_rho(minimal: Sequence["MinimalSummary"], path: Path, title: str = "ρ_adv per attack") -> None:
    """Bar chart of ρ_adv per minimal-perturbation attack: over successes and with failures."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.8, 1.3 * len(minimal) + 2), 4.0))
    xs = list(range(len(minimal)))
    width = 0.38
    ok = [0.0 if math.isnan(m.rho) else m.rho for m in minimal]
    wf = [0.0 if math.isnan(m.rho_with_failures) else m.rho_with_failures for m in minimal]
    ax.bar([i - width / 2 for i in xs], ok, width, label="successes only", color="C0")
    ax.bar([i + width / 2 for i in xs], wf, width, label="with failures", color="C1")
    for i, m in enumerate(minimal):
        ax.text(i, max(ok[i], wf[i]), f"{100 * m.success_rate:.0f}%", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, [m.attack.upper() for m in minimal], rotation=20, fontsize=8)
    ax.set_ylabel("ρ_adv = mean ‖r‖₂ / ‖x‖₂")
    ax.set_title(title + " (label: success rate)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


GALLERY_ORDER = ("fgsm", "pgd", "apgd_dlr_t", "pgd_l2", "eot_pgd", "transfer", "cw_l2", "deepfool", "critic_hc",
                 "few_pixel_1", "few_pixel_3")


def plot_gallery(clean, labels, clean_pred, adversarial: Mapping[str, tuple], path: Path,
                 class_names: Sequence[str] | None = None, title: str = "") -> None:
    """A grid: one row per example, the clean image then its adversarial version under each attack.

    ``clean`` (k, C, H, W) in [0,1], ``labels``/``clean_pred`` (k,); ``adversarial``: column title → (x_adv (k, ...),
    pred (k,)). Each image is titled with its predicted label, red where it is wrong.
    """
    plt = _pyplot()
    k = len(clean)
    cols = [("clean", clean, clean_pred)] + [(name, xa, pr) for name, (xa, pr) in adversarial.items()]
    fig, axes = plt.subplots(k, len(cols), figsize=(1.35 * len(cols), 1.45 * k + 0.5), squeeze=False)
    name_of = (lambda c: class_names[c]) if class_names else str
    for j, (name, images, preds) in enumerate(cols):
        for i in range(k):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= len(images):
                ax.axis("off")
                continue
            img = images[i].detach().cpu().float().clamp(0, 1)
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0).numpy())
            pred, truth = int(preds[i]), int(labels[i])
            ax.set_title(f"{name_of(pred)}", fontsize=8, color="black" if pred == truth else "red", pad=2)
            if i == 0:
                ax.text(0.5, 1.22, name, transform=ax.transAxes, ha="center", va="bottom", fontsize=7,
                        fontweight="bold")
            if j == 0:
                ax.set_ylabel(f"y={name_of(truth)}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def suite_gallery(result: "SuiteResult", path: Path, *, max_attacks: int = 7,
                  class_names: Sequence[str] | None = None) -> bool:
    """:func:`plot_gallery` of a suite's first examples under up to ``max_attacks`` attacks; False if none kept."""
    if result.clean_outcome is None or result.labels is None or not len(result.labels) or not result.gallery:
        return False
    max_eps = {}
    for p in result.points:
        max_eps[p.attack] = max(p.eps, max_eps.get(p.attack, 0.0))
    names = [n for n in GALLERY_ORDER if n in result.gallery]
    names += [n for n in result.gallery if n not in names]
    columns = {}
    for name in names[:max_attacks]:
        out = result.gallery[name]
        title = f"{name.upper()} ε={max_eps[name]:g}" if name in max_eps else name.upper()
        columns[title] = (out.x_adv, out.pred)
    plot_gallery(result.clean_outcome.x_adv, result.labels, result.clean_outcome.pred, columns, path,
                 class_names=class_names, title="clean vs adversarial (title: predicted label, red = wrong)")
    return True


def write_suite_report(result: "SuiteResult", out_dir: Path, *, stem: str = "eval", title: str = "Evaluation",
                       extra: Mapping | None = None) -> dict[str, Path]:
    """Write ``<stem>.json``, ``.md``, ``.csv`` (+ ``_rho.csv``, ``_checks.csv``) and the PNG plots
    (``_accuracy_vs_eps.png``, ``_rho.png``, ``_gallery.png``) to ``out_dir``. Returns name → path."""
    import json

    from robustlab.checkpoint import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files["markdown"] = out_dir / f"{stem}.md"
    atomic_write_text(files["markdown"], suite_markdown(result, title))
    for p in write_suite_csv(result, out_dir / f"{stem}.csv"):
        files["csv" + p.stem[len(stem):]] = p  # csv, csv_rho, csv_checks
    if result.points:
        files["plot_accuracy"] = out_dir / f"{stem}_accuracy_vs_eps.png"
        plot_suite_curves(result, files["plot_accuracy"], title=title)
    if result.minimal:
        files["plot_rho"] = out_dir / f"{stem}_rho.png"
        plot_rho(result.minimal, files["plot_rho"], title=title)
    gallery = out_dir / f"{stem}_gallery.png"
    if suite_gallery(result, gallery):
        files["plot_gallery"] = gallery
    files["json"] = out_dir / f"{stem}.json"
    payload = {**(extra or {}), **result.to_dict(), "files": {k: str(v) for k, v in files.items()}}
    atomic_write_text(files["json"], json.dumps(json_safe(payload), indent=2, allow_nan=False))
    return files


def json_safe(obj):
    """``obj`` with every NaN/inf float replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
