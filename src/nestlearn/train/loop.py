"""The training loop (issue 5 item 2): ``train(config) -> TrainResult``.

One entry point for one process and for ``torchrun`` (DDP, or FSDP2 with
``train.parallel=fsdp``: :mod:`nestlearn.train.distributed`). Each step:

1. the global batch (``data.batch_size`` rows) is drawn; rank ``r`` of ``W`` takes rows
   ``[r * B / W, (r + 1) * B / W)``, split into ``train.grad_accum`` micro-batches, so a run's
   losses do not depend on the number of processes;
2. forward (in-context levels update inside it) and backward of the mean next-token loss;
   in ``data.mode=stream`` each micro-batch's recurrent state is carried to the next step,
   detached (truncated BPTT), so a persistent level sees the stream
   (:mod:`nestlearn.train.stream`);
3. the gradient is clipped (``optim.grad_clip``, global norm), then the gradients of slow levels
   (:mod:`nestlearn.train.levels`) are added to a running sum and withheld from the optimizer,
   except every ``every``-th step when the sum is applied (NL Eq. 71);
4. optimizer and learning-rate schedule (:mod:`nestlearn.train.optimizer`) step.

Run directory ``train.out_dir``: ``train_config.json``, ``metrics.jsonl``, ``tensorboard/``,
``loss.png`` (:mod:`nestlearn.train.metrics`), ``checkpoints/`` (:mod:`nestlearn.train.resume`,
:mod:`nestlearn.train.checkpoint`) and ``model/`` (final ``save_pretrained`` model and tokenizer).
Re-running with the same ``out_dir`` resumes from the latest checkpoint. One process writes a run
folder at a time (``.lock``, :mod:`nestlearn.train.lock`); a second one is refused at once.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from nestlearn.eval.lm import evaluate, token_losses
from nestlearn.train.build import (
    Run,
    build_run,
    check_model_overrides,
    check_splits,
    prepare_run_data,
)
from nestlearn.train.checkpoint import DiskFullError, is_disk_full, latest_checkpoint, quiet_save
from nestlearn.train.config import TrainConfig
from nestlearn.train.distributed import Dist, model_state, setup_distributed, teardown_distributed
from nestlearn.train.lock import run_lock
from nestlearn.train.metrics import MetricsLog, plot_losses, write_run_config
from nestlearn.train.resume import find_checkpoint, restore, save

__all__ = ["TrainResult", "train"]

Resume = Literal["auto", "never"]


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    """Optimizer steps completed."""
    losses: list[float]
    """Training loss of every step from step 1 (including steps before a resume)."""
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    """(step, validation loss) of every evaluation."""
    tokens_per_second: float = 0.0
    """Training throughput of this process's run (all ranks, steps after the first)."""
    model_dir: Path | None = None
    """The final ``save_pretrained`` directory (None when interrupted)."""
    resumed_from: int = 0
    """Step of the checkpoint this run resumed from (0: fresh start)."""
    interrupted: bool = False
    """Stopped before ``train.steps`` (signal or ``interrupt_after``)."""
    rank: int = 0
    """This process's rank (0 without ``torchrun``)."""


def train(
    config: TrainConfig,
    *,
    resume: Resume | str = "auto",
    progress: bool = True,
    interrupt_after: int | None = None,
) -> TrainResult:
    """Train ``config``; see the module docstring.

    Args:
        resume: ``"auto"`` continues from the latest checkpoint in ``train.out_dir`` (if any),
            ``"never"`` refuses a run directory that holds checkpoints, a path resumes from
            that checkpoint directory.
        progress: show progress bars (rank 0 only).
        interrupt_after: stop after this many steps of this call without a final checkpoint,
            as a killed process would (for tests).
    """
    d = setup_distributed(config)
    try:
        with run_lock(config.out_dir, d):  # one writer per run folder (rank 0 holds it)
            return _train(config, d, resume=resume, progress=progress and d.main,
                          interrupt_after=interrupt_after)
    finally:
        teardown_distributed(d)


