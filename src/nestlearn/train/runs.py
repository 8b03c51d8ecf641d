"""Loading a trained run: the config, the model and the tokenizer of a run directory.

    from nestlearn.train import load_run

    config, model, tokenizer, weights = load_run("runs/tf")          # the final model
    config, model, tokenizer, weights = load_run("runs/tf/checkpoints/step_00000200")

A run directory is a ``train.out_dir``: it holds ``train_config.json``, ``model/`` once training
finished and ``checkpoints/``. A path may name the run, one of its checkpoints or its ``model/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nestlearn.train.checkpoint import latest_checkpoint, load_weights
from nestlearn.train.config import TrainConfig, config_from_dict
from nestlearn.train.metrics import RUN_CONFIG

__all__ = ["load_run", "resolve_run"]


def resolve_run(path: str | Path) -> tuple[Path, Path]:
    """(run directory, directory holding the weights) of a run, checkpoint or model path.

    For a run directory the weights are its final ``model/`` if training finished, else its
    latest checkpoint. A missing path, a run without weights or a path outside a run is a
    ``FileNotFoundError``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such run, checkpoint or model directory: {path}")
    if (path / RUN_CONFIG).is_file():
        weights = path / "model"
        if not (weights / "model.safetensors").is_file():
            weights = latest_checkpoint(path)
            if weights is None:
                raise FileNotFoundError(f"run {path} has no final model and no checkpoint")
        return path, weights
    for run in (path.parent, path.parent.parent):
        if (run / RUN_CONFIG).is_file():
            return run, path
    raise FileNotFoundError(f"{path} is not inside a training run (no {RUN_CONFIG})")


def load_run(path: str | Path) -> tuple[TrainConfig, Any, Any, Path]:
    """(train config, model, tokenizer, weights directory) of a run, checkpoint or model path
    (:func:`resolve_run`).

    The model is a float32 ``AutoModelForCausalLM`` in eval mode with the weights loaded; the
    tokenizer is the run's (``tokenizer.json`` beside the weights or in the run's ``model/``).
    An unreadable config is a ``ValueError``, missing files a ``FileNotFoundError``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import nestlearn.models  # noqa: F401 - registers the model classes with Auto*
    from nestlearn.data import load_tokenizer

    run, weights = resolve_run(path)
    try:
        config = config_from_dict(json.loads((run / RUN_CONFIG).read_text())["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{run / RUN_CONFIG} is not a training config ({err})") from None
    try:
        model_config = AutoConfig.from_pretrained(weights)
    except Exception as err:  # noqa: BLE001 - transformers raises OSError/ValueError/JSON errors
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot read the model config in {weights}: {first}") from None
    model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    load_weights(weights, model)
    tokenizer_file = next((d / "tokenizer.json" for d in (weights, run / "model")
                           if (d / "tokenizer.json").is_file()), None)
    if tokenizer_file is None:
        raise FileNotFoundError(f"no tokenizer.json in {weights} or {run / 'model'}")
    return config, model.eval(), load_tokenizer(tokenizer_file), weights
