"""What a run writes besides checkpoints: ``train_config.json``, ``metrics.jsonl``, TensorBoard
events (when ``tensorboard`` is installed) and ``loss.png``. Only rank 0 writes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import torch

from nestlearn.train.config import TrainConfig, config_to_dict

__all__ = ["METRICS", "RUN_CONFIG", "MetricsLog", "git_sha", "plot_losses", "write_run_config"]

RUN_CONFIG = "train_config.json"
METRICS = "metrics.jsonl"


def git_sha() -> str | None:
    """The SHA of the nestlearn checkout (``+dirty`` if modified), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10,
                               check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def write_run_config(run_dir: Path, config: TrainConfig, *, world: int, parallel: str,
                     slow_levels: dict[str, int]) -> None:
    """``train_config.json``: the resolved config, git SHA, torch version, world size, mode and
    the slow levels' steps between updates."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_CONFIG).write_text(json.dumps(
        {"config": config_to_dict(config), "git_sha": git_sha(), "torch": torch.__version__,
         "world_size": world, "parallel": parallel, "slow_levels": slow_levels},
        indent=1) + "\n")


class MetricsLog:
    """Appends metric records to ``metrics.jsonl`` and TensorBoard (a no-op off rank 0).

    Opening it drops the lines after ``step`` that a run which died after its last checkpoint
    wrote (``step`` = the step resumed from)."""

    def __init__(self, run_dir: Path, *, step: int, main: bool) -> None:
        self._log = self._writer = None
        if not main:
            return
        _truncate_metrics(run_dir / METRICS, step)
        self._writer = _tensorboard(run_dir)
        self._log = open(run_dir / METRICS, "a")  # noqa: SIM115 - closed by close()

    def write(self, record: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write(json.dumps(record) + "\n")
            self._log.flush()
        if self._writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._writer.add_scalar(k, v, record["step"])

    def logged(self, step: int, key: str) -> Any:
        """The value of ``key`` logged at ``step`` in ``metrics.jsonl``, or None (always None off
        rank 0)."""
        if self._log is None:
            return None
        for line in Path(self._log.name).read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step") == step and key in record:
                return record[key]
        return None

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
        if self._writer is not None:
            self._writer.close()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after ``step`` (written by a run that died after its last checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the crash
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(k + "\n" for k in keep))
    tmp.replace(path)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: JSONL only
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def plot_losses(run_dir: Path, losses: list[float], val_losses: list[tuple[int, float]], *,
                title: str) -> Path | None:
    """``loss.png``: train loss (raw and smoothed) and validation loss by step."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = range(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="train")
    if len(losses) >= 20:
        k = max(2, len(losses) // 50)
        smooth = torch.tensor(losses).unfold(0, k, 1).mean(1).tolist()
        ax.plot(range(k, len(losses) + 1), smooth, lw=1.5, label=f"train (mean of {k})")
    if val_losses:
        ax.plot(*zip(*val_losses, strict=True), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("next-token loss (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = run_dir / "loss.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
