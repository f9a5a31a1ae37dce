"""Nearest-neighbour retrieval in a model's learned metric (TLA poster, "Nearest Neighbors Retrieval Using Learned
Metric"; spec METHODS.md §3).

The learned metric is the triplet distance on the penultimate representation h = ``model.features``: by default
1 − |cos| (TLA's D). Queries (clean test images, or their adversarial versions) are compared with the clean
training images; precision@k is the fraction of a query's k nearest training images that share the query's label,
averaged over the queries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.modes import model_mode


@torch.no_grad()
def feature_embeddings(model: nn.Module, x: torch.Tensor, *, batch_size: int = 500,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """h(x) = ``model.features(x)`` flattened, in eval mode without gradient, in batches; returned on the CPU."""
    device = device if device is not None else next(model.parameters()).device
    out = []
    with model_mode(model, "eval"):
        for start in range(0, len(x), batch_size):
            out.append(model.features(x[start:start + batch_size].to(device)).flatten(1).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def pairwise_distance(queries: torch.Tensor, references: torch.Tensor, metric: str = "abs_cosine") -> torch.Tensor:
    """(Q, R) distances: ``abs_cosine`` 1 − |cos|, ``cosine`` 1 − cos or ``l2`` (Euclidean)."""
    if metric == "l2":
        return torch.cdist(queries, references)
    cos = F.normalize(queries, dim=1, eps=1e-8) @ F.normalize(references, dim=1, eps=1e-8).T
    if metric == "abs_cosine":
        return 1.0 - cos.abs()
    if metric == "cosine":
        return 1.0 - cos
    raise ValueError(f"metric must be 'abs_cosine', 'cosine' or 'l2', got {metric!r}")


def knn_retrieval_precision(queries: torch.Tensor, query_labels: torch.Tensor, references: torch.Tensor,
                            reference_labels: torch.Tensor, *, k: int = 10, metric: str = "abs_cosine",
                            chunk: int = 1000) -> float:
    """Mean over queries of |{the k nearest references with the query's label}| / k (ties: lower index first)."""
    if not 1 <= k <= len(references):
        raise ValueError(f"k must be in [1, {len(references)}], got {k}")
    if len(queries) != len(query_labels) or len(references) != len(reference_labels):
        raise ValueError("embeddings and labels must have the same length")
    hits = 0.0
    for start in range(0, len(queries), chunk):
        d = pairwise_distance(queries[start:start + chunk], references, metric)
        nearest = torch.sort(d, dim=1, stable=True).indices[:, :k]
        hits += reference_labels[nearest].eq(query_labels[start:start + chunk, None]).float().sum().item()
    return hits / (len(queries) * k)
