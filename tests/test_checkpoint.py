"""Checkpoints: exact round trip without pickle, atomic writes, corruption detected."""

from __future__ import annotations

import json

import pytest
import torch

from robustlab.checkpoint import (join_tensors, load_checkpoint, resolve_checkpoint, save_checkpoint,
                                  split_tensors)
from robustlab.errors import CheckpointError


def adam_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt


def test_optimizer_state_round_trips_through_json_and_tensors():
    _, opt = adam_state()
    tensors: dict = {}
    encoded = split_tensors(opt.state_dict(), tensors)
    decoded = join_tensors(json.loads(json.dumps(encoded)), tensors)
    original = opt.state_dict()
    assert decoded["param_groups"] == original["param_groups"]  # int param ids and the betas tuple survive
    for pid, state in original["state"].items():
        for key, value in state.items():
            assert torch.equal(decoded["state"][pid][key], value)


def test_save_load_and_keep_newest(tmp_path):
    model, opt = adam_state()
    for epoch in (1, 2, 3):
        save_checkpoint(tmp_path, epoch, model.state_dict(), {"epoch": epoch, "optimizer": opt.state_dict()},
                        {"run": {"name": "t"}}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["epoch-0002", "epoch-0003", "latest"]  # no temporary directories left behind
    weights, state, config = load_checkpoint(tmp_path)
    assert state["epoch"] == 3 and config == {"run": {"name": "t"}}
    assert torch.equal(weights["weight"], model.weight)
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    fresh.load_state_dict(state["optimizer"])


def test_corrupt_or_missing_checkpoint_raises_checkpoint_error(tmp_path):
    model, _ = adam_state()
    ckpt = save_checkpoint(tmp_path, 1, model.state_dict(), {"epoch": 1}, {})
    good = (ckpt / "model.safetensors").read_bytes()
    blob = bytearray(good)
    blob[-1] ^= 0xFF
    (ckpt / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt: model.safetensors"):
        load_checkpoint(tmp_path)
    (ckpt / "model.safetensors").write_bytes(good)
    load_checkpoint(tmp_path)
    (ckpt / "state.json").unlink()
    with pytest.raises(CheckpointError, match="state.json is missing"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        resolve_checkpoint(tmp_path / "checkpoints")


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path):
    model, _ = adam_state()
    save_checkpoint(tmp_path, 1, model.state_dict(), {"epoch": 1}, {})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 2, model.state_dict(), {"epoch": object()}, {})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-0001", "latest"]
    assert load_checkpoint(tmp_path)[1]["epoch"] == 1
