"""Seeds per unit of work: an attack's result on a batch must not depend on what ran before it in the process."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch


def derived_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and the names of the unit of work (e.g. the attack and the batch)."""
    digest = hashlib.sha256("/".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block with the global RNG seeded to ``seed``; the caller's RNG state is restored afterwards."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
