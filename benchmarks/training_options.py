"""Speed of the engine's performance options on a PGD-7 adversarial-training epoch: channels_last, torch.compile,
mixed precision (``run.channels_last``, ``run.compile``, ``run.amp``).

Each variant is a real robustlab training run (the engine, the ``pgd_at`` defense: ε 8/255, 7 steps, batch 128, SGD)
of two epochs on ``--images`` training images; the second epoch's training time is the steady state (the first
includes torch.compile's compilation, reported separately). On a CPU the times are the process's CPU seconds
(``train_cpu_time_s``), on a GPU wall-clock seconds. Images/s are scaled to the headline figure: the time
of one epoch of the 50,000 CIFAR-10 training images.

Models: ResNet-V1(20) on CIFAR-10-shaped inputs (3×32×32, 10 classes) and LeNet-5 on Fashion-MNIST. The speed of a
training step does not depend on the pixel values, so where the CIFAR-10 files are not on disk the run uses random
tensors of CIFAR-10's shape (registered as the dataset ``cifar10_shaped_noise``; the report says which was used);
with the files in ``$ROBUSTLAB_DATA/cifar10`` (``robustlab`` downloads them with ``data.download = true``) it uses
the real images.

    nice -n 10 .venv/bin/python benchmarks/training_options.py [--device cuda] [--images 1280]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robustlab.data import ImageDataset, load_dataset, register_dataset  # noqa: E402
from robustlab.engine import Trainer  # noqa: E402
from robustlab.errors import DatasetError  # noqa: E402
from robustlab.experiment import config_from_dict  # noqa: E402

CIFAR_TRAIN = 50_000
NOISE = "cifar10_shaped_noise"


def noise_cifar(root=None, download=False) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    n = 2560
    x = torch.rand(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return ImageDataset(NOISE, x, y, x[:256], y[:256], 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def cifar_dataset_name() -> str:
    """``cifar10`` when its files are on disk (no download here), else the noise stand-in of the same shape."""
    try:
        load_dataset("cifar10")
        return "cifar10"
    except (DatasetError, FileNotFoundError, OSError):
        register_dataset(NOISE, noise_cifar, replace=True)
        return NOISE


@dataclass
class Variant:
    label: str
    channels_last: bool = False
    compile: bool = False
    amp: str = "off"


def variants_for(device: str, conv_net: bool) -> list[Variant]:
    out = [Variant("default (fp32)")]
    if conv_net:
        out.append(Variant("channels_last", channels_last=True))
    out.append(Variant("torch.compile", compile=True))
    if device.startswith("cuda"):
        out += [Variant("bf16 autocast", amp="bf16"), Variant("bf16 + channels_last", channels_last=True, amp="bf16")]
    return out


def epoch_times(model: str, dataset: str, images: int, variant: Variant, device: str, out_dir: Path
                ) -> tuple[float, float, float]:
    """(first-epoch wall-clock s, first-epoch s, steady s) of a 2-epoch PGD-7 AT run.

    torch.compile gets an empty cache directory, so its first epoch pays the cold compilation a user's first run
    pays; that epoch is reported in wall-clock time, because compilation runs partly in worker processes.
    """
    eps = 8 / 255 if dataset != "fashion_mnist" else 0.1
    config = config_from_dict({
        "run": {"seed": 0, "epochs": 2, "progress": False, "out_dir": str(out_dir), "device": device,
                "channels_last": variant.channels_last, "compile": variant.compile, "amp": variant.amp},
        "data": {"name": dataset, "batch_size": 128, "train_subset": images, "test_subset": 128},
        "model": {"name": model},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4},
        "defense": {"name": "pgd_at", "attack": {"eps": eps, "steps": 7}},
    })
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(out_dir / "inductor_cache")
    torch._dynamo.reset()
    trainer = Trainer(config, log=lambda _: None)
    trainer.fit()
    # CPU: this process's CPU seconds (not inflated by other jobs on a shared machine); GPU: wall-clock.
    key = "train_time_s" if device.startswith("cuda") else "train_cpu_time_s"
    first, second = (row[key] for row in trainer.history[:2])
    return trainer.history[0]["train_time_s"], first, second


def measure(device: str = "cpu", images: int = 1280, log=print) -> tuple[str, list[dict]]:
    """Rows of {model, variant, first_wall_s, first_s, steady_s, images_per_s, epoch_50k_s} for both models."""
    cifar = cifar_dataset_name()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, dataset, conv_net in (("resnet_v1", cifar, True), ("lenet5", "fashion_mnist", True)):
            for i, variant in enumerate(variants_for(device, conv_net)):
                try:
                    first_wall, first, steady = epoch_times(model, dataset, images, variant, device,
                                                            Path(tmp) / f"{model}{i}")
                except Exception as exc:  # a variant the platform cannot run is reported, not fatal
                    log(f"{model} {variant.label}: failed ({type(exc).__name__}: {exc})")
                    rows.append({"model": model, "dataset": dataset, "variant": variant.label, "error": str(exc)})
                    continue
                row = {"model": model, "dataset": dataset, "variant": variant.label, "first_s": first,
                       "first_wall_s": first_wall,
                       "steady_s": steady, "images_per_s": images / steady,
                       "epoch_50k_s": CIFAR_TRAIN * steady / images}
                rows.append(row)
                log(f"{model} ({dataset}) {variant.label}: epoch 1 {first:.2f} s, epoch 2 {steady:.2f} s, "
                    f"{row['images_per_s']:.0f} images/s")
    return cifar, rows


def table(rows: list[dict]) -> str:
    lines = ["| model (data) | variant | epoch 1, wall-clock (s) | steady epoch (s) | images/s | vs default | "
             "50k-image epoch |", "|---|---|---|---|---|---|---|"]
    base = {r["model"]: r["images_per_s"] for r in rows if r["variant"].startswith("default") and "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} ({r['dataset']}) | {r['variant']} | failed: {r['error'][:80]} | | | | |")
            continue
        speedup = r["images_per_s"] / base[r["model"]] if r["model"] in base else float("nan")
        minutes = r["epoch_50k_s"] / 60
        lines.append(f"| {r['model']} ({r['dataset']}) | {r['variant']} | {r['first_wall_s']:.1f} | {r['steady_s']:.1f} "
                     f"| {r['images_per_s']:.0f} | {speedup:.2f}× | {minutes:.1f} min |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=1280, help="training images per epoch (default 1280)")
    args = parser.parse_args()
    cifar, rows = measure(args.device, args.images, log=lambda m: print(m, flush=True))
    print(f"\nResNet-V1(20) data: {cifar}\n" + table(rows))


if __name__ == "__main__":
    main()
