"""The smallest real training run the command-line tests use: an MLP on the 8×8 digits for one epoch."""

from __future__ import annotations

DEFAULT_DEFENSE = 'name = "fgsm_at"\nlam = 0.5\n[defense.attack]\neps = 0.1'


def tiny_run_toml(defense: str = DEFAULT_DEFENSE, eps: str = "[0.05, 0.1]") -> str:
    """TOML text with a ``{out}`` placeholder for ``run.out_dir`` (fill it with ``str.format``)."""
    return f"""
[run]
epochs = 1
progress = false
out_dir = "{{out}}"
[data]
name = "digits"
batch_size = 128
[model]
name = "mlp_a3t"
[optim]
name = "adam"
lr = 0.002
[defense]
{defense}
[eval]
eps = {eps}
pgd_steps = 5
subset = 100
"""
