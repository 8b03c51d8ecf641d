"""The main job's settings (:class:`MainJob`) and the constants of its step planning."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BUDGET_FRACTION", "FAMILY_NAMES", "MIN_STEPS", "PROBE_STEPS", "TRAIN_EVALS",
           "MainJob"]

FAMILY_NAMES = {"hope": "HOPE", "transformer": "Transformer++", "titans": "Titans (LMM)"}
PROBE_STEPS = 4
"""Steps of a probe run: 1 warm-up, 2 timed, 1 timed after an evaluation (``plan.probe_timing``)."""
BUDGET_FRACTION = 0.85
"""Share of the time left after the probe that the planned training may fill (the rest absorbs
the error of a prediction from two timed steps)."""
MIN_STEPS = 10
"""Steps trained when not even these fit the time limit (the limit then stops what runs over)."""
TRAIN_EVALS = 4
"""Validation evaluations during a run (3 intermediate + the final one, for any step count)."""


def family_name(family: str) -> str:
    """The display name of a model family (``"hope"`` -> ``"HOPE"``)."""
    return FAMILY_NAMES.get(family, family)


@dataclass
class MainJob:
    """Settings of the main job (every model gets the same ones)."""

    out: str = "runs/main"
    recipe: str = "tiny"
    """The training recipe every model starts from (``nestlearn.train.RECIPES``)."""
    families: tuple[str, ...] = ("hope", "transformer", "titans")
    steps: int = 160
    """Optimizer steps per model (x ``batch_size`` x ``seq_len`` tokens)."""
    seq_len: int = 256
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 20
    eval_batches: int = 16
    """Validation windows scored: ``eval_batches`` x ``batch_size`` windows of ``seq_len``."""
    lanes: int = 2
    """Training processes in parallel."""
    threads: int = 1
    """Threads per training process."""
    time_limit: float = 8.5
    """Minutes of wall clock for the probe and the language-model training before running
    trainings are stopped (0: none). The synthetic panel runs after it."""
    calibrate: bool = True
    """With a time limit, probe each model's speed first and train every model the same number
    of steps that fits the limit (at most ``steps``); False: ``steps``, the limit stops the rest."""
    synthetic_task: str = "abab_star"
    """The synthetic panel's task (``nestlearn.eval.tasks.TASKS``; empty: no panel)."""
    synthetic_steps: int = 250
    """Optimizer steps per model of the panel."""
    synthetic_seeds: int = 3
    prompt: str = "KING HENRY:"
    sample_tokens: int = 60
    extra: list[str] = field(default_factory=list)
    """Further ``section.field=value`` overrides applied to every run."""

    def __post_init__(self) -> None:
        from nestlearn.models.presets import FAMILIES
        from nestlearn.train import RECIPES

        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {list(RECIPES)}, got {self.recipe!r}")
        for f in self.families:
            if f not in FAMILIES:
                raise ValueError(f"families: {f!r} is not one of {list(FAMILIES)}")
        if not self.families:
            raise ValueError("families must name at least one model family")
        from nestlearn.eval.tasks import TASKS

        if self.synthetic_task and self.synthetic_task not in TASKS:
            raise ValueError(f"synthetic_task must be empty or one of {sorted(TASKS)}, "
                             f"got {self.synthetic_task!r}")
        for name in ("steps", "seq_len", "batch_size", "eval_batches", "lanes", "threads",
                     "sample_tokens", "synthetic_steps", "synthetic_seeds"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (self.time_limit >= 0):
            raise ValueError(f"time_limit must be >= 0 minutes, got {self.time_limit!r}")
        if not isinstance(self.calibrate, bool):
            raise ValueError(f"calibrate must be True or False, got {self.calibrate!r}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def warmup(self, steps: int) -> int:
        """Warm-up steps of a run of ``steps`` steps: ``warmup_steps`` scaled by
        ``steps / self.steps`` (rounded, at least 1 unless ``warmup_steps`` is 0)."""
        if steps >= self.steps or self.warmup_steps <= 0:
            return self.warmup_steps
        return max(1, round(self.warmup_steps * steps / self.steps))

    def overrides(self, family: str, steps: int | None = None) -> list[str]:
        """The ``--set`` overrides of ``family``'s run of ``steps`` (default ``self.steps``):
        warm-up scaled to it (:meth:`warmup`), ``TRAIN_EVALS`` evaluations, 8 checkpoints, every
        step logged (so that throughput can leave out the steps after an evaluation)."""
        steps = self.steps if steps is None else steps
        out = Path(self.out) / "runs" / family
        return [f"train.out_dir={out}", f"train.steps={steps}",
                f"data.seq_len={self.seq_len}", f"data.batch_size={self.batch_size}",
                f"optim.lr={self.lr}", f"optim.warmup_steps={self.warmup(steps)}",
                "train.log_every=1", f"train.eval_every={-(-steps // TRAIN_EVALS)}",
                "train.eval_batches=4", f"train.checkpoint_every={-(-steps // 8)}",
                "train.keep_checkpoints=2", "train.precision=fp32", *self.extra]