def _train(config: TrainConfig, d: Dist, *, resume, progress, interrupt_after) -> TrainResult:
    checkpoint = find_checkpoint(config, resume, main=d.main)
    _check_batch_split(config, d)
    check_model_overrides(config)  # once, and before the (slow) data preparation
    data = prepare_run_data(config, d, progress=progress)
    check_splits(config, data)  # before the first step, not at the final evaluation
    run = build_run(config, d, data)
    if checkpoint is not None:
        restore(run, checkpoint)
    resumed_from = run.step
    if d.main:
        write_run_config(Path(config.out_dir), config, world=d.world, parallel=d.mode,
                         slow_levels=run.schedule.summary())
    log = MetricsLog(Path(config.out_dir), step=run.step, main=d.main)
    interrupted, tokens_per_second = _run_steps(run, log, progress=progress,
                                                interrupt_after=interrupt_after)
    model_dir = None
    if not interrupted:
        # the final checkpoint (in _run_steps) and model first: a failing evaluation loses nothing
        model_dir = _save_final(run)
        if run.step > resumed_from or _final_evaluation_missing(run, log):
            _evaluate(run, log)
        if d.main:
            plot_losses(Path(config.out_dir), run.losses, run.val_losses,
                        title=f"{config.model.family} {config.model.size}")
    log.close()
    return TrainResult(run_dir=Path(config.out_dir), step=run.step, losses=run.losses,
                       val_losses=run.val_losses, tokens_per_second=tokens_per_second,
                       model_dir=model_dir, resumed_from=resumed_from, interrupted=interrupted,
                       rank=d.rank)


def _final_evaluation_missing(run: Run, log: MetricsLog) -> bool:
    """A rerun of a finished run evaluates only if the first one failed before logging its final
    validation loss (rank 0 reads the log, and takes the logged loss; every rank learns the
    answer)."""
    logged = log.logged(run.step, "val_loss")
    known = bool(run.val_losses) and run.val_losses[-1][0] == run.step  # older checkpoints
    if logged is not None and not known:
        run.val_losses.append((run.step, float(logged)))
    missing = run.d.main and logged is None
    return bool(run.d.all_reduce(torch.tensor(float(missing), device=run.d.device)).item())


def _check_batch_split(config: TrainConfig, d: Dist) -> None:
    if config.data.batch_size % (d.world * config.grad_accum):
        raise ValueError(f"data.batch_size ({config.data.batch_size}) must be a multiple of "
                         f"processes x train.grad_accum ({d.world} x {config.grad_accum})")


