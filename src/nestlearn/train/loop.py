"""The training loop (issue 5 item 2): ``train(config) -> TrainResult``.

One entry point for one process and for ``torchrun`` (DDP, or FSDP2 ``fully_shard`` per block,
:func:`_fsdp_units`, with ``train.parallel=fsdp``; gloo on CPU, NCCL on GPU). Each step:

1. the global batch (``data.batch_size`` rows) is drawn; rank ``r`` of ``W`` takes rows
   ``[r * B / W, (r + 1) * B / W)``, split into ``train.grad_accum`` micro-batches, so a run's
   losses do not depend on the number of processes;
2. forward (in-context levels update inside it) and backward of the mean next-token loss;
   in ``data.mode=stream`` each micro-batch's recurrent state is carried to the next step,
   detached (truncated BPTT), so a persistent level sees the stream;
3. the gradient is clipped (``optim.grad_clip``, global norm), then the gradients of slow CMS
   levels (:mod:`nestlearn.train.levels`) are added to a running sum and withheld from the
   optimizer, except every ``every``-th step when the sum is applied (NL Eq. 71);
4. optimizer and learning-rate schedule (linear warmup, then cosine/linear/constant) step.

Run directory ``train.out_dir``: ``train_config.json`` (resolved config, git SHA),
``metrics.jsonl``, ``checkpoints/`` (:mod:`nestlearn.train.checkpoint`), ``tensorboard/`` (only
if ``tensorboard`` is installed), ``loss.png`` and ``model/`` (final ``save_pretrained`` model and
tokenizer). Re-running with the same ``out_dir`` resumes from the latest checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from nestlearn.models.base import enable_activation_checkpointing
from nestlearn.models.cache import output_cache
from nestlearn.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    quiet_save,
    save_checkpoint,
)
from nestlearn.train.config import TrainConfig, config_to_dict
from nestlearn.train.levels import SlowLevel, slow_levels

__all__ = ["EvalResult", "TrainResult", "build_model", "evaluate", "git_sha", "train"]

Resume = Literal["auto", "never"]
RUN_CONFIG = "train_config.json"
METRICS = "metrics.jsonl"


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


@dataclass
class EvalResult:
    loss: float
    """Mean next-token loss over every scored token."""
    perplexity: float
    per_position: list[float]
    """Mean loss at each position 0..T-1 of a window (the context-usage curve, NL Fig. 10)."""
    tokens: int


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


# ---------------------------------------------------------------------------------------------
# Set-up


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    mode: str = "none"  # none | ddp | fsdp
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _setup_distributed(config: TrainConfig) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but CUDA is not available")
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    mode = config.parallel
    if mode == "auto":
        mode = "ddp" if world > 1 else "none"
    if world > 1 and mode == "none":
        raise ValueError("train.parallel=none but launched with WORLD_SIZE > 1")
    if world == 1:
        mode = "none" if mode == "ddp" else mode
    if mode != "none" and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank,
                                world_size=world, timeout=datetime.timedelta(minutes=10))
    return _Dist(rank=rank, world=world, mode=mode, device=device)


def _prepare_data(config: TrainConfig, d: _Dist, *, progress: bool):
    from nestlearn.data import prepare_data

    def run(show):
        return prepare_data(config.data.sources, tokenizer=config.data.tokenizer,
                            vocab_size=config.data.vocab_size, cache_dir=config.data.cache_dir,
                            progress=show)

    # Rank 0 builds the cache; the others then read it.
    data = run(progress) if d.main else None
    d.barrier()
    return data if d.main else run(False)


def _check_model_overrides(config: TrainConfig) -> None:
    from nestlearn.models.presets import preset_config

    default = preset_config(config.model.family, config.model.size)
    unknown = [k for k in config.model.overrides if not hasattr(default, k)]
    if unknown:
        raise ValueError(f"model override {unknown[0]!r} is not a field of "
                         f"{type(default).__name__}")


def build_model(config: TrainConfig, *, vocab_size: int) -> nn.Module:
    """The model of ``config.model`` with ``vocab_size`` tokens, initialised from ``train.seed``."""
    from nestlearn.models.presets import preset_config, preset_model_class

    _check_model_overrides(config)
    overrides = dict(config.model.overrides)
    overrides.setdefault("vocab_size", vocab_size)
    if overrides["vocab_size"] < vocab_size:
        raise ValueError(f"model.vocab_size={overrides['vocab_size']} is smaller than the "
                         f"tokenizer's {vocab_size}")
    model_config = preset_config(config.model.family, config.model.size, **overrides)
    torch.manual_seed(config.seed)
    model = preset_model_class(config.model.family)(model_config)
    if config.precision == "fp64":
        model = model.double()
    return model


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = config.optim
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay},
              {"params": other, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, **o.kwargs)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, **o.kwargs)
    try:
        import nestlearn.optim as nl_optim
    except ImportError as err:
        raise ValueError(f"optim.name={o.name!r} needs nestlearn.optim ({err})") from None
    cls = {"associative_momentum": "AssociativeMomentum", "delta_momentum": "DeltaMomentum",
           "deep_momentum": "DeepMomentum", "m3": "M3"}[o.name]
    if not hasattr(nl_optim, cls):
        raise ValueError(f"optim.name={o.name!r}: nestlearn.optim has no {cls}")
    try:
        return getattr(nl_optim, cls)(groups, lr=o.lr, **o.kwargs)
    except TypeError as err:
        raise ValueError(f"optim.kwargs for {cls}: {err}") from None


def _lr_factor(config: TrainConfig):
    o, steps = config.optim, config.steps

    def factor(step: int) -> float:  # step = optimizer steps taken so far
        if step < o.warmup_steps:
            return (step + 1) / (o.warmup_steps + 1)
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, steps - o.warmup_steps - 1))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if o.schedule == "cosine" else 1 - progress
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * shape

    return factor


def _autocast(config: TrainConfig, device: torch.device):
    # Every family runs under bf16 autocast; the memories' recurrences switch it off for
    # themselves and run in float32 (nestlearn.memory, SelfModifyingTitans).
    bf16 = config.precision == "bf16" or (
        config.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


# ---------------------------------------------------------------------------------------------
# Loss, evaluation


def _token_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-token next-token loss ``[B, T]`` (computed in fp32 or wider)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.cross_entropy(logits.to(dtype).flatten(0, 1), targets.flatten(),
                           reduction="none").view(targets.shape)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokens,
    *,
    seq_len: int,
    batch_size: int,
    max_batches: int = 0,
    device: torch.device | str = "cpu",
    autocast=contextlib.nullcontext,
    progress: bool = False,
) -> EvalResult:
    """Validation loss, perplexity and per-position loss over ``eval_windows`` of ``tokens``
    (the first ``max_batches`` batches; 0 = all). Each window starts from a fresh memory state."""
    from tqdm.auto import tqdm

    from nestlearn.data import eval_windows

    was_training = model.training
    model.eval()
    sums = torch.zeros(seq_len, dtype=torch.float64)
    counts = torch.zeros(seq_len, dtype=torch.float64)
    windows = eval_windows(tokens, seq_len=seq_len, batch_size=batch_size)
    total = math.ceil((len(tokens) - 1) / (seq_len * batch_size))
    total = min(total, max_batches) if max_batches else total
    bar = tqdm(windows, total=total, desc="eval", unit="batch", disable=not progress,
               leave=False)
    for i, (x, y, _) in enumerate(bar):
        if max_batches and i >= max_batches:
            break
        with autocast():
            logits = model(x.to(device), use_cache=False).logits
        losses = _token_losses(logits, y.to(device)).double().cpu()  # [B, T]
        sums[: losses.shape[1]] += losses.sum(0)
        counts[: losses.shape[1]] += losses.shape[0]
    bar.close()
    model.train(was_training)
    if not counts.any():
        raise ValueError(f"split '{tokens.name}' has no window of seq_len={seq_len}")
    loss = float(sums.sum() / counts.sum())
    per_position = (sums / counts.clamp(min=1)).tolist()
    return EvalResult(loss=loss, perplexity=math.exp(min(loss, 700.0)),
                      per_position=per_position[: int((counts > 0).sum())],
                      tokens=int(counts.sum()))


# ---------------------------------------------------------------------------------------------
# Carried memory state (data.mode=stream)


def _cache_tensors(cache) -> list[Tensor]:
    found: list[Tensor] = []

    def record(t: Tensor) -> Tensor:
        found.append(t)
        return t

    cache.map_states(record)
    return found


def _restore_cache(cache, saved: list[Tensor]) -> None:
    it = iter(saved)

    def put(t: Tensor) -> Tensor:
        s = next(it, None)
        if s is None or s.shape != t.shape:
            raise ValueError("the checkpoint's carried memory state does not match this model "
                             "(data.mode=stream resumes only models with fixed-size states)")
        return s.to(device=t.device, dtype=t.dtype)

    cache.map_states(put)
    if next(it, None) is not None:
        raise ValueError("the checkpoint's carried memory state does not match this model")


# ---------------------------------------------------------------------------------------------
# The loop


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


def _check_resume(run_dir: Path, config: TrainConfig) -> None:
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


def _full(t: Tensor) -> Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


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
    from tqdm.auto import tqdm

    d = _setup_distributed(config)
    try:
        return _train(config, d, resume=resume, progress=progress and d.main,
                      interrupt_after=interrupt_after, tqdm=tqdm)
    finally:
        if d.mode != "none" and dist.is_initialized():
            dist.destroy_process_group()


def _train(config, d: _Dist, *, resume, progress, interrupt_after, tqdm) -> TrainResult:
    from nestlearn.data import RandomWindows, SequentialWindows

    run_dir = Path(config.out_dir)
    checkpoint = None
    if resume not in ("auto", "never"):
        checkpoint = Path(resume)
        if not checkpoint.is_dir():
            raise FileNotFoundError(f"no checkpoint directory {checkpoint}")
    elif latest_checkpoint(run_dir) is not None:
        if resume == "never":
            raise ValueError(f"{run_dir} already holds checkpoints; resume or use a new "
                             f"train.out_dir")
        checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        _check_resume(run_dir, config)

    global_rows = config.data.batch_size
    if global_rows % (d.world * config.grad_accum):
        raise ValueError(f"data.batch_size ({global_rows}) must be a multiple of processes x "
                         f"train.grad_accum ({d.world} x {config.grad_accum})")
    _check_model_overrides(config)  # before the (slow) data preparation
    data = _prepare_data(config, d, progress=progress)
    tokenizer = data.tokenizer
    model = build_model(config, vocab_size=tokenizer.vocab_size).to(d.device)
    if config.data.mode == "stream" and config.model.family in ("transformer", "hope_attention") \
            and getattr(model.config, "sliding_window", None) is None:
        raise ValueError(f"data.mode=stream carries the state across windows, and the KV cache of "
                         f"global attention ({config.model.family}) would grow without bound; set "
                         f"model.sliding_window or use data.mode=random")
    if config.activation_checkpointing:
        enable_activation_checkpointing(model)
    raw = model
    tokens_per_step = global_rows * config.data.seq_len

    inner_grads = _takes_inner_grads(raw)
    if d.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type ==
                                        "cuda" else None)
    elif d.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for unit in _fsdp_units(raw):
            fully_shard(unit)
        fully_shard(raw)
        if inner_grads:
            raw.set_reshard_after_backward(False, recurse=True)
    forward_model = torch.compile(model) if config.compile == "model" else model
    params = dict(raw.named_parameters())
    # The slow levels are looked up only now: fully_shard replaces every parameter of the
    # sharded modules by a new (DTensor) nn.Parameter, so parameters collected before it are
    # stale objects that never receive a gradient. Withholding/applying the slow gradients on
    # them left the real slow level to the optimizer at every step (FSDP2 HOPE drifted by ~lr).
    slow: list[SlowLevel] = slow_levels(raw, tokens_per_step=tokens_per_step)
    slow_names = [n for level in slow for n, _ in level.params]
    if any(params[n] is not p for level in slow for n, p in level.params):
        raise RuntimeError("slow-level parameters are not the model's (sharded) parameters")
    optimizer = _optimizer(config, raw)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    sums = {n: torch.zeros_like(params[n]) for n in slow_names}

    if config.data.mode == "random":
        sampler = RandomWindows(data.train, seq_len=config.data.seq_len, batch_size=global_rows,
                                seed=config.data.seed)
    else:
        sampler = SequentialWindows(data.train, seq_len=config.data.seq_len,
                                    batch_size=global_rows, epochs=None)
    per_rank = global_rows // d.world
    micro = per_rank // config.grad_accum
    caches: list[Any] = [None] * config.grad_accum
    autocast = _autocast(config, d.device)

    step, losses, val_losses = 0, [], []
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model=None)
        _load_model(checkpoint, raw, d)
        _load_optimizer(state["optimizer"], raw, optimizer, d)
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["data"])
        for n in slow_names:
            sums[n] = _like(state["slow_sums"][n], params[n])
        torch.set_rng_state(state["rng"]["torch"])
        if d.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], d.device)
        step = int(state["step"])
        losses = [float(x) for x in state["losses"]]
        val_losses = [(int(s), float(v)) for s, v in state["val_losses"]]
        if state.get("caches"):
            caches = _restore_caches(forward_model, state["caches"][d.rank], config, micro, d)

    resumed_from = step
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_CONFIG).write_text(json.dumps(
            {"config": config_to_dict(config), "git_sha": git_sha(), "torch": torch.__version__,
             "world_size": d.world, "parallel": d.mode, "slow_levels":
             {lv.name: lv.every for lv in slow}}, indent=1) + "\n")
        _truncate_metrics(run_dir / METRICS, step)
    writer = _tensorboard(run_dir) if d.main else None
    log = open(run_dir / METRICS, "a") if d.main else None  # noqa: SIM115 - closed at the end

    def write(record: dict[str, Any]) -> None:
        if log is not None:
            log.write(json.dumps(record) + "\n")
            log.flush()
        if writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(k, v, record["step"])

    def save(at: int) -> Path | None:
        state = {
            "step": at,
            "optimizer": _optimizer_state(raw, optimizer, d),
            "scheduler": scheduler.state_dict(),
            "data": sampler.state_dict(),
            "slow_sums": {n: _full(t).cpu() for n, t in sums.items()},
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(d.device) if d.device.type == "cuda"
                    else None},
            "losses": list(losses),
            "val_losses": [list(v) for v in val_losses],
            "caches": _gather_caches(caches, d) if config.data.mode == "stream" else None,
        }
        model_state = _model_state(raw, d)
        path = None
        if d.main:
            path = save_checkpoint(run_dir, step=at, model=raw, state=state,
                                   keep=config.keep_checkpoints, meta={"git_sha": git_sha()},
                                   model_state=model_state, tokenizer=tokenizer)
        d.barrier()
        return path

    def run_eval(at: int) -> float:
        result = evaluate(forward_model if d.mode == "fsdp" else raw, data.validation,
                          seq_len=config.data.seq_len,
                          batch_size=config.data.batch_size // config.grad_accum,
                          max_batches=config.eval_batches, device=d.device, autocast=autocast)
        if d.mode == "fsdp" and inner_grads:
            _reshard(raw)
        val_losses.append((at, result.loss))
        write({"step": at, "val_loss": result.loss, "val_ppl": result.perplexity})
        return result.loss

    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step", disable=not progress,
               dynamic_ncols=True)
    start_time, start_step, last_time = None, step, time.perf_counter()
    interrupted = False
    forward_model.train()
    with _StopRequest() as stop:
        while step < config.steps:
            batch = next(sampler)
            rows = slice(d.rank * per_rank, (d.rank + 1) * per_rank)
            x_all, y_all = batch.inputs[rows].to(d.device), batch.targets[rows].to(d.device)
            loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
            for i in range(config.grad_accum):
                x, y = x_all[i * micro:(i + 1) * micro], y_all[i * micro:(i + 1) * micro]
                sync = (i == config.grad_accum - 1 or d.mode != "ddp")
                with (contextlib.nullcontext() if sync else model.no_sync()), autocast():
                    stream = config.data.mode == "stream"
                    out = forward_model(x, use_cache=stream, past_key_values=caches[i])
                    loss = _token_losses(out.logits, y).mean()
                (loss / config.grad_accum).backward()
                if stream:
                    caches[i] = output_cache(out).detach()
                loss_sum += loss.detach().double()
            if d.world > 1:
                dist.all_reduce(loss_sum)
            step_loss = float(loss_sum) / (config.grad_accum * d.world)
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"training loss is {step_loss} at step {step + 1}")

            if d.mode == "fsdp" and inner_grads:
                _reshard(raw)  # before clipping, the optimizer and any state dict
            grads = [p for p in raw.parameters() if p.grad is not None]
            if config.optim.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(grads, config.optim.grad_clip)
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in grads])
            step += 1
            for level in slow:
                apply = step % level.every == 0
                for n, p in level.params:
                    if p.grad is not None:
                        sums[n] += p.grad
                    p.grad = None
                    if apply:
                        p.grad, sums[n] = sums[n], torch.zeros_like(sums[n])
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss)

            now = time.perf_counter()
            if start_time is None:
                start_time = now  # throughput excludes the first step (warm-up, compilation)
            rate = tokens_per_step / max(now - last_time, 1e-9)
            last_time = now
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{rate:,.0f}", refresh=False)
            if step % config.log_every == 0 or step == config.steps:
                write({"step": step, "loss": step_loss, "lr": lr, "grad_norm": float(norm),
                       "tokens": step * tokens_per_step, "tokens_per_s": rate})
            if config.eval_every and step % config.eval_every == 0 and step < config.steps:
                run_eval(step)
            last = step == config.steps
            if (config.checkpoint_every and step % config.checkpoint_every == 0) or last:
                if last:
                    run_eval(step)
                save(step)
            if interrupt_after is not None and step - start_step >= interrupt_after and not last:
                interrupted = True
                break
            stop_now = torch.tensor(float(stop.requested), device=d.device)
            if d.world > 1:
                dist.all_reduce(stop_now)
            if stop_now.item() and not last:
                if not (config.checkpoint_every and step % config.checkpoint_every == 0):
                    save(step)
                interrupted = True
                break
    bar.close()
    elapsed = (time.perf_counter() - start_time) if start_time is not None else 0.0
    done = step - start_step - 1
    tps = done * tokens_per_step / elapsed if done > 0 and elapsed > 0 else 0.0
    model_dir = None
    if d.main and not interrupted:
        model_dir = run_dir / "model"
        with quiet_save():
            raw.save_pretrained(model_dir, state_dict=_model_state(raw, d) if d.mode == "fsdp"
                                else None)
        tokenizer.save(model_dir)
        _plot(run_dir, losses, val_losses, title=f"{config.model.family} {config.model.size}")
    elif d.mode == "fsdp" and not interrupted:
        _model_state(raw, d)
    if log is not None:
        log.close()
    if writer is not None:
        writer.close()
    return TrainResult(run_dir=run_dir, step=step, losses=losses, val_losses=val_losses,
                       tokens_per_second=tps, model_dir=model_dir, resumed_from=resumed_from,
                       interrupted=interrupted, rank=d.rank)


# ---------------------------------------------------------------------------------------------
# Helpers: state dicts under DDP / FSDP2, stream caches, metrics, plots


def _fsdp_units(raw: nn.Module) -> list[nn.Module]:
    """The modules sharded one by one under FSDP2 (the rest belong to the root's group, whose
    parameters stay gathered from the forward to the end of the backward): every block, except
    that a HOPE block with in-context CMS levels gives only its mixer. Those levels' weights are
    read by ``HopeModel`` itself (``cms.fast_tensors``, outside the block's forward, before its
    pre-forward all-gather), so they must be gathered for the whole forward."""
    return [block.mixer if _in_context_cms(block) else block for block in raw.model.layers]


def _in_context_cms(block: nn.Module) -> bool:
    cms = getattr(block, "cms", None)
    return bool(cms is not None and cms.in_context)


def _takes_inner_grads(raw: nn.Module) -> bool:
    """True for HOPE with in-context CMS levels: its forward differentiates the chunk losses
    w.r.t. the fast weights (``torch.autograd.grad`` inside the forward, ``HopeModel``).

    Under FSDP2 such an inner backward runs the FSDP backward hooks and the root's end-of-backward
    callback, which reshard every group (freeing the gathered storage) in the middle of the
    forward: the next read of a fast weight expanded from a gathered parameter used freed memory
    (a segfault, or a DTensor/Tensor mix). So for these models the groups are not resharded
    after a backward (``set_reshard_after_backward(False)``) and :func:`_reshard` frees them
    explicitly once the training step's (or evaluation's) forward and backward are done; between
    those points no parameter changes, so the kept gathered copies are current."""
    return any(_in_context_cms(b) for b in raw.model.layers)


def _reshard(raw: nn.Module) -> None:
    from torch.distributed.fsdp import FSDPModule

    for m in raw.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def _like(saved: Tensor, param: Tensor) -> Tensor:
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(saved.to(param.dtype), param.device_mesh, param.placements)
    return saved.to(device=param.device, dtype=param.dtype)


def _model_state(raw: nn.Module, d: _Dist) -> dict[str, Tensor] | None:
    """The full (unsharded) state dict under FSDP2 (a collective: every rank calls it)."""
    if d.mode != "fsdp":
        return None
    return {n: _full(t).detach().cpu() for n, t in raw.state_dict().items()}


def _optimizer_state(raw: nn.Module, optimizer, d: _Dist) -> dict[str, Any]:
    state = optimizer.state_dict()
    if d.mode == "fsdp":  # gather sharded moments (same order on every rank)
        state["state"] = {i: {k: _full(v).cpu() if isinstance(v, Tensor) else v
                              for k, v in s.items()} for i, s in state["state"].items()}
    return state


def _load_model(checkpoint: Path, raw: nn.Module, d: _Dist) -> None:
    from nestlearn.train.checkpoint import load_weights

    if d.mode != "fsdp":
        load_weights(checkpoint, raw)
        return
    from safetensors.torch import load_file

    full = load_file(checkpoint / "model.safetensors")
    with torch.no_grad():
        for n, t in raw.state_dict().items():
            if n in full:
                t.copy_(_like(full[n], t))


def _load_optimizer(state: dict[str, Any], raw: nn.Module, optimizer, d: _Dist) -> None:
    try:
        if d.mode == "fsdp":  # re-shard the full moments like their parameters
            params = [p for g in optimizer.param_groups for p in g["params"]]
            state = {**state, "state": {
                i: {k: _like(v, params[int(i)]) if isinstance(v, Tensor) and v.ndim
                    and v.shape == params[int(i)].shape else v for k, v in s.items()}
                for i, s in state["state"].items()}}
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, IndexError, RuntimeError) as err:
        raise ValueError(f"the checkpoint's optimizer state does not fit: {err}") from None


def _gather_caches(caches: list[Any], d: _Dist) -> list[list[list[Tensor]]] | None:
    mine = [[torch.tensor(c.num_seen_tokens), *(t.detach().cpu() for t in _cache_tensors(c))]
            if c is not None else [] for c in caches]
    if d.world == 1:
        return [mine]
    everyone: list[Any] = [None] * d.world
    dist.all_gather_object(everyone, mine)  # tensors and lists only; rank 0 writes them
    return everyone


def _restore_caches(forward_model, saved: list[list[Tensor]], config, micro, d: _Dist):
    """Rebuild the carried states: a throw-away forward gives the cache's structure."""
    caches = []
    for tensors in saved:
        if not tensors:
            caches.append(None)
            continue
        probe = torch.zeros(micro, config.data.seq_len, dtype=torch.long, device=d.device)
        with torch.no_grad():
            cache = output_cache(forward_model(probe, use_cache=True))
        _restore_cache(cache, tensors[1:])
        cache.num_seen_tokens = int(tensors[0])
        caches.append(cache)
    return caches


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


def _plot(run_dir: Path, losses: list[float], val_losses: list[tuple[int, float]], *,
          title: str) -> Path | None:
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
