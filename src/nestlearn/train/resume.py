"""Checkpointing a run and resuming it (the layout is :mod:`nestlearn.train.checkpoint`).

Re-running with the same ``train.out_dir`` resumes from its latest checkpoint. The saved config is
compared with the new one once, before anything is built: a run may grow ``train.steps`` but not
change its model, data, optimizer, seed, precision or ``grad_accum``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nestlearn.train.build import Run
from nestlearn.train.checkpoint import (
    CHECKPOINT_DIR,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    note,
    save_checkpoint,
)
from nestlearn.train.config import TrainConfig, config_to_dict
from nestlearn.train.distributed import (
    full,
    like,
    load_model,
    load_optimizer,
    model_state,
    optimizer_state,
)
from nestlearn.train.metrics import RUN_CONFIG, git_sha

__all__ = ["find_checkpoint", "restore", "save"]


def find_checkpoint(config: TrainConfig, resume: str, *, main: bool = True) -> Path | None:
    """The checkpoint to resume from (``resume``: ``"auto"``, ``"never"`` or a checkpoint path),
    or None for a fresh start; a changed config is a ``ValueError``. ``"auto"`` takes the newest
    intact checkpoint (each newer incomplete one is named in a note, by rank 0)."""
    run_dir = Path(config.out_dir)
    checkpoint = None
    if resume not in ("auto", "never"):
        checkpoint = Path(resume)
        if not checkpoint.is_dir():
            raise FileNotFoundError(f"no checkpoint directory {checkpoint}")
    elif list_checkpoints(run_dir):
        if resume == "never":
            raise ValueError(f"{run_dir} already holds checkpoints; resume or use a new "
                             f"train.out_dir")
        checkpoint = latest_checkpoint(run_dir, note=note if main else None)
        if checkpoint is None:
            raise ValueError(f"no intact checkpoint in {run_dir / CHECKPOINT_DIR} (every one "
                             f"misses a file); use a new train.out_dir")
    if checkpoint is not None:
        _check_same_config(run_dir, config)
    return checkpoint


def _check_same_config(run_dir: Path, config: TrainConfig) -> None:
    saved_file = run_dir / RUN_CONFIG
    if not saved_file.is_file():
        return
    try:
        saved = json.loads(saved_file.read_text())["config"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(
            f"{saved_file} is not a training config; use a new train.out_dir") from None
    now = config_to_dict(config)
    changed = [f"{s}.{k}" for s in ("model", "data", "optim") for k in now[s]
               if saved.get(s, {}).get(k) != now[s][k]]
    fixed = ("seed", "precision", "grad_accum")
    changed += [f"train.{k}" for k in fixed if saved.get("train", {}).get(k) != now["train"][k]]
    if changed:
        raise ValueError(f"{run_dir} holds checkpoints of a run with a different config "
                         f"({', '.join(changed)}); use a new train.out_dir")


def save(run: Run, at: int) -> Path | None:
    """Checkpoint ``run`` after step ``at`` (a collective under DDP/FSDP; rank 0 writes)."""
    d, raw = run.d, run.par.raw
    state = {
        "step": at,
        "optimizer": optimizer_state(run.optimizer, d),
        "scheduler": run.scheduler.state_dict(),
        "data": run.sampler.state_dict(),
        "slow_sums": {n: full(t).cpu() for n, t in run.schedule.sums.items()},
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(d.device) if d.device.type == "cuda"
                else None},
        "losses": list(run.losses),
        "val_losses": [list(v) for v in run.val_losses],
        "caches": run.caches.gather(d),
    }
    weights = model_state(raw, d)
    path = None
    if d.main:
        path = save_checkpoint(Path(run.config.out_dir), step=at, model=raw, state=state,
                               keep=run.config.keep_checkpoints, meta={"git_sha": git_sha()},
                               model_state=weights, tokenizer=run.tokenizer)
    d.barrier()
    return path


def restore(run: Run, checkpoint: Path) -> None:
    """Load ``checkpoint`` into ``run``: weights, optimizer, schedule, sampler position, slow
    sums, RNG, loss history and carried stream state."""
    d, raw = run.d, run.par.raw
    state = load_checkpoint(checkpoint, model=None)
    load_model(checkpoint, raw, d)
    load_optimizer(state["optimizer"], run.optimizer, d)
    run.scheduler.load_state_dict(state["scheduler"])
    run.sampler.load_state_dict(state["data"])
    params = dict(raw.named_parameters())
    for n in run.schedule.sums:
        run.schedule.sums[n] = like(state["slow_sums"][n], params[n])
    torch.set_rng_state(state["rng"]["torch"])
    if d.device.type == "cuda" and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"], d.device)
    run.step = int(state["step"])
    run.losses = [float(x) for x in state["losses"]]
    run.val_losses = [(int(s), float(v)) for s, v in state["val_losses"]]
    if state.get("caches"):
        run.caches.restore(run.par.forward, state["caches"][d.rank], micro=run.micro,
                           seq_len=run.config.data.seq_len, device=d.device)
