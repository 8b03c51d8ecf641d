"""Processes and parallelism of the training loop: process-group set-up, DDP / FSDP2 wrapping
and full (gathered) state dicts for checkpoints.

One code path for one process and for ``torchrun`` (gloo on CPU, NCCL on GPU). Under
``train.parallel=fsdp`` the model's ``fsdp_units()`` are sharded one by one, then the root; a
model whose forward takes inner gradients (``model.takes_inner_grads``) keeps its groups gathered
after a backward and is resharded explicitly with :func:`reshard` (see
``nestlearn.models.hope.parallelize``). Checkpoints always hold full tensors, re-sharded on load.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from nestlearn.train.config import TrainConfig

__all__ = ["Dist", "Parallel", "full", "like", "load_model", "load_optimizer", "model_state",
           "optimizer_state", "parallelize", "reshard", "setup_distributed", "teardown_distributed"]


@dataclass
class Dist:
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

    def all_reduce(self, t: Tensor) -> Tensor:
        """Sum ``t`` over the processes in place (nothing in one process)."""
        if self.world > 1:
            dist.all_reduce(t)
        return t


def setup_distributed(config: TrainConfig) -> Dist:
    """This process's rank, world size, parallel mode and device (``torchrun`` environment);
    initialises the process group when the mode needs one."""
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
    return Dist(rank=rank, world=world, mode=mode, device=device)


def teardown_distributed(d: Dist) -> None:
    if d.mode != "none" and dist.is_initialized():
        dist.destroy_process_group()


@dataclass
class Parallel:
    """The model in its three roles: ``raw`` (parameters, state dicts, ``save_pretrained``),
    ``model`` (the DDP wrapper, else ``raw``) and ``forward`` (``model``, compiled if asked)."""

    raw: nn.Module
    model: nn.Module
    forward: nn.Module
    d: Dist
    inner_grads: bool
    """FSDP2 with a model that takes inner gradients: groups are resharded by :meth:`reshard`."""

    def no_sync(self, sync: bool):
        """DDP's ``no_sync`` for a micro-batch that is not the step's last."""
        return contextlib.nullcontext() if sync else self.model.no_sync()

    def eval_model(self) -> nn.Module:
        return self.forward if self.d.mode == "fsdp" else self.raw

    def reshard(self) -> None:
        """After a forward and backward (or an evaluation) of a model taking inner gradients
        under FSDP2; nothing otherwise."""
        if self.d.mode == "fsdp" and self.inner_grads:
            reshard(self.raw)


def parallelize(raw: nn.Module, config: TrainConfig, d: Dist) -> Parallel:
    """Wrap ``raw`` for ``d.mode`` (DDP, or FSDP2 over ``raw.fsdp_units()`` then the root) and
    compile it if ``train.compile=model``."""
    model = raw
    inner_grads = raw.takes_inner_grads
    if d.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(raw, device_ids=[d.device.index] if d.device.type ==
                                        "cuda" else None)
    elif d.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for unit in raw.fsdp_units():
            fully_shard(unit)
        fully_shard(raw)
        if inner_grads:
            raw.set_reshard_after_backward(False, recurse=True)
    forward = torch.compile(model) if config.compile == "model" else model
    return Parallel(raw=raw, model=model, forward=forward, d=d,
                    inner_grads=d.mode == "fsdp" and inner_grads)


def reshard(raw: nn.Module) -> None:
    from torch.distributed.fsdp import FSDPModule

    for m in raw.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def full(t: Tensor) -> Tensor:
    """The whole tensor of a (possibly sharded) DTensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def like(saved: Tensor, param: Tensor) -> Tensor:
    """``saved`` (a full tensor) placed like ``param``: sharded the same way, same dtype."""
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(saved.to(param.dtype), param.device_mesh, param.placements)
    return saved.to(device=param.device, dtype=param.dtype)


def model_state(raw: nn.Module, d: Dist) -> dict[str, Tensor] | None:
    """The full (unsharded) state dict under FSDP2 (a collective: every rank calls it)."""
    if d.mode != "fsdp":
        return None
    return {n: full(t).detach().cpu() for n, t in raw.state_dict().items()}


def optimizer_state(optimizer, d: Dist) -> dict[str, Any]:
    state = optimizer.state_dict()
    if d.mode == "fsdp":  # gather sharded moments (same order on every rank)
        state["state"] = {i: {k: full(v).cpu() if isinstance(v, Tensor) else v
                              for k, v in s.items()} for i, s in state["state"].items()}
    return state


def load_model(checkpoint: Path, raw: nn.Module, d: Dist) -> None:
    from nestlearn.train.checkpoint import load_weights

    if d.mode != "fsdp":
        load_weights(checkpoint, raw)
        return
    from safetensors.torch import load_file

    saved = load_file(checkpoint / "model.safetensors")
    with torch.no_grad():
        for n, t in raw.state_dict().items():
            if n in saved:
                t.copy_(like(saved[n], t))


def load_optimizer(state: dict[str, Any], optimizer, d: Dist) -> None:
    try:
        if d.mode == "fsdp":  # re-shard the full moments like their parameters
            params = [p for g in optimizer.param_groups for p in g["params"]]
            state = {**state, "state": {
                i: {k: like(v, params[int(i)]) if isinstance(v, Tensor) and v.ndim
                    and v.shape == params[int(i)].shape else v for k, v in s.items()}
                for i, s in state["state"].items()}}
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, IndexError, RuntimeError) as err:
        raise ValueError(f"the checkpoint's optimizer state does not fit: {err}") from None
