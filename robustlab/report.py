"""Tables (markdown, CSV) and plots (PNG) from evaluation results."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

from robustlab.evaluate import CurvePoint

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


def plot_accuracy_vs_eps(results: Results, path: Path, title: str = "Accuracy under attack") -> None:
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
    ax.set_xlabel("ε (L∞)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
