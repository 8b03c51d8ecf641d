"""Training recipes: Python functions returning a complete ``TrainConfig`` (style guide 4.4).

* ``debug_cpu``: seconds on a laptop CPU; a small HOPE on bytes whose slow CMS level updates
  every 4 steps (tests, CI).
* ``tiny``: minutes on CPU; the ``tiny`` preset (~5.5M parameters) on the default corpus, BPE 4096.
* ``tiny_stream``: ``tiny`` reading the corpus as streams (memory state carried across windows).

Each takes the model family: ``get_recipe("tiny", family="transformer")``, on the command line
``nestlearn train tiny --family transformer``.
"""

from __future__ import annotations

from collections.abc import Callable

from nestlearn.train.config import DataConfig, ModelConfig, OptimConfig, TrainConfig

__all__ = ["RECIPES", "get_recipe"]


def debug_cpu(*, family: str = "hope") -> TrainConfig:
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    if family.startswith("hope"):
        levels = 2 if family == "hope" else 3
        # the slow level(s) update every 1024 tokens = 4 steps of 4 x 64 tokens
        small |= {"cms_hidden_sizes": [64] * levels, "cms_periods": [0] + [1024] * (levels - 1)}
    else:
        small |= {"intermediate_size": 64}
    return TrainConfig(
        model=ModelConfig(family=family, size="tiny", overrides=small),
        data=DataConfig(tokenizer="byte", seq_len=64, batch_size=4),
        optim=OptimConfig(lr=3e-3, warmup_steps=2),
        steps=20, log_every=1, eval_every=10, eval_batches=2, checkpoint_every=10,
        out_dir="runs/debug_cpu",
    )


def tiny(*, family: str = "hope") -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(family=family, size="tiny"),
        data=DataConfig(tokenizer="bpe", vocab_size=4096, seq_len=256, batch_size=8),
        optim=OptimConfig(lr=1e-3, warmup_steps=50),
        steps=1000, log_every=10, eval_every=200, eval_batches=8, checkpoint_every=100,
        out_dir="runs/tiny",
    )


def tiny_stream(*, family: str = "hope") -> TrainConfig:
    config = tiny(family=family)
    config.data.mode = "stream"
    config.out_dir = "runs/tiny_stream"
    return config


RECIPES: dict[str, Callable[..., TrainConfig]] = {
    "debug_cpu": debug_cpu,
    "tiny": tiny,
    "tiny_stream": tiny_stream,
}


def get_recipe(name: str, *, family: str = "hope") -> TrainConfig:
    """The config of recipe ``name`` for model ``family``; an unknown name is a ``ValueError``."""
    from nestlearn.models.presets import FAMILIES

    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    if family not in FAMILIES:
        raise ValueError(f"model.family must be one of {list(FAMILIES)}, got {family!r}")
    return RECIPES[name](family=family)
