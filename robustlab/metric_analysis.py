"""The learned metric under attack (TLA poster; spec METHODS.md §3): misclassification detection and retrieval.

:func:`analyse_metric` takes clean test inputs and their adversarial versions and reports, on clean ∪ adversarial:

* detection ROC-AUC with two scores (:mod:`robustlab.detection`): 1 − max softmax, and the distance of h(x) to the
  clean training centroid of the predicted class in the learned metric (1 − |cos| on ``model.features``);
* k-nearest-neighbour retrieval precision among the clean training embeddings (:mod:`robustlab.retrieval`) for the
  clean and for the adversarial queries.

Used by ``robustlab eval --metric`` and ``benchmarks/tla.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from robustlab.detection import (DetectionResult, centroid_scores, class_centroids, detection_auc,
                                  softmax_scores)
from robustlab.modes import model_mode
from robustlab.retrieval import feature_embeddings, knn_retrieval_precision


@dataclass
class MetricAnalysis:
    """Fractions in [0, 1]; ``curves`` holds the two ROC curves (for :func:`robustlab.detection.plot_roc`)."""

    auc_softmax: float
    auc_centroid: float
    knn_clean: float
    knn_adv: float
    k: int
    curves: dict[str, DetectionResult] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, float]:
        return {"auc_softmax": self.auc_softmax, "auc_centroid": self.auc_centroid, "knn_clean": self.knn_clean,
                "knn_adv": self.knn_adv, "k": self.k}


@torch.no_grad()
def analyse_metric(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                   train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, *, k: int = 10,
                   batch_size: int = 500) -> MetricAnalysis:
    """Detection AUCs on clean ∪ adversarial inputs and kNN precision of clean / adversarial queries."""
    if x.shape != x_adv.shape or len(x) != len(y):
        raise ValueError("x, x_adv and y must describe the same examples")
    device = next(model.parameters()).device
    inputs, labels = torch.cat([x, x_adv]), torch.cat([y, y])
    with model_mode(model, "eval"):
        logits = torch.cat([model(inputs[i:i + batch_size].to(device)).float().cpu()
                            for i in range(0, len(inputs), batch_size)])
    predicted = logits.argmax(1)
    wrong = predicted.ne(labels.cpu())
    emb = feature_embeddings(model, inputs, batch_size=batch_size)
    train_emb = feature_embeddings(model, train_x, batch_size=batch_size)
    centroids = class_centroids(train_emb, train_y.cpu(), num_classes)
    curves = {"softmax": detection_auc(softmax_scores(logits), wrong),
              "centroid": detection_auc(centroid_scores(emb, predicted, centroids), wrong)}
    n = len(x)
    return MetricAnalysis(curves["softmax"].auc, curves["centroid"].auc,
                          knn_retrieval_precision(emb[:n], y.cpu(), train_emb, train_y.cpu(), k=k),
                          knn_retrieval_precision(emb[n:], y.cpu(), train_emb, train_y.cpu(), k=k), k, curves)
