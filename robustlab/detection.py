"""Misclassification detection by ROC-AUC (TLA poster, "Effect of TLA on mis-classification detection"; spec
METHODS.md §3).

Positive = a misclassified input (clean or adversarial); a score says how likely that is, higher = more suspicious:

* ``softmax``: 1 − max softmax probability (the baseline detector of Hendrycks & Gimpel 2017);
* ``centroid``: the learned-metric distance (1 − |cos| by default) from h(x) to the centroid of the *predicted*
  class, the centroids being the mean clean training embeddings of each class [R].

The AUC is ``sklearn.metrics.roc_auc_score``; :func:`plot_roc` draws the curves (matplotlib, Agg).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustlab.retrieval import pairwise_distance


def class_centroids(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, D) mean embedding of each class; a class without examples raises."""
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"no embeddings for class(es) {(counts == 0).nonzero().flatten().tolist()}")
    sums = torch.zeros(num_classes, embeddings.shape[1], dtype=embeddings.dtype).index_add_(0, labels, embeddings)
    return sums / counts[:, None].to(embeddings.dtype)


def softmax_scores(logits: torch.Tensor) -> torch.Tensor:
    """1 − max softmax probability per row."""
    return 1.0 - torch.softmax(logits.float(), dim=1).amax(dim=1)


def centroid_scores(embeddings: torch.Tensor, predicted: torch.Tensor, centroids: torch.Tensor,
                    metric: str = "abs_cosine") -> torch.Tensor:
    """Distance from each embedding to the centroid of its predicted class."""
    return pairwise_distance(embeddings, centroids, metric).gather(1, predicted[:, None]).squeeze(1)


@dataclass
class DetectionResult:
    auc: float
    fpr: np.ndarray
    tpr: np.ndarray
    positives: int   # misclassified inputs
    negatives: int   # correctly classified inputs


def detection_auc(scores: torch.Tensor, misclassified: torch.Tensor) -> DetectionResult:
    """ROC-AUC of ``scores`` for telling misclassified (positive) from correct inputs, with the ROC curve."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y_true = misclassified.bool().cpu().numpy()
    if y_true.all() or not y_true.any():
        raise ValueError("detection AUC needs both misclassified and correctly classified inputs")
    s = scores.detach().double().cpu().numpy()
    fpr, tpr, _ = roc_curve(y_true, s)
    return DetectionResult(float(roc_auc_score(y_true, s)), fpr, tpr, int(y_true.sum()), int((~y_true).sum()))


def plot_roc(curves: Mapping[str, DetectionResult], path: Path, title: str = "Misclassification detection", *,
             styles: Mapping[str, dict] | None = None) -> None:
    """One ROC curve per entry (label shows the AUC; ``styles[name]``: extra matplotlib line options), the chance
    diagonal, saved as a small PNG."""
    from robustlab.evaluation.plots import pyplot as _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.2), dpi=90)
    for name, r in curves.items():
        ax.plot(r.fpr, r.tpr, label=f"{name} (AUC {100 * r.auc:.1f})", linewidth=1.3, **(styles or {}).get(name, {}))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate (correct flagged)")
    ax.set_ylabel("true positive rate (misclassified flagged)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
