"""Data-parallel training under torchrun (gloo on the CPU) matches one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from robustlab.checkpoint import load_checkpoint

# No dropout, no batch-norm and no random start: the only difference between the runs is who computes what.
CONFIG = """
[run]
epochs = 2
progress = false
seed = 5
[data]
name = "digits"
batch_size = 64
train_subset = 512
test_subset = 100
[model]
name = "mlp_a3t"
[optim]
name = "adam"
lr = 0.002
[defense]
name = "fgsm_at"
lam = 0.5
[defense.attack]
eps = 0.1
"""


def train(tmp_path, name, nproc):
    config = tmp_path / "ddp.toml"
    config.write_text(CONFIG)
    out = tmp_path / name
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "robustlab.cli"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "robustlab.cli"]
    cmd += ["train", "--config", str(config), "--set", f'run.out_dir="{out}"']
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_checkpoint(out), result.stdout


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    (single, _, _), _ = train(tmp_path, "one", 1)
    ((double, state, _), stdout) = train(tmp_path, "two", 2)
    assert "x 2 processes" in stdout and stdout.count("done:") == 1  # rank 0 alone reports
    for key, value in single.items():
        assert torch.allclose(value, double[key], atol=1e-5, rtol=1e-4), key
    assert not torch.equal(single["fc1.weight"], torch.zeros_like(single["fc1.weight"]))
    assert state["epoch"] == 2


def _aux_optimizer_worker(rank, world_size, init_file, results):
    import torch.distributed as dist

    from robustlab.distributed import DistributedEnv, synchronise_optimizer

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    net = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    synchronise_optimizer(opt, DistributedEnv(rank, world_size, rank))
    net.weight.grad = torch.full_like(net.weight, float(rank + 1))  # rank 0: 1, rank 1: 2 -> mean 1.5
    opt.step()
    results[rank] = net.weight.detach().clone()
    dist.destroy_process_group()


def test_auxiliary_optimizers_step_on_the_averaged_gradient(tmp_path):
    """The step pre-hook keeps a defense's own networks (critic, discriminator, θ) identical on every process."""
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_aux_optimizer_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    assert torch.equal(results[0], results[1])
    assert torch.allclose(results[0], torch.full((1, 2), -1.5))
