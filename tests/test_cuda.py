"""The GPU path: AMP (bf16; fp16 with the gradient scaler), data kept on the device, channels_last, a one-process
NCCL run and the standard suite on CUDA. Marked ``cuda`` and skipped without a GPU (``benchmarks/gpu_check.sh`` runs
them with the speed benchmarks where one is available)."""

from __future__ import annotations

import copy
import socket

import pytest
import torch

from robustlab.engine import Trainer
from robustlab.experiment import config_from_dict

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def tiny(tmp_path, **run):
    return config_from_dict({
        "run": {"seed": 0, "epochs": 4, "progress": False, "device": "cuda", "out_dir": str(tmp_path / "run"), **run},
        "data": {"name": "digits", "batch_size": 128, "train_subset": 600, "test_subset": 200},
        "model": {"name": "resnet_v1", "depth": 8, "width": 0.25},  # convolutions, batch norm, 8×8 inputs
        "optim": {"name": "adam", "lr": 0.01},
        "defense": {"name": "pgd_at", "warmup_epochs": 1, "attack": {"eps": 0.1, "steps": 3}},
        "eval": {"every": 4, "every_suite": "quick", "subset": 100, "pgd_steps": 5, "eps": [0.1]},
    })


@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_trains_and_fp16_uses_the_scaler(tmp_path, amp, dtype):
    trainer = Trainer(tiny(tmp_path, amp=amp), log=lambda _: None)
    assert trainer.amp_dtype == dtype
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    history = trainer.fit().history
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history)
    assert history[-1]["test_acc"] > 0.5  # chance: 0.1
    if amp == "fp16":
        scale = trainer.scaler.get_scale()
        resumed = Trainer(tiny(tmp_path, amp=amp, epochs=5), resume=True, log=lambda _: None)
        assert resumed.scaler.get_scale() == scale  # the scaler's state comes back with the checkpoint


def test_the_dataset_lives_on_the_gpu_and_the_model_in_channels_last(tmp_path):
    config = tiny(tmp_path, channels_last=True)
    config.data.on_device = "always"
    trainer = Trainer(config, log=lambda _: None)
    assert trainer.dataset.train_x.is_cuda and trainer.dataset.test_y.is_cuda
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert trainer.fit().history[-1]["test_acc"] > 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_one_process_nccl_group_averages_gradients_on_the_gpu(monkeypatch):
    """The NCCL all-reduce the engine runs before every optimiser step, in a group of one: the average is the
    gradient itself, and the flat bucket is copied back into every parameter's gradient."""
    import torch.distributed as dist

    from robustlab.distributed import average_gradients

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        assert dist.get_backend() == "nccl"
        layer = torch.nn.Linear(5, 3).cuda()
        layer(torch.randn(4, 5, device="cuda")).square().sum().backward()
        before = [p.grad.clone() for p in layer.parameters()]
        average_gradients(list(layer.parameters()), world_size=1)
        assert all(torch.equal(a, p.grad) for a, p in zip(before, layer.parameters()))
        total = torch.ones(3, device="cuda")
        dist.all_reduce(total)
        assert total.tolist() == [1.0, 1.0, 1.0]
    finally:
        dist.destroy_process_group()


def test_the_standard_suite_runs_on_the_gpu_and_agrees_with_the_cpu(trained_digits_mlp, digits):
    import robustlab

    x, y = digits.test_x[:200], digits.test_y[:200]
    cpu = robustlab.benchmark(trained_digits_mlp, x, y, eps=0.05, square_queries=500, device="cpu")
    on_gpu = copy.deepcopy(trained_digits_mlp).cuda()  # the session fixture stays on the CPU
    gpu = robustlab.benchmark(on_gpu, x, y, eps=0.05, square_queries=500, device="cuda")
    assert gpu.clean == pytest.approx(cpu.clean)
    assert gpu.robust_accuracy == pytest.approx(cpu.robust_accuracy, abs=0.02)  # batched APGD-T on the GPU
    assert gpu.robust_accuracy < gpu.clean