def _run_steps(run: Run, log: MetricsLog, *, progress: bool,
               interrupt_after: int | None) -> tuple[bool, float]:
    """Steps until ``train.steps`` or a stop; (interrupted, tokens per second)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=run.config.steps, initial=run.step, desc="train", unit="step",
               disable=not progress, dynamic_ncols=True)
    clock = _Throughput(run.tokens_per_step, start_step=run.step)
    interrupted = False
    run.par.forward.train()
    with _StopRequest() as stop:
        while run.step < run.config.steps:
            loss, norm, lr = _step(run)
            rate = clock.tick()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}", refresh=False)
            _log_evaluate_checkpoint(run, log, norm=norm, lr=lr, rate=rate)
            if _should_stop(run, stop, start_step=clock.start_step,
                            interrupt_after=interrupt_after):
                interrupted = True
                break
    bar.close()
    return interrupted, clock.tokens_per_second(run.step)


def _step(run: Run) -> tuple[float, Tensor, float]:
    """One optimizer step (module docstring, 1-4); (loss, gradient norm, learning rate)."""
    config, d, par, micro = run.config, run.d, run.par, run.micro
    batch = next(run.sampler)
    rows = slice(d.rank * run.per_rank, (d.rank + 1) * run.per_rank)
    x_all, y_all = batch.inputs[rows].to(d.device), batch.targets[rows].to(d.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
    for i in range(config.grad_accum):
        x, y = x_all[i * micro:(i + 1) * micro], y_all[i * micro:(i + 1) * micro]
        sync = (i == config.grad_accum - 1 or d.mode != "ddp")
        with par.no_sync(sync), run.autocast():
            out = par.forward(x, use_cache=run.caches.enabled, past_key_values=run.caches[i])
            loss = token_losses(out.logits, y).mean()
        (loss / config.grad_accum).backward()
        run.caches.carry(i, out)
        loss_sum += loss.detach().double()
    d.all_reduce(loss_sum)
    step_loss = float(loss_sum) / (config.grad_accum * d.world)
    if not math.isfinite(step_loss):
        raise FloatingPointError(f"training loss is {step_loss} at step {run.step + 1}")

    par.reshard()  # before clipping, the optimizer and any state dict
    grads = [p for p in par.raw.parameters() if p.grad is not None]
    if config.optim.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(grads, config.optim.grad_clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in grads])
    run.step += 1
    run.schedule.step(run.step)
    lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.losses.append(step_loss)
    return step_loss, norm, lr


def _evaluate(run: Run, log: MetricsLog) -> float:
    config = run.config
    result = evaluate(run.par.eval_model(), run.validation, seq_len=config.data.seq_len,
                      batch_size=config.data.batch_size // config.grad_accum,
                      max_batches=config.eval_batches, device=run.d.device,
                      autocast=run.autocast)
    run.par.reshard()
    run.val_losses.append((run.step, result.loss))
    log.write({"step": run.step, "val_loss": result.loss, "val_ppl": result.perplexity})
    return result.loss


def _checkpoint_due(config: TrainConfig, step: int) -> bool:
    return bool(config.checkpoint_every and step % config.checkpoint_every == 0)


def _log_evaluate_checkpoint(run: Run, log: MetricsLog, *, norm: Tensor, lr: float,
                             rate: float) -> None:
    config, step = run.config, run.step
    if step % config.log_every == 0 or step == config.steps:
        log.write({"step": step, "loss": run.losses[-1], "lr": lr, "grad_norm": float(norm),
                   "tokens": step * run.tokens_per_step, "tokens_per_s": rate})
    if config.eval_every and step % config.eval_every == 0 and step < config.steps:
        _evaluate(run, log)
    if _checkpoint_due(config, step) or step == config.steps:
        save(run, step)  # the final evaluation comes after the final save (_train)


def _should_stop(run: Run, stop: _StopRequest, *, start_step: int,
                 interrupt_after: int | None) -> bool:
    """After a step that is not the last: ``interrupt_after`` steps done, or a signal on any
    rank (then checkpoint the step unless that was done already)."""
    last = run.step == run.config.steps
    if interrupt_after is not None and run.step - start_step >= interrupt_after and not last:
        return True
    stop_now = run.d.all_reduce(torch.tensor(float(stop.requested), device=run.d.device))
    if stop_now.item() and not last:
        if not _checkpoint_due(run.config, run.step):
            save(run, run.step)
        return True
    return False


def _save_final(run: Run) -> Path | None:
    """``model/`` (``save_pretrained`` and the tokenizer) on rank 0; the other
    ranks take part in gathering the FSDP2 state dict."""
    raw, d = run.par.raw, run.d
    if not d.main:
        model_state(raw, d)
        return None
    model_dir = Path(run.config.out_dir) / "model"
    weights = model_state(raw, d)
    try:
        with quiet_save():
            raw.save_pretrained(model_dir, state_dict=weights)
        run.tokenizer.save(model_dir)
    except Exception as err:
        if not is_disk_full(err):
            raise
        intact = latest_checkpoint(run.config.out_dir, note=None)
        raise DiskFullError(f"disk full while writing {model_dir}; the final checkpoint {intact} "
                            f"is intact; free space and run the same command to write the "
                            f"model") from None
    return model_dir


class _Throughput:
    """Tokens per second of each step and of the run (without its first step: warm-up,
    compilation)."""

    def __init__(self, tokens_per_step: int, *, start_step: int) -> None:
        self.tokens_per_step, self.start_step = tokens_per_step, start_step
        self.start: float | None = None
        self.last = time.perf_counter()

    def tick(self) -> float:
        now = time.perf_counter()
        if self.start is None:
            self.start = now
        rate = self.tokens_per_step / max(now - self.last, 1e-9)
        self.last = now
        return rate

    def tokens_per_second(self, step: int) -> float:
        elapsed = (time.perf_counter() - self.start) if self.start is not None else 0.0
        done = step - self.start_step - 1
        return done * self.tokens_per_step / elapsed if done > 0 and elapsed > 0 else 0.0


class _StopRequest:
    """SIGINT/SIGTERM ask the loop to finish the current step, checkpoint and stop; a second
    SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:  # noqa: PYI034
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
