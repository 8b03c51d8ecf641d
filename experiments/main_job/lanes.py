"""The training lanes: threads that run ``nestlearn train`` / ``nestlearn eval`` child processes.

A lane trains and evaluates its model families one after another; the lanes run in parallel.
The time limit stops a running training through its SIGTERM path (it finishes the step, saves a
checkpoint and exits with 130).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from experiments.main_job.config import PROBE_STEPS, MainJob

__all__ = ["Lane", "ProbeLane", "drive", "lane_families", "train_all"]


class Lane(threading.Thread):
    """Trains and evaluates its families one after another in child processes.

    ``status[family]`` is ``"training"`` while the family trains, then its outcome;
    ``elapsed[family]`` the seconds its training took."""

    def __init__(self, job: MainJob, families: list[str], deadline: float | None,
                 steps: int) -> None:
        super().__init__(daemon=True)
        self.job, self.families, self.deadline, self.steps = job, families, deadline, steps
        self.current: subprocess.Popen | None = None
        self.stoppable = False
        """True while the child is a training (the time limit stops trainings, which save a
        checkpoint; an evaluation is never stopped: it would leave a trained model unscored)."""
        self.status: dict[str, str] = {}
        self.elapsed: dict[str, float] = {}
        self.error: str | None = None
        self._lock = threading.Lock()

    def _run(self, cmd: list[str], log: Path, *, stoppable: bool = False) -> int:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.job.threads),
               "MKL_NUM_THREADS": str(self.job.threads)}
        with open(log, "a") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            with self._lock:
                self.current = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
                self.stoppable = stoppable
            code = self.current.wait()
            with self._lock:
                self.current, self.stoppable = None, False
        return code

    def _train_cmd(self, family: str, sets: list[str]) -> list[str]:
        return [sys.executable, "-m", "nestlearn", "train", self.job.recipe, "--family", family,
                "--quiet", "--set", *sets]

    def stop(self) -> None:
        """SIGTERM the running child: a training saves a checkpoint at the end of its step."""
        with self._lock:
            if self.current is not None and self.stoppable and self.current.poll() is None:
                self.current.send_signal(signal.SIGTERM)

    def run(self) -> None:
        try:
            for family in self.families:
                self._train_and_evaluate(family)
        except Exception as err:  # noqa: BLE001 - reported by the main thread
            self.error = str(err)

    def _train_and_evaluate(self, family: str) -> None:
        run_dir = Path(self.job.out) / "runs" / family
        run_dir.mkdir(parents=True, exist_ok=True)
        log = run_dir / "train.log"
        if self.deadline is not None and time.monotonic() > self.deadline \
                and not (run_dir / "model" / "model.safetensors").is_file():
            self.status[family] = "skipped (time limit)"
            return
        start = time.monotonic()
        self.status[family] = "training"
        code = self._run(self._train_cmd(family, self.job.overrides(family, self.steps)), log,
                         stoppable=True)
        self.elapsed[family] = time.monotonic() - start
        diverged = diverged_message(log)
        if code not in (0, 130) and diverged is None:
            raise RuntimeError(f"training {family} failed (exit {code}); see {log}:\n"
                               + tail(log))
        self.status[family] = ("trained" if code == 0 else "stopped (time limit)"
                               if code == 130 else f"diverged ({diverged})")
        if code not in (0, 130) and not (run_dir / "checkpoints").is_dir():
            # diverged before its first checkpoint: nothing to evaluate
            return
        cmd = [sys.executable, "-m", "nestlearn", "eval", str(run_dir), "--quiet",
               "--max-batches", str(self.job.eval_batches),
               "--out", str(run_dir / "eval_validation.json")]
        if self._run(cmd, log):
            raise RuntimeError(f"evaluating {family} failed; see {log}:\n" + tail(log))


class ProbeLane(Lane):
    """Trains ``PROBE_STEPS`` steps of each of its families in ``<out>/probe/<family>`` (a fresh
    run directory each time, never the real run's); ``wall_s[family]`` is the probe's wall clock
    and ``exit_codes[family]`` its exit code (``plan.probe_timing`` reads the rest)."""

    def __init__(self, job: MainJob, families: list[str], deadline: float | None) -> None:
        super().__init__(job, families, deadline, PROBE_STEPS)
        self.wall_s: dict[str, float] = {}
        self.exit_codes: dict[str, int] = {}

    def run(self) -> None:
        try:
            for family in self.families:
                self._probe(family)
        except Exception as err:  # noqa: BLE001 - reported by the main thread
            self.error = str(err)

    def _probe(self, family: str) -> None:
        run_dir = Path(self.job.out) / "probe" / family
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        # the real run's settings; evaluation (and checkpoint) after step PROBE_STEPS - 1
        sets = [*self.job.overrides(family, self.job.steps), f"train.out_dir={run_dir}",
                f"train.steps={PROBE_STEPS}", "train.log_every=1",
                f"train.eval_every={PROBE_STEPS - 1}",
                f"train.checkpoint_every={PROBE_STEPS - 1}"]
        start = time.monotonic()
        self.exit_codes[family] = self._run(self._train_cmd(family, sets), run_dir / "train.log",
                                            stoppable=True)
        self.wall_s[family] = time.monotonic() - start
        for weights in ("checkpoints", "model"):
            shutil.rmtree(run_dir / weights, ignore_errors=True)


def lane_families(job: MainJob) -> list[list[str]]:
    """The families of each lane: by default HOPE (the slowest) alone in lane 0, the rest in 1."""
    lanes: list[list[str]] = [[] for _ in range(min(job.lanes, len(job.families)))]
    for i, family in enumerate(job.families):
        lanes[min(i, len(lanes) - 1)].append(family)
    return lanes


def drive(lanes: Sequence[Lane], deadline: float | None,
          tick: Callable[[], None] | None = None) -> None:
    """Run the lanes to their end, SIGTERMing their children once ``deadline`` has passed."""
    for lane in lanes:
        lane.start()
    stopped = False
    while any(lane.is_alive() for lane in lanes):
        time.sleep(0.5)
        if tick is not None:
            tick()
        if deadline is not None and time.monotonic() > deadline and not stopped:
            stopped = True
            for lane in lanes:
                lane.stop()
    for lane in lanes:
        lane.join()
    if tick is not None:
        tick()
    errors = [lane.error for lane in lanes if lane.error]
    if errors:
        raise RuntimeError(errors[0])


def diverged_message(log: Path) -> str | None:
    """The loop's non-finite-loss message in a training log (the run stopped there), if any."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines()
             if "FloatingPointError: training loss is" in ln]
    return lines[-1].split("FloatingPointError: ", 1)[1].split(";")[0].strip() if lines else None


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def last_step(run_dir: Path) -> int:
    """The last step logged in ``run_dir/metrics.jsonl`` (0 without one)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    step = 0
    for line in path.read_text().splitlines():
        try:
            step = max(step, int(json.loads(line).get("step", 0)))
        except (json.JSONDecodeError, AttributeError, ValueError):
            continue
    return step


class _Bars:
    """One progress bar per family, each timing its own training: the bar's clock starts when
    the family starts training in its lane and stops (the bar is closed) when it ends."""

    def __init__(self, job: MainJob, lanes: Sequence[Lane], steps: int, progress: bool) -> None:
        from tqdm.auto import tqdm

        self.job, self.lanes = job, lanes
        self.bars = {f: tqdm(total=steps, desc=f"{f:<12}", unit="step", position=i, leave=True,
                             disable=not progress, dynamic_ncols=True, mininterval=1.0)
                     for i, f in enumerate(job.families)}
        self.started: set[str] = set()
        self.ended: set[str] = set()

    def tick(self) -> None:
        for lane in self.lanes:
            for f, status in list(lane.status.items()):
                bar = self.bars[f]
                if f not in self.started:
                    self.started.add(f)
                    bar.reset()  # restarts the bar's clock: this family's training starts now
                step = last_step(Path(self.job.out) / "runs" / f)
                if step > bar.n:
                    bar.update(step - bar.n)
                if status != "training" and f not in self.ended:
                    self.ended.add(f)
                    bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def train_all(job: MainJob, steps: int, deadline: float | None, *,
              progress: bool) -> dict[str, str]:
    """Train and evaluate every family of ``job`` in its lane; the status of each family."""
    lanes = [Lane(job, fams, deadline, steps) for fams in lane_families(job)]
    bars = _Bars(job, lanes, steps, progress)
    try:
        drive(lanes, deadline, bars.tick)
    finally:
        bars.close()
    return {f: s for lane in lanes for f, s in lane.status.items()}
