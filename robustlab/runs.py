"""A run's model: built from its config and dataset, or loaded trained from a checkpoint.

Below the defenses, the engine and the evaluation, which all build or load models through these functions
(the transfer attacks' source models and AT²L's ensemble members included).
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.checkpoint import load_checkpoint
from robustlab.config import Config, parse_config
from robustlab.data import ImageDataset, load_dataset
from robustlab.errors import CheckpointError, ConfigError
from robustlab.models import RobustModel, build_model
from robustlab.models.registry import validate_model_options

__all__ = ["build_model_for", "load_run_data", "load_source_model", "load_trained_model"]


def load_run_data(config: Config) -> ImageDataset:
    """The dataset of a run: ``[data]``'s dataset, its classes, its training and test subsets."""
    data = load_dataset(config.data.name, root=config.data.root or None, download=config.data.download)
    try:
        data = data.with_classes(config.data.classes)
    except ValueError as exc:
        raise ConfigError(f"data.classes: {exc}") from None
    return data.subset(config.data.train_subset, config.data.test_subset)


def build_model_for(config: Config, dataset: ImageDataset) -> RobustModel:
    """The ``[model]`` of ``config``, shaped for ``dataset`` (input shape, classes, normalisation)."""
    options = {k: v for k, v in config.model.items() if k != "name"}
    return build_model(config.model["name"], in_shape=dataset.in_shape, num_classes=dataset.num_classes,
                       mean=dataset.mean, std=dataset.std, **options)


def load_trained_model(checkpoint: str, device: torch.device | str = "cpu"):
    """Model (eval mode), config, dataset and training state of a checkpoint (a run directory or one of its
    ``checkpoints/epoch-*``)."""
    model_state, state, config_dict = load_checkpoint(checkpoint)
    try:
        config = parse_config(config_dict)
        options = {k: v for k, v in config.model.items() if k != "name"}
        validate_model_options(config.model["name"], options)
    except ConfigError as exc:  # a config that no longer validates is a corrupt checkpoint for the user
        raise CheckpointError(f"checkpoint {checkpoint} holds an invalid config: {exc}") from None
    config.model = {"name": config.model["name"], **options}
    data = load_run_data(config)
    model = build_model_for(config, data)
    try:
        model.load_state_dict(model_state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {checkpoint}: weights do not fit the model: {exc}") from None
    return model.to(device).eval(), config, data, state


def load_source_model(checkpoint: str, device: torch.device | str = "cpu") -> nn.Module:
    """The trained model of a checkpoint in eval mode (a transfer attack's source, an ensemble member)."""
    model, _config, _data, _state = load_trained_model(checkpoint, device=device)
    return model
