"""nestlearn.train: the training loop, checkpoints, recipes and the level schedule hook.

    from nestlearn.train import get_recipe, apply_overrides, train

    config = apply_overrides(get_recipe("debug_cpu"), ["train.steps=20", "optim.lr=1e-3"])
    result = train(config)            # resumes from train.out_dir/checkpoints if present
    result.losses, result.val_losses, result.model_dir

Under ``torchrun --nproc-per-node N`` the same call trains with DDP (``train.parallel=fsdp`` for
FSDP2). See ``loop.py`` for the step, ``checkpoint.py`` for the checkpoint layout and
``README.md`` for the other modules. ``evaluate`` and ``EvalResult`` live in
:mod:`nestlearn.eval.lm` and are re-exported here.
"""

from nestlearn.eval.lm import EvalResult, evaluate
from nestlearn.train.build import build_model
from nestlearn.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from nestlearn.train.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
)
from nestlearn.train.levels import SlowLevel, SlowSchedule, slow_levels
from nestlearn.train.loop import TrainResult, train
from nestlearn.train.recipes import RECIPES, get_recipe
from nestlearn.train.runs import load_run, resolve_run

__all__ = [
    "RECIPES",
    "DataConfig",
    "EvalResult",
    "ModelConfig",
    "OptimConfig",
    "SlowLevel",
    "SlowSchedule",
    "TrainConfig",
    "TrainResult",
    "apply_overrides",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "evaluate",
    "get_recipe",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_run",
    "resolve_run",
    "slow_levels",
    "train",
]
