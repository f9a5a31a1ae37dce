"""The PNGs of an evaluation: accuracy against ε, ρ_adv per minimal attack, and a gallery of adversarial examples.

A quantity measured at several ε is a line from the clean accuracy at ε = 0; one measured at a single ε is a
marker (a line from the clean point would invent the values in between).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from robustlab.evaluation.result import NORM_NAMES, NOT_ATTACKED, EvaluationResult

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(ax, label: str, clean: float, points: list[tuple[float, float]], **style) -> None:
    """A line from (0, clean) through ``points`` when there are several ε, else a single marker (none: nothing)."""
    points = sorted(points)
    if not points:
        return
    if len(points) > 1:
        pts = [(0.0, clean)] + points
        ax.plot([e for e, _ in pts], [100 * a for _, a in pts], label=label, **style)
    else:
        style = {k: v for k, v in style.items() if k not in ("linestyle", "linewidth")}
        ax.plot([points[0][0]], [100 * points[0][1]], linestyle="none", markersize=9, label=label, **style)


def _finish(ax, xlabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: it hides no point


def plot_result(result: EvaluationResult, path: Path, title: str = "Accuracy under attack") -> None:
    """One panel per norm: each attack's accuracy against ε, and the worst case (the robust accuracy) in black."""
    plt = pyplot()
    bounded = result.bounded_rows()
    if result.cascade:
        return _plot_cascade(result, bounded, path, title)
    norms = list(dict.fromkeys(r["norm"] for r in bounded)) or [result.norm]
    fig, axes = plt.subplots(1, len(norms), figsize=(6.4 * len(norms), 4.4), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        rows = [r for r in bounded if r["norm"] == norm]
        for i, attack in enumerate(dict.fromkeys(r["attack"] for r in rows)):
            _series(ax, attack.upper(), result.clean, [(r["eps"], r["accuracy"]) for r in rows
                                                       if r["attack"] == attack],
                    marker=MARKERS[i % len(MARKERS)], color=f"C{i % 10}", linewidth=1.2)
        if norm == result.norm:
            _series(ax, f"worst case ({result.suite} suite)", result.clean, list(result.curve.items()),
                    color="black", marker="*", linewidth=2.4)
        _finish(ax, f"ε ({NORM_NAMES.get(norm, norm)})", f"{title} ({NORM_NAMES.get(norm, norm)})")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _plot_cascade(result: EvaluationResult, rows: Sequence[dict], path: Path, title: str) -> None:
    """A cascade suite (each attack on the examples still robust): the accuracy left after each attack in turn,
    from the clean accuracy to the robust accuracy, one line per ε, each step labelled with its value."""
    plt = pyplot()
    rows = [r for r in rows if "robust_after" in r]  # a stage outside the worst case has no "after" of its own
    by_eps: dict[float, list[dict]] = {}
    for r in rows:
        by_eps.setdefault(r["eps"], []).append(r)
    stages = list(dict.fromkeys(r["attack"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(5.2, 1.1 * len(stages) + 2.8), 4.2))
    xs = list(range(len(stages) + 1))
    for i, (eps, eps_rows) in enumerate(sorted(by_eps.items())):
        after = {r["attack"]: r["robust_after"] for r in eps_rows}
        points = [(0, 100 * result.clean)] + [(x, 100 * after[a]) for x, a in enumerate(stages, 1) if a in after]
        ax.step(*zip(*points), where="post", color=f"C{i % 10}", linewidth=1.6, label=f"ε {eps:g}")
        ax.plot(*zip(*points), linestyle="none", marker="o", color=f"C{i % 10}")
        for x, y in points:
            ax.annotate(f"{y:.1f}", (x, y), xytext=(0, 5), textcoords="offset points", ha="center", fontsize=7)
    ax.set_xticks(xs, ["clean", *(f"after {a.upper()}" for a in stages)], rotation=20, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 108)
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}: the {result.suite} suite, attack by attack ({NORM_NAMES.get(result.norm, result.norm)})",
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_models(models: Mapping[str, Sequence[EvaluationResult]], path: Path, title: str = "Accuracy under attack",
                *, xlabel: str = "ε (L∞)") -> None:
    """Several models in one panel: a colour per model, a line style per attack; a claim suite (STANDARD) is its
    worst case, a marker where it was measured at one ε."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = ["-", "--", ":", "-."]
    for i, (model, results) in enumerate(models.items()):
        j = 0
        for r in results:
            if r.claim:
                _series(ax, f"{model}: {r.suite} suite", r.clean, list(r.curve.items()), color=f"C{i}", marker="*")
                continue
            for attack in dict.fromkeys(row["attack"] for row in r.bounded_rows()):
                pts = [(row["eps"], row["accuracy"]) for row in r.bounded_rows() if row["attack"] == attack]
                _series(ax, f"{model}: {attack.upper()}", r.clean, pts, color=f"C{i}", marker=MARKERS[j % 10],
                        linestyle=styles[j % len(styles)])
                j += 1
    _finish(ax, xlabel, title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_rho(rows: Sequence[dict], path: Path, title: str = "ρ_adv per attack") -> None:
    """Bar chart of ρ_adv per minimal-perturbation attack: over successes and with failures."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.8, 1.3 * len(rows) + 2), 4.0))
    xs = list(range(len(rows)))
    width = 0.38
    ok = [0.0 if math.isnan(r["rho"]) else r["rho"] for r in rows]
    wf = [0.0 if math.isnan(r["rho_with_failures"]) else r["rho_with_failures"] for r in rows]
    ax.bar([i - width / 2 for i in xs], ok, width, label="successes only", color="C0")
    ax.bar([i + width / 2 for i in xs], wf, width, label="with failures", color="C1")
    for i, r in enumerate(rows):
        ax.text(i, max(ok[i], wf[i]), f"{100 * r['success_rate']:.0f}%", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, [r["attack"].upper() for r in rows], rotation=20, fontsize=8)
    ax.set_ylabel("ρ_adv = mean ‖r‖₂ / ‖x‖₂")
    ax.set_title(title + " (label: success rate)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_gallery(clean, labels, clean_pred, adversarial: Mapping[str, tuple], path: Path,
                 class_names: Sequence[str] | None = None, title: str = "") -> None:
    """A grid: one row per example, the clean image then its adversarial version under each attack.

    ``clean`` (k, C, H, W) in [0,1], ``labels``/``clean_pred`` (k,); ``adversarial``: column title → (x_adv (k, ...),
    pred (k,)); a prediction below 0 marks an example the attack did not run on (shown blank). Each image is titled
    with its predicted label, red where it is wrong.
    """
    plt = pyplot()
    k = len(clean)
    cols = [("clean", clean, clean_pred)] + [(name, xa, pr) for name, (xa, pr) in adversarial.items()]
    fig, axes = plt.subplots(k, len(cols), figsize=(1.35 * len(cols), 1.45 * k + 0.5), squeeze=False)
    name_of = (lambda c: class_names[c] if 0 <= c < len(class_names) else "?") if class_names else str
    for j, (name, images, preds) in enumerate(cols):
        for i in range(k):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            pred, truth = int(preds[i]), int(labels[i])
            if i == 0:
                ax.text(0.5, 1.22, name, transform=ax.transAxes, ha="center", va="bottom", fontsize=7,
                        fontweight="bold")
            if j == 0:
                ax.set_ylabel(f"y={name_of(truth)}", fontsize=8)
            if pred == NOT_ATTACKED:  # not attacked by this stage (fooled earlier, or wrong from the start)
                ax.set_facecolor("0.92")
                continue
            img = images[i].detach().cpu().float().clamp(0, 1)
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0).numpy())
            shown = name_of(pred) if pred >= 0 else "NaN"
            ax.set_title(shown, fontsize=8, color="black" if pred == truth else "red", pad=2)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def result_gallery(result: EvaluationResult, path: Path, *, max_attacks: int = 7,
                   class_names: Sequence[str] | None = None) -> bool:
    """:func:`plot_gallery` of the first examples under up to ``max_attacks`` stages at the headline ε (and the
    minimal attacks); False when the result kept no gallery."""
    if result.labels is None or not len(result.labels) or not result.gallery:
        return False
    columns = {}
    for row in result.rows:
        column = result.gallery.get((row["attack"], row["eps"]))
        if column is None or (row["kind"] == "bounded" and row["eps"] != result.eps):
            continue
        title = f"{row['attack'].upper()} ε={row['eps']:g}" if row["eps"] is not None else row["attack"].upper()
        columns[title] = (column.x, column.pred)
        if len(columns) == max_attacks:
            break
    clean = result.gallery_clean
    plot_gallery(clean.x, result.labels, clean.pred, columns, path, class_names=class_names,
                 title="clean vs adversarial (title: predicted label, red = wrong; grey: not attacked by that stage)")
    return True
