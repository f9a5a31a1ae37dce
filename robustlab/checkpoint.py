"""Checkpoints that never unpickle: tensors in safetensors, everything else in JSON, written atomically.

Layout of a run directory::

    run_dir/config.json              the validated config the run was started with
    run_dir/metrics.jsonl            one JSON line per finished epoch
    run_dir/checkpoints/epoch-0003/  model.safetensors, state.safetensors, state.json, manifest.json
    run_dir/checkpoints/latest       name of the newest complete checkpoint

A checkpoint directory is written under a temporary name and renamed when complete, and ``latest`` is replaced
with ``os.replace``, so an interrupted save never leaves a half-written checkpoint behind. ``manifest.json``
holds the sha256 of every file; loading verifies it and raises :class:`CheckpointError` on any mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robustlab.errors import CheckpointError, ConfigError

MODEL_FILE = "model.safetensors"
STATE_TENSORS_FILE = "state.safetensors"
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "latest"


# --- nested state <-> (JSON, flat tensor dict) ------------------------------------------------------------------
def split_tensors(obj: Any, tensors: dict[str, torch.Tensor], path: str = "t") -> Any:
    """Replace every tensor in a nested structure by ``{"__tensor__": key}`` and collect it in ``tensors``.

    Dicts with non-string keys (optimiser states use int keys) and tuples are tagged so they round-trip exactly.
    """
    if isinstance(obj, torch.Tensor):
        key = path
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: split_tensors(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"__items__": [[k, split_tensors(v, tensors, f"{path}.{i}")] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [split_tensors(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [split_tensors(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__} at {path}")


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_tensors`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: join_tensors(v, tensors) for k, v in obj["__items__"]}
        if set(obj) == {"__tuple__"}:
            return tuple(join_tensors(v, tensors) for v in obj["__tuple__"])
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def refuse_dangling_link(path: Path, what: str) -> None:
    """A directory path that is a symbolic link to nothing is refused by name (``mkdir`` would say "File exists")."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.is_symlink() and not p.exists():
            raise ConfigError(f"{what} {path}: {p} is a symbolic link to {os.readlink(p)}, which does not exist "
                              f"(create the target, or choose another path)")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- save / load ----------------------------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, epoch: int, model_state: dict[str, torch.Tensor], state: dict[str, Any],
                    config: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``epoch`` (number of finished epochs) and point ``latest`` at it; keep the newest ``keep``."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"epoch-{epoch:04d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".epoch-{epoch:04d}."))
    try:
        save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in model_state.items()}, tmp / MODEL_FILE)
        tensors: dict[str, torch.Tensor] = {}
        json_state = split_tensors(state, tensors)
        save_file(tensors, tmp / STATE_TENSORS_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(json_state))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        manifest = {name: sha256_of(tmp / name) for name in CHECKPOINT_FILES}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except (OSError, SafetensorError) as exc:  # a full disk, a read-only mount: the last checkpoint is untouched
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final.name} in {ckpt_root}: {exc} (is the disk full or "
                              f"read-only?); the previous checkpoint is intact, --resume continues from it") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(ckpt_root / LATEST_FILE, final.name)
    old = sorted(p for p in ckpt_root.glob("epoch-*") if p.is_dir() and p.name != final.name)
    for path in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(path, ignore_errors=True)
    remove_stale_temporaries(run_dir)
    return final


def remove_stale_temporaries(run_dir: Path) -> int:
    """Delete the half-written ``checkpoints/.epoch-NNNN.*`` directories a killed run leaves; returns how many.

    Only call it with the run directory's lock held (no other process can be writing one)."""
    stale = [p for p in (Path(run_dir) / "checkpoints").glob(".epoch-*") if p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory or a run directory (uses ``checkpoints/latest``)."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file():
        return path
    latest = path / "checkpoints" / LATEST_FILE
    if latest.is_file():
        try:
            name = latest.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        if not name.startswith("epoch-") or "/" in name or "\\" in name:
            raise CheckpointError(f"{latest} is corrupt: it must name a checkpoints/epoch-NNNN directory")
        target = path / "checkpoints" / name
        if (target / MANIFEST_FILE).is_file():
            return target
        raise CheckpointError(f"{latest} points to {target.name}, which is missing or incomplete")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    raise CheckpointError(f"{path} is neither a checkpoint directory (no {MANIFEST_FILE}) nor a run directory "
                          f"with checkpoints/{LATEST_FILE}")


def find_latest_checkpoint(run_dir: Path) -> Path | None:
    latest = Path(run_dir) / "checkpoints" / LATEST_FILE
    return resolve_checkpoint(run_dir) if latest.is_file() else None


CHECKPOINT_FILES = (MODEL_FILE, STATE_TENSORS_FILE, STATE_FILE, CONFIG_FILE)


def verify_checkpoint(ckpt: Path) -> None:
    """The manifest must list exactly the checkpoint's files, each with its sha256; anything else is corrupt."""
    try:
        manifest = json.loads((ckpt / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: cannot read {MANIFEST_FILE} ({exc})") from None
    if not isinstance(manifest, dict) or set(manifest) != set(CHECKPOINT_FILES) or not all(
            isinstance(v, str) for v in manifest.values()):
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: {MANIFEST_FILE} must map exactly "
                              f"{', '.join(CHECKPOINT_FILES)} to their sha256")
    for name in CHECKPOINT_FILES:
        if not (ckpt / name).is_file():
            raise CheckpointError(f"checkpoint {ckpt} is incomplete: {name} is missing")
    extra = sorted({p.name for p in ckpt.iterdir()} - {MANIFEST_FILE, *CHECKPOINT_FILES})
    if extra:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: {', '.join(extra)} not in its {MANIFEST_FILE}")
    for name, digest in manifest.items():
        file = ckpt / name
        if sha256_of(file) != digest:
            raise CheckpointError(f"checkpoint {ckpt} is corrupt: {name} does not match its sha256 in {MANIFEST_FILE}")


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Verify and load ``(model_state, state, config_dict)`` from a checkpoint or run directory."""
    ckpt = resolve_checkpoint(path)
    verify_checkpoint(ckpt)
    try:
        model_state = load_file(ckpt / MODEL_FILE)
        tensors = load_file(ckpt / STATE_TENSORS_FILE)
        state = join_tensors(json.loads((ckpt / STATE_FILE).read_text()), tensors)
        config = json.loads((ckpt / CONFIG_FILE).read_text())
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: {exc}") from None
    return model_state, state, config
