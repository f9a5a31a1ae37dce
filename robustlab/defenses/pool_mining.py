"""TLA's pool-based mining (Mao et al. 2019) [C]: each step a pool of K clean training images, the negative the
nearest other-class pool item by cosine similarity (semi-hard), or a random other-class pool item (ablation);
and the positives: a different training image of the anchor's class. Registered as the negative miner ``pool``.
"""

from __future__ import annotations

import torch

from robustlab.defenses.triplet_mining import (MiningRequest, NegativeMiner, Negatives, embed, register_miner,
                                               sample_uniform)
from robustlab.errors import ConfigError
from robustlab.modes import model_mode
from robustlab.retrieval import pairwise_distance


def nearest_other_class(anchor: torch.Tensor, pool: torch.Tensor, anchor_labels: torch.Tensor,
                        pool_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TLA's semi-hard negative [C]: per anchor, the pool item of another class with the highest cosine similarity.

    ``anchor`` (N, D) and ``pool`` (K, D) are embeddings; S = cos(anchor_i, pool_j), entries with the anchor's own
    label set to −∞ [R], then argmax over j: the plain cosine as in the reference code, not the |cos| of the
    ``abs_cosine`` distance. Returns ``(index into the pool, valid)``; an anchor whose pool holds only its own
    class gets index 0 and ``valid`` False.
    """
    distance = pairwise_distance(anchor.flatten(1), pool.flatten(1), "cosine")  # 1 − cos: nearest = most similar
    same = anchor_labels[:, None] == pool_labels[None, :]
    distance = distance.masked_fill(same, float("inf"))
    return distance.argmin(dim=1), (~same).any(dim=1)


def draw_pool(train_x: torch.Tensor, train_y: torch.Tensor, size: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` training images and labels drawn uniformly without replacement (all of them if ``size`` ≥ N)."""
    order = torch.randperm(len(train_y), generator=generator, device=train_y.device)[:size]
    return train_x[order], train_y[order]


def sample_positive_indices(train_y: torch.Tensor, y: torch.Tensor, exclude: torch.Tensor | None = None,
                            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """TLA's positives [C]: per label ``y[i]`` a training index of the same class drawn uniformly, other than
    ``exclude[i]`` (the anchor's own training index, so the positive is a *different* image).

    Returns ``(index into the training set, valid)``; a class with no other training image gives ``valid`` False.
    """
    y = y.to(train_y.device)
    mask = train_y[None, :] == y[:, None]
    if exclude is not None:
        mask[torch.arange(len(y), device=mask.device), exclude.to(mask.device)] = False
    return sample_uniform(mask, generator)


POOL_CHOICES = ("nearest", "random")


@register_miner("pool")
class PoolMiner(NegativeMiner):
    """TLA [C]: every call draws a pool of ``pool_size`` (K) clean training images from ``ctx.dataset``.

    ``choice = "nearest"``: the pool and the anchors ``x_adv`` are embedded in eval mode without gradient and each
    anchor takes :func:`nearest_other_class` (semi-hard: the pool size sets the hardness). ``"random"``: a uniform
    other-class pool item (the random-negative ablation). The chosen images are returned as inputs, so
    :class:`TripletLoss` re-forwards them with gradient.
    """

    def __init__(self, pool_size: int = 50, choice: str = "nearest"):
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigError(f"pool_size must be an integer >= 1, got {pool_size!r}")
        if choice not in POOL_CHOICES:
            raise ConfigError(f"pool choice must be one of {list(POOL_CHOICES)}, got {choice!r}")
        self.pool_size = pool_size
        self.choice = choice

    def mine(self, request: MiningRequest) -> Negatives:
        dataset = getattr(request.ctx, "dataset", None)
        if dataset is None:
            raise ValueError("the 'pool' miner draws its pool from the training set and needs ctx.dataset")
        pool_x, pool_y = draw_pool(dataset.train_x, dataset.train_y, self.pool_size)
        device = request.x_adv.device
        pool_x, pool_y, y = pool_x.to(device), pool_y.to(device), request.y.to(device)
        if self.choice == "random":
            index, valid = sample_uniform(pool_y[None, :] != y[:, None], request.generator)
        else:
            with torch.no_grad(), model_mode(request.model, "eval"):
                pool_emb = embed(request.model, pool_x, request.embedding)[0]
                anchor_emb = embed(request.model, request.x_adv, request.embedding)[0]
            index, valid = nearest_other_class(anchor_emb, pool_emb, y, pool_y)
        return Negatives(x=pool_x[index], valid=valid)
