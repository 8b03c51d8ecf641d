"""Checkpoints: written atomically, the latest N kept, loaded without unpickling.

Layout of ``<run>/checkpoints/step-00000020/``::

    config.json, model.safetensors    save_pretrained output (what from_pretrained loads)
    tokenizer.json                    the run's tokenizer
    training_state.pt                 optimizer, scheduler, RNG, data position, step, slow-level
                                      gradient sums, carried memory state; torch.load(weights_only)
    meta.json                         {"step": 20, ...}; its presence marks a complete checkpoint

A checkpoint is built in ``.step-00000020.tmp-<pid>`` and renamed into place, so a crash leaves
either a complete checkpoint or a hidden temporary directory (removed by the next save).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CHECKPOINT_DIR",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})$")
STATE_FILE = "training_state.pt"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _NAME.match(p.name)) and (p / META_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    *,
    step: int,
    model: nn.Module,
    state: dict[str, Any],
    keep: int,
    meta: dict[str, Any] | None = None,
    model_state: dict[str, torch.Tensor] | None = None,
    tokenizer: Any = None,
) -> Path:
    """Write ``<run_dir>/checkpoints/step-<step>/`` atomically; keep the latest ``keep``.

    ``model`` is saved with ``save_pretrained`` (``model_state`` replaces its state dict, e.g. a
    gathered FSDP state); ``state`` (tensors and plain Python values) with ``torch.save``;
    ``tokenizer`` (anything with ``save(dir)``) beside them.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    with quiet_save():
        model.save_pretrained(tmp, state_dict=model_state)
    torch.save(state, tmp / STATE_FILE)
    if tokenizer is not None:
        tokenizer.save(tmp)
    (tmp / META_FILE).write_text(json.dumps({"step": step, **(meta or {})}, indent=1))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():
        old = root / f".{final.name}.old-{os.getpid()}"
        final.rename(old)
        shutil.rmtree(old)
    tmp.rename(final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


@contextlib.contextmanager
def quiet_save():
    """Hide the ``transformers`` progress bar of ``save_pretrained`` (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def load_checkpoint(
    path: str | os.PathLike[str], *, model: nn.Module | None = None
) -> dict[str, Any]:
    """Load the training state of checkpoint ``path`` (and its weights into ``model``).

    Only safetensors and ``torch.load(weights_only=True)`` are used. A missing or damaged
    checkpoint is a one-line ``ValueError`` / ``FileNotFoundError`` naming the file.
    """
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (missing {META_FILE})")
    if model is not None:
        load_weights(path, model)
    file = path / STATE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"corrupt checkpoint: {file} is missing")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read the file is a corrupt checkpoint
        raise ValueError(f"corrupt checkpoint {file}: {_one_line(err)}") from None


def load_weights(path: str | os.PathLike[str], model: nn.Module) -> None:
    """Copy ``model.safetensors`` of checkpoint/model directory ``path`` into ``model``."""
    from safetensors.torch import load_file

    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"corrupt checkpoint: {file} is missing")
    try:
        tensors = load_file(file)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"corrupt checkpoint {file}: {_one_line(err)}") from None
    own = model.state_dict()
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [k for k in own if k not in tensors and k not in tied]
    unexpected = [k for k in tensors if k not in own]
    if missing or unexpected:
        raise ValueError(f"checkpoint {file} does not match the model: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    for k, t in tensors.items():
        if own[k].shape != t.shape:
            raise ValueError(f"checkpoint {file} does not match the model: {k} has shape "
                             f"{tuple(t.shape)}, the model {tuple(own[k].shape)}")
    with torch.no_grad():
        for k, t in tensors.items():
            own[k].copy_(t)
