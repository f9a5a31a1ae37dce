"""Shared fixtures: small real datasets, tiny trained models, and a scratch data root that never downloads."""

from __future__ import annotations

import pytest
import torch

# One intra-op thread: the test models are tiny, and on a busy 2-core machine two threads per process thrash.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_data_root(tmp_path_factory, monkeypatch):
    # File-based datasets look under $ROBUSTLAB_DATA; an empty scratch root guarantees no test sees a user cache.
    monkeypatch.setenv("ROBUSTLAB_DATA", str(tmp_path_factory.mktemp("data_root")))


@pytest.fixture(scope="session")
def digits():
    from robustlab.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_digits_mlp(digits):
    """An MLP trained for a few seconds on the 8×8 digits: ~95% clean test accuracy, not robust."""
    from robustlab.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp_a3t", in_shape=digits.in_shape, num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(30):
        for start in range(0, len(digits.train_x), 128):
            x, y = digits.train_x[start:start + 128], digits.train_y[start:start + 128]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()
