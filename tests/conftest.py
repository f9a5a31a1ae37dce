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


@pytest.fixture(scope="session")
def robust_digits_cnn(digits):
    """A small CNN adversarially trained (PGD-5, ε 0.1) on the 8×8 digits for a few seconds: partly robust at ε 0.1,
    the model the AutoAttack-component cross-checks compare on (a non-robust model makes every attack agree at 0%)."""
    from robustlab.attacks import PGD

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(32 * 16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    attack = PGD(0.1, steps=5, step_size=0.03)
    for _ in range(15):
        perm = torch.randperm(len(digits.train_x))
        for start in range(0, len(perm), 64):
            idx = perm[start:start + 64]
            x, y = digits.train_x[idx], digits.train_y[idx]
            x_adv = attack(net, x, y)
            net.train()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x_adv), y).backward()
            opt.step()
    return net.eval()
