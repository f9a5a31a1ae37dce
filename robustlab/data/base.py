"""The dataset contract: in-memory float tensors in [0,1], NCHW, with integer labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageDataset:
    """A train/test pair of image tensors and what a model needs to know about them.

    ``train_x``/``test_x`` are float32 in [0,1] with shape (N, C, H, W); ``train_y``/``test_y`` are int64.
    ``mean``/``std`` are the per-channel statistics a model's normalisation layer should use.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def in_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    def with_classes(self, classes: list[int]) -> "ImageDataset":
        """Only the examples of ``classes``, relabelled 0, 1, ... in the order given (a smaller task from the same
        images, e.g. digits 0–3 as a 4-class problem)."""
        if not classes:
            return self
        if len(set(classes)) != len(classes) or any(not 0 <= c < self.num_classes for c in classes):
            raise ValueError(f"classes must be distinct labels in [0, {self.num_classes}), got {classes}")
        lookup = torch.full((self.num_classes,), -1, dtype=torch.long)
        lookup[torch.tensor(classes)] = torch.arange(len(classes))
        keep_tr, keep_te = lookup[self.train_y] >= 0, lookup[self.test_y] >= 0
        return ImageDataset(f"{self.name}[{','.join(map(str, classes))}]", self.train_x[keep_tr],
                            lookup[self.train_y[keep_tr]], self.test_x[keep_te], lookup[self.test_y[keep_te]],
                            len(classes), self.mean, self.std)

    def subset(self, train: int | None = None, test: int | None = None) -> "ImageDataset":
        """The first ``train``/``test`` examples (``None`` or 0 keeps all). Loaders shuffle with a fixed seed first."""
        tr = slice(None) if not train else slice(0, train)
        te = slice(None) if not test else slice(0, test)
        return ImageDataset(self.name, self.train_x[tr], self.train_y[tr], self.test_x[te], self.test_y[te],
                            self.num_classes, self.mean, self.std)
