"""Checkpoints: written atomically, the latest N kept, loaded without unpickling.

Layout of ``<run>/checkpoints/step-00000020/``::

    config.json, model.safetensors    save_pretrained output (what from_pretrained loads)
    tokenizer.json                    the run's tokenizer
    training_state.pt                 optimizer, scheduler, RNG, data position, step, slow-level
                                      gradient sums, carried memory state; torch.load(weights_only)
    meta.json                         {"step": 20, ...}; its presence marks a complete checkpoint

A checkpoint is built in ``.step-00000020.tmp-<pid>`` and renamed into place, so a crash leaves
either a complete checkpoint or a hidden temporary directory. Pruning renames a checkpoint to
``.step-00000020.old-<pid>`` before deleting it. Each save first removes the hidden folders whose
writer (the ``<pid>``) is dead or is this process, and ``step-*`` folders without ``meta.json``
(left by an older version killed while pruning). A full disk is a one-line :class:`DiskFullError`
naming the checkpoint that is still intact. :func:`latest_checkpoint` skips a checkpoint with a
missing file (and says so) and returns the newest intact one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CHECKPOINT_DIR",
    "DiskFullError",
    "is_disk_full",
    "latest_checkpoint",
    "missing_files",
    "note",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})$")
STATE_FILE = "training_state.pt"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
CONFIG_FILE = "config.json"
_LEFTOVER = re.compile(r"^\.step-\d{8}\.(?:tmp|old)-(\d+)$")


class DiskFullError(OSError):
    """No space left while writing a checkpoint (the message says which one is intact)."""


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


def missing_files(path: Path) -> list[str]:
    """Files of a complete checkpoint that ``path`` lacks."""
    return [f for f in (META_FILE, CONFIG_FILE, WEIGHTS_FILE, STATE_FILE)
            if not (path / f).is_file()]


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def latest_checkpoint(run_dir: str | os.PathLike[str], *,
                      note: Callable[[str], None] | None = note) -> Path | None:
    """The newest intact checkpoint of a run; each newer one with a missing file is skipped
    with a one-line ``note`` naming it (None: silently)."""
    for path in reversed(list_checkpoints(run_dir)):
        missing = missing_files(path)
        if not missing:
            return path
        if note is not None:
            note(f"skipping incomplete checkpoint {path} (missing {', '.join(missing)})")
    return None


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftover: one writer per run folder (nestlearn.train.lock)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user
    return True


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _clean(root: Path) -> None:
    """Remove hidden folders of dead writers and ``step-*`` folders without ``meta.json``."""
    for path in root.iterdir():
        if m := _LEFTOVER.match(path.name):
            if not _writer_alive(int(m.group(1))):
                _remove(path)
        elif _NAME.match(path.name) and not (path / META_FILE).is_file():
            _remove(path)


def _discard(path: Path) -> None:
    """Delete a checkpoint: renamed out of ``step-*`` first, so a kill midway leaves a hidden
    folder of a dead writer, never a half-deleted checkpoint."""
    trash = path.parent / f".{path.name}.old-{os.getpid()}"
    path.rename(trash)
    _fsync_dir(path.parent)
    _remove(trash)


def is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    # torch.save reports a short write from C++ as a RuntimeError ("unexpected pos")
    text = str(err)
    return isinstance(err, RuntimeError) and ("unexpected pos" in text
                                              or "file write failed" in text)


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
    _clean(root)
    final = root / f"step-{step:08d}"
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        _write(tmp, step=step, model=model, state=state, meta=meta, model_state=model_state,
               tokenizer=tokenizer)
    except Exception as err:
        _remove(tmp)
        if not is_disk_full(err):
            raise
        intact = latest_checkpoint(run_dir, note=None)
        kept = (f"the previous checkpoint {intact} is intact" if intact is not None
                else "no earlier checkpoint exists")
        raise DiskFullError(f"disk full while writing checkpoint {final.name} in {root}; "
                            f"{kept}; free space and run the same command to resume") from None
    if final.exists():
        _discard(final)
    tmp.rename(final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep]:
        _discard(old)
    return final


def _write(tmp: Path, *, step: int, model: nn.Module, state: dict[str, Any],
           meta: dict[str, Any] | None, model_state: dict[str, torch.Tensor] | None,
           tokenizer: Any) -> None:
    """The files of a checkpoint, ``meta.json`` last, then synced to disk."""
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
        raise ValueError(f"corrupt or untrusted checkpoint {file}: {_load_failure(err)}; it was "
                         f"not loaded") from None


def _load_failure(err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, without torch's advice to retry with
    ``weights_only=False`` (which would unpickle arbitrary code)."""
    import pickle

    text = _one_line(err)
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in text.lower().replace(" ", "_"):
        return "it holds objects other than tensors and plain Python values"
    return text


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
