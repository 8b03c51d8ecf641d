"""One writer per run folder: an exclusive ``fcntl.flock`` on ``<train.out_dir>/.lock``.

The file holds the PID of the process that holds the lock (for the error message of a second
writer). The kernel drops the lock when its holder exits, also on ``kill -9``, so a stale file
never blocks a later run. Under ``torchrun`` only rank 0 locks; the other ranks learn whether it
succeeded before any of them touches the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from nestlearn.train.distributed import Dist

__all__ = ["LOCK_FILE", "RunLockedError", "run_lock"]

LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another process is writing the run folder."""


def _open_locked(run_dir: Path):
    """The lock file, opened and locked; ``RunLockedError`` naming the holder if it is taken."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"train.out_dir {run_dir} is a file, not a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 - closed by run_lock
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise RunLockedError(f"{run_dir} is in use by another training (PID {holder}); wait for "
                             f"it to finish or use another train.out_dir") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str], d: Dist | None = None) -> Iterator[None]:
    """Hold the run folder's lock for the ``with`` block (rank 0 of ``d``; released on exit,
    also on error)."""
    d = d or Dist()
    fh, error = None, None
    if d.main:
        try:
            fh = _open_locked(Path(run_dir))
        except (RunLockedError, ValueError, OSError) as err:
            error = err
    failed = d.all_reduce(torch.tensor(float(error is not None), device=d.device))
    if error is not None:
        raise error
    if failed.item():
        raise RunLockedError(f"rank 0 could not lock {run_dir}")
    try:
        yield
    finally:
        if fh is not None:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
