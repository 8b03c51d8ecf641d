"""The main job (``nestlearn main``; ``bash scripts/main.sh``): a small Table 2 on a CPU.

It trains the ``tiny`` presets of HOPE, Transformer++ and Titans (equal parameter count, within
1.3%) on the bundled default corpus (Shakespeare + the Wikipedia sample, byte-level BPE 4096)
for the same number of tokens with the same optimizer and schedule, evaluates each on the same
validation windows, compares them with a unigram model fitted on the training split, and writes

    <out>/report.md      the table, the level table of HOPE, generated samples, how to reproduce
    <out>/loss.png       training loss and validation loss of the three models
    <out>/context.png    validation loss by position in the window (NL Fig. 10's context curve)
    <out>/results.json   every number of the report
    <out>/runs/<family>/ the training runs (checkpoints, metrics.jsonl, model/, train.log)
    <out>/calibration.json  the step count N of every run and how the probe chose it
    <out>/probe/<family>/   the probe's short runs (train.log, metrics.jsonl; weights deleted)

Runs are ordinary ``nestlearn train`` runs: running the job again reuses finished runs and resumes
interrupted ones. The models train in ``lanes`` parallel processes of ``threads`` threads each
(default 2 x 1: on two cores, HOPE's sequential chunk loop gains little from a second thread, so
HOPE trains in one process while Transformer++ and then Titans train in the other).

``time_limit`` (minutes, wall clock, default 12) guards the 15-minute budget on a slow machine.
So that every model still trains the same number of steps, a calibration probe (``calibrate``,
:func:`_plan`) first trains ``PROBE_STEPS`` steps of each model with the real run's command and
settings, in ``<out>/probe/<family>/`` and in the same lanes (so the same start-up cost, threads
and contention), and reads seconds per step, per evaluation and per process start from the
probe's ``metrics.jsonl`` and wall clock. :func:`calibrated_steps` (pure) then picks the largest
``N <= steps`` whose predicted makespan (per lane: its models' ``N`` x seconds per step plus
start-up and evaluations, the slowest lane deciding) fills at most ``BUDGET_FRACTION`` of the time
left after the probe (the limit's clock starts before the probe); all models train ``N`` steps,
at least ``MIN_STEPS``. Warm-up scales with ``N / steps``; evaluations (4) and checkpoints (8)
keep their number. ``calibrate=False`` or no time limit: no probe, ``steps``. The time limit
stays the safety net: a training still running when it passes is stopped through its SIGTERM
path (it finishes the step, saves a checkpoint and exits), evaluated from that checkpoint, and
the report says so. The plan is recorded in ``<out>/calibration.json``: a later invocation
whose runs already started reuses it without probing (same ``N``, warm-up and schedule, so
finished runs are reused and stopped ones resume); delete ``<out>/runs`` to plan afresh.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MainJob", "calibrated_steps", "predicted_makespan", "run_main_job"]

FAMILY_NAMES = {"hope": "HOPE", "transformer": "Transformer++", "titans": "Titans (LMM)"}
PROBE_STEPS = 4
"""Steps of a probe run: 1 warm-up, 2 timed, 1 timed after an evaluation (:func:`_probe_timing`)."""
BUDGET_FRACTION = 0.85
"""Share of the time left after the probe that the planned training may fill (the rest absorbs
the error of a prediction from two timed steps)."""
MIN_STEPS = 10
"""Steps trained when not even these fit the time limit (the limit then stops what runs over)."""
TRAIN_EVALS = 4
"""Validation evaluations during a run (3 intermediate + the final one, for any step count)."""


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
    threads: int = 1
    time_limit: float = 12.0
    """Minutes of wall clock for the probe and training before running trainings are stopped
    (0: none)."""
    calibrate: bool = True
    """With a time limit, probe each model's speed first and train every model the same number
    of steps that fits the limit (at most ``steps``); False: ``steps``, the limit stops the rest."""
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
        for name in ("steps", "seq_len", "batch_size", "eval_batches", "lanes", "threads",
                     "sample_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (self.time_limit >= 0):
            raise ValueError(f"time_limit must be >= 0 minutes, got {self.time_limit!r}")
        if not isinstance(self.calibrate, bool):
            raise ValueError(f"calibrate must be True or False, got {self.calibrate!r}")

    def warmup(self, steps: int) -> int:
        """Warm-up steps of a run of ``steps`` steps: ``warmup_steps`` scaled by
        ``steps / self.steps`` (rounded, at least 1 unless ``warmup_steps`` is 0)."""
        if steps >= self.steps or self.warmup_steps <= 0:
            return self.warmup_steps
        return max(1, round(self.warmup_steps * steps / self.steps))

    def overrides(self, family: str, steps: int | None = None) -> list[str]:
        """The ``--set`` overrides of ``family``'s run of ``steps`` (default ``self.steps``):
        warm-up scaled to it (:meth:`warmup`), ``TRAIN_EVALS`` evaluations, 8 checkpoints."""
        steps = self.steps if steps is None else steps
        out = Path(self.out) / "runs" / family
        return [f"train.out_dir={out}", f"train.steps={steps}",
                f"data.seq_len={self.seq_len}", f"data.batch_size={self.batch_size}",
                f"optim.lr={self.lr}", f"optim.warmup_steps={self.warmup(steps)}",
                "train.log_every=5", f"train.eval_every={-(-steps // TRAIN_EVALS)}",
                "train.eval_batches=4", f"train.checkpoint_every={-(-steps // 8)}",
                "train.keep_checkpoints=2", "train.precision=fp32", *self.extra]


# ---------------------------------------------------------------------------------------------
# Training lanes


class _Lane(threading.Thread):
    """Trains and evaluates its families one after another in child processes."""

    def __init__(self, job: MainJob, families: list[str], deadline: float | None,
                 steps: int) -> None:
        super().__init__(daemon=True)
        self.job, self.families, self.deadline, self.steps = job, families, deadline, steps
        self.current: subprocess.Popen | None = None
        self.status: dict[str, str] = {}
        self.error: str | None = None
        self._lock = threading.Lock()

    def _run(self, cmd: list[str], log: Path) -> int:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.job.threads),
               "MKL_NUM_THREADS": str(self.job.threads)}
        with open(log, "a") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            with self._lock:
                self.current = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
            code = self.current.wait()
            with self._lock:
                self.current = None
        return code

    def _train_cmd(self, family: str, sets: list[str]) -> list[str]:
        return [sys.executable, "-m", "nestlearn", "train", self.job.recipe, "--family", family,
                "--quiet", "--set", *sets]

    def stop(self) -> None:
        """SIGTERM the running child: a training saves a checkpoint at the end of its step."""
        with self._lock:
            if self.current is not None and self.current.poll() is None:
                self.current.send_signal(signal.SIGTERM)

    def run(self) -> None:
        try:
            for family in self.families:
                run_dir = Path(self.job.out) / "runs" / family
                run_dir.mkdir(parents=True, exist_ok=True)
                log = run_dir / "train.log"
                if self.deadline is not None and time.monotonic() > self.deadline \
                        and not (run_dir / "model" / "model.safetensors").is_file():
                    self.status[family] = "skipped (time limit)"
                    continue
                self.status[family] = "training"
                code = self._run(self._train_cmd(family, self.job.overrides(family, self.steps)),
                                 log)
                diverged = _diverged(log)
                if code not in (0, 130) and diverged is None:
                    raise RuntimeError(f"training {family} failed (exit {code}); see {log}:\n"
                                       + _tail(log))
                self.status[family] = ("trained" if code == 0 else "stopped (time limit)"
                                       if code == 130 else f"diverged ({diverged})")
                if code not in (0, 130) and not (run_dir / "checkpoints").is_dir():
                    continue  # diverged before its first checkpoint: nothing to evaluate
                cmd = [sys.executable, "-m", "nestlearn", "eval", str(run_dir), "--quiet",
                       "--max-batches", str(self.job.eval_batches),
                       "--out", str(run_dir / "eval_validation.json")]
                if self._run(cmd, log):
                    raise RuntimeError(f"evaluating {family} failed; see {log}:\n" + _tail(log))
        except Exception as err:  # noqa: BLE001 - reported by the main thread
            self.error = str(err)


class _ProbeLane(_Lane):
    """Trains ``PROBE_STEPS`` steps of each of its families in ``<out>/probe/<family>`` (a fresh
    run directory each time, never the real run's) and times them (:func:`_probe_timing`)."""

    def __init__(self, job: MainJob, families: list[str], deadline: float | None) -> None:
        super().__init__(job, families, deadline, PROBE_STEPS)
        self.timings: dict[str, dict[str, float]] = {}

    def run(self) -> None:
        try:
            for family in self.families:
                run_dir = Path(self.job.out) / "probe" / family
                shutil.rmtree(run_dir, ignore_errors=True)
                run_dir.mkdir(parents=True)
                # the real run's settings; evaluation (and checkpoint) after step PROBE_STEPS - 1
                sets = [*self.job.overrides(family, self.job.steps), f"train.out_dir={run_dir}",
                        f"train.steps={PROBE_STEPS}", "train.log_every=1",
                        f"train.eval_every={PROBE_STEPS - 1}",
                        f"train.checkpoint_every={PROBE_STEPS - 1}"]
                start = time.monotonic()
                code = self._run(self._train_cmd(family, sets), run_dir / "train.log")
                timing = _probe_timing(run_dir, time.monotonic() - start) if code == 0 else None
                if timing is None:
                    self.status[family] = f"not timed (exit {code}, see {run_dir / 'train.log'})"
                else:
                    self.timings[family] = timing
                for weights in ("checkpoints", "model"):
                    shutil.rmtree(run_dir / weights, ignore_errors=True)
        except Exception as err:  # noqa: BLE001 - reported by the main thread
            self.error = str(err)


def _probe_timing(run_dir: Path, wall_s: float) -> dict[str, float] | None:
    """Seconds of a probe run, from the per-step ``tokens_per_s`` of its ``metrics.jsonl`` (the
    interval from the end of one step to the end of the next) and the process's wall clock:

    * ``step``: the mean of steps 2 and 3;
    * ``first_step``: what step 1 takes beyond that (warm-up);
    * ``evaluation``: step 4 minus a step: the evaluation of ``train.eval_batches`` batches and
      the checkpoint after step 3;
    * ``process``: the rest of the wall clock minus the final evaluation: start-up (imports,
      token cache, model) and the final save;
    * ``eval_batches``: the batches of one evaluation.

    None when the run logged fewer than ``PROBE_STEPS`` steps."""
    sec: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("tokens_per_s"):
            sec[int(r["step"])] = r["tokens"] / r["step"] / r["tokens_per_s"]
    if any(i not in sec for i in range(1, PROBE_STEPS + 1)):
        return None
    step = (sec[2] + sec[3]) / 2
    evaluation = max(0.0, sec[4] - step)
    config = json.loads((run_dir / "train_config.json").read_text())["config"]
    return {"step": step, "first_step": max(0.0, sec[1] - step), "evaluation": evaluation,
            "process": max(0.0, wall_s - sum(sec.values()) - evaluation),
            "eval_batches": float(config["train"]["eval_batches"])}


def _run_overhead(timing: dict[str, float], eval_batches: int) -> float:
    """Seconds of a real run besides its steps: two processes (training, then ``nestlearn eval``
    of ``eval_batches`` batches), the first step's warm-up and ``TRAIN_EVALS`` evaluations (each
    with a checkpoint; the checkpoints between evaluations, ~0.1 s each, are not counted)."""
    per_batch = timing["evaluation"] / max(1.0, timing["eval_batches"])
    return (2 * timing["process"] + timing["first_step"] + TRAIN_EVALS * timing["evaluation"]
            + eval_batches * per_batch)


def predicted_makespan(steps: int, sec_per_step: Mapping[str, float],
                       lanes: Sequence[Sequence[str]], overhead: Mapping[str, float]) -> float:
    """Seconds until the slowest lane is done when every family trains ``steps`` steps: a lane
    runs its families one after another, each ``steps * sec_per_step[f] + overhead[f]``."""
    return max((sum(steps * sec_per_step[f] + overhead[f] for f in lane) for lane in lanes),
               default=0.0)


def calibrated_steps(sec_per_step: Mapping[str, float], lanes: Sequence[Sequence[str]], *,
                     overhead: Mapping[str, float], limit_s: float, max_steps: int,
                     fraction: float = BUDGET_FRACTION, min_steps: int = MIN_STEPS) -> int:
    """The largest ``n <= max_steps`` whose :func:`predicted_makespan` fits ``fraction`` of
    ``limit_s`` seconds; ``min(min_steps, max_steps)`` when the largest that fits is smaller
    (fewer steps would compare little more than warm-ups; the time limit stops what overruns).

    ``lanes`` run in parallel, the families of a lane one after another; every family of
    ``lanes`` needs ``sec_per_step`` (>= 0) and ``overhead`` (seconds of start-up and
    evaluation per run, >= 0)."""
    for name, value in (("max_steps", max_steps), ("min_steps", min_steps)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not (isinstance(limit_s, (int, float)) and limit_s > 0 and math.isfinite(limit_s)):
        raise ValueError(f"limit_s must be a positive number of seconds, got {limit_s!r}")
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    for name, table in (("sec_per_step", sec_per_step), ("overhead", overhead)):
        for f in {f for lane in lanes for f in lane}:
            value = table.get(f)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}[{f!r}] must be a number >= 0 (seconds), got {value!r}")
    budget = fraction * limit_s
    n = max_steps
    for lane in lanes:
        rate = sum(sec_per_step[f] for f in lane)
        room = budget - sum(overhead[f] for f in lane)
        if room < 0:
            n = 0
        elif rate > 0:
            n = min(n, math.floor(room / rate * (1 + 1e-12)))
    return min(max_steps, max(n, min_steps))


def _started(run_dir: Path) -> bool:
    """Whether a real run has a checkpoint or its final model (its step count is then fixed)."""
    from nestlearn.train.checkpoint import latest_checkpoint

    return (run_dir / "model" / "model.safetensors").is_file() or (
        latest_checkpoint(run_dir) is not None)


def _lanes(job: MainJob) -> list[list[str]]:
    """The families of each lane: by default HOPE (the slowest) alone in lane 0, the rest in 1."""
    lanes: list[list[str]] = [[] for _ in range(min(job.lanes, len(job.families)))]
    for i, family in enumerate(job.families):
        lanes[min(i, len(lanes) - 1)].append(family)
    return lanes


def _drive(lanes: Sequence[_Lane], deadline: float | None,
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
    errors = [lane.error for lane in lanes if lane.error]
    if errors:
        raise RuntimeError(errors[0])


def _plan(job: MainJob, deadline: float | None) -> dict[str, Any]:
    """The step count of every run of this invocation and how it was chosen (written to
    ``<out>/calibration.json``; see the module docstring)."""
    out = Path(job.out)
    path = out / "calibration.json"
    plan: dict[str, Any] = {"steps": job.steps, "max_steps": job.steps, "outcome": "not calibrated",
                            "reused": False}
    if any(_started(out / "runs" / f) for f in job.families):
        saved = json.loads(path.read_text()) if path.is_file() else None
        if saved and saved.get("max_steps") == job.steps:
            print(f"[main] steps: {saved['steps']}, reused from {path} (the runs started in an "
                  f"earlier invocation)", flush=True)
            return {**saved, "reused": True}
        plan["reason"] = (f"{job.steps} steps (not calibrated: runs of an earlier invocation "
                          f"without a calibration record for --steps {job.steps} are reused)")
    elif not job.calibrate:
        plan["reason"] = f"{job.steps} steps (not calibrated: calibrate is off)"
    elif not job.time_limit or deadline is None:
        plan["reason"] = f"{job.steps} steps (not calibrated: no time limit)"
    else:
        plan.update(_probe(job, deadline))
    plan["warmup_steps"] = job.warmup(plan["steps"])
    print(f"[main] steps: {plan['reason']}", flush=True)
    path.write_text(json.dumps(plan, indent=1) + "\n")
    return plan


def _probe(job: MainJob, deadline: float) -> dict[str, Any]:
    """Time every family in its lane and plan the steps (:func:`calibrated_steps`)."""
    t0 = time.monotonic()
    print(f"[main] calibration probe: {PROBE_STEPS} steps of {', '.join(job.families)} "
          f"(logs in {Path(job.out) / 'probe'}/<family>/train.log) ...", flush=True)
    probes = [_ProbeLane(job, fams, deadline) for fams in _lanes(job)]
    _drive(probes, deadline)
    timings = {f: t for lane in probes for f, t in lane.timings.items()}
    untimed = {f: why for lane in probes for f, why in lane.status.items()}
    sec = {f: t["step"] for f, t in timings.items()}
    overhead = {f: _run_overhead(t, job.eval_batches) for f, t in timings.items()}
    lanes = [[f for f in lane if f in timings] for lane in _lanes(job)]
    left = deadline - time.monotonic()
    budget = BUDGET_FRACTION * left
    plan: dict[str, Any] = {"probe_s": time.monotonic() - t0, "sec_per_step": sec,
                            "overhead_s": overhead, "timings": timings, "untimed": untimed,
                            "limit_left_s": left, "fraction": BUDGET_FRACTION, "budget_s": budget}
    if not timings or left <= 0:
        return {**plan, "reason": f"{job.steps} steps (not calibrated: the probe timed no model"
                                  + (")" if left > 0 else " within the time limit)")}
    n = calibrated_steps(sec, lanes, overhead=overhead, limit_s=left, max_steps=job.steps,
                         fraction=BUDGET_FRACTION)
    predicted = predicted_makespan(n, sec, lanes, overhead)
    speeds = ", ".join(f"{FAMILY_NAMES.get(f, f)} {s:.2f}" for f, s in sec.items())
    fit = (f"predicted {predicted / 60:.1f} min for the slowest lane, budget {budget / 60:.1f} "
           f"min = {BUDGET_FRACTION:.0%} of the {left / 60:.1f} min left after the probe; "
           f"s/step: {speeds}")
    if predicted > budget:
        outcome, reason = "minimum", (f"not even {n} steps fit the time limit by the probe's "
                                      f"timings; training the minimum of {n} of {job.steps} steps, "
                                      f"the time limit stops what runs over ({fit})")
    elif n == job.steps:
        outcome, reason = "fits", f"all {n} steps fit the time limit ({fit})"
    else:
        outcome = "calibrated"
        reason = f"calibrated to the time limit: {n} of {job.steps} steps ({fit})"
    if untimed:
        reason += f"; not timed: {', '.join(untimed)}"
    return {**plan, "steps": n, "outcome": outcome, "predicted_s": predicted, "reason": reason}


def _diverged(log: Path) -> str | None:
    """The loop's non-finite-loss message in a training log (the run stopped there), if any."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines()
             if "FloatingPointError: training loss is" in ln]
    return lines[-1].split("FloatingPointError: ", 1)[1].strip() if lines else None


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _last_step(run_dir: Path) -> int:
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


def _train_all(job: MainJob, steps: int, deadline: float | None, *,
               progress: bool) -> dict[str, str]:
    from tqdm.auto import tqdm

    lanes = [_Lane(job, fams, deadline, steps) for fams in _lanes(job)]
    bars = {f: tqdm(total=steps, desc=f"{f:<12}", unit="step", position=i, leave=True,
                    disable=not progress, dynamic_ncols=True, mininterval=1.0)
            for i, f in enumerate(job.families)}

    def tick() -> None:
        for f, bar in bars.items():
            step = _last_step(Path(job.out) / "runs" / f)
            if step > bar.n:
                bar.update(step - bar.n)

    try:
        _drive(lanes, deadline, tick)
    finally:
        for bar in bars.values():
            bar.close()
    return {f: s for lane in lanes for f, s in lane.status.items()}


# ---------------------------------------------------------------------------------------------
# Report


def _metrics(run_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]], list[float]]:
    train, val, rates = [], [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            train.append((r["step"], r["loss"]))
            if r["step"] > 5:  # the first logged interval includes warm-up
                rates.append(r["tokens_per_s"])
        if "val_loss" in r:
            val.append((r["step"], r["val_loss"]))
    return train, val, rates


def _sample(model, tokenizer, prompt: str, tokens: int) -> str:
    import torch

    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return "(no sample: the evaluated weights are not finite)"
    ids = [tokenizer.eot_id, *tokenizer.encode(prompt)]
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=tokens, do_sample=True,
                             temperature=0.8, top_k=40, eos_token_id=tokenizer.eot_id,
                             pad_token_id=tokenizer.eot_id)
    return prompt + tokenizer.decode(out[0, len(ids):].tolist())


def _plots(out: Path, results: dict[str, Any], unigram: float) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for f, r in results["models"].items():
        if not r["train_curve"]:
            continue
        steps, losses = zip(*r["train_curve"], strict=True)
        line, = ax.plot(steps, losses, label=f"{FAMILY_NAMES.get(f, f)} (train)", alpha=0.8)
        if r["val_curve"]:
            vs, vl = zip(*r["val_curve"], strict=True)
            ax.plot(vs, vl, "o--", color=line.get_color(), label=f"{FAMILY_NAMES.get(f, f)} (val)")
    ax.axhline(unigram, color="gray", ls=":", label=f"unigram (val) {unigram:.2f}")
    _finish(plt, fig, ax, out / "loss.png",
            xlabel=f"optimizer step ({results['tokens_per_step']:,} tokens each)",
            ylabel="next-token loss (nats)",
            title="tiny presets, equal parameters and tokens (2 CPU cores)")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for f, r in results["models"].items():
        curve = r["per_position"]
        if not all(math.isfinite(x) for x in curve):
            continue
        ax.plot(range(1, len(curve) + 1), curve, label=FAMILY_NAMES.get(f, f))
    ax.axhline(unigram, color="gray", ls=":", label="unigram")
    ax.set_xscale("log")
    _finish(plt, fig, ax, out / "context.png",
            xlabel="position in the validation window (tokens)",
            ylabel="mean next-token loss (nats)",
            title="context usage: loss by position (NL Fig. 10)")
    return ["loss.png", "context.png"]


def _finish(plt, fig, ax, path: Path, *, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _unigram(job: MainJob) -> tuple[float, int]:
    """Unigram loss over exactly the validation targets the models are scored on."""
    from itertools import islice

    from nestlearn.data import eval_windows, prepare_data
    from nestlearn.eval import unigram_log_probs, unigram_loss
    from nestlearn.train import apply_overrides, get_recipe

    config = apply_overrides(get_recipe(job.recipe, family=job.families[0]),
                             job.overrides(job.families[0]))
    d = config.data
    data = prepare_data(d.sources, tokenizer=d.tokenizer, vocab_size=d.vocab_size,
                        cache_dir=d.cache_dir, progress=False)
    log_probs = unigram_log_probs(data.train, data.tokenizer.vocab_size)
    windows = islice(eval_windows(data.validation, seq_len=d.seq_len, batch_size=d.batch_size),
                     job.eval_batches)
    targets = [b.targets for b in windows]
    return unigram_loss(log_probs, targets), sum(t.numel() for t in targets)


def run_main_job(job: MainJob, *, progress: bool = True) -> Path:
    """Train, evaluate and report (see the module docstring); returns the report's path."""
    import torch

    from nestlearn.cli import _load_run
    from nestlearn.data import prepare_data
    from nestlearn.models import format_levels
    from nestlearn.train import apply_overrides, get_recipe

    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    # Tokenize once here (BPE training on the first run), so the lanes only read the cache.
    d = apply_overrides(get_recipe(job.recipe, family=job.families[0]),
                        job.overrides(job.families[0])).data
    data = prepare_data(d.sources, tokenizer=d.tokenizer, vocab_size=d.vocab_size,
                        cache_dir=d.cache_dir, progress=progress)
    prep_s = time.monotonic() - t0
    print(f"[main] corpus {', '.join(d.sources)}: {len(data.train):,} training / "
          f"{len(data.validation):,} validation tokens ({d.tokenizer} {data.tokenizer.vocab_size}); training "
          f"{', '.join(job.families)} for up to {job.steps} steps x "
          f"{job.batch_size * job.seq_len:,} tokens in {job.lanes} lane(s); logs in "
          f"{out / 'runs'}/<family>/train.log", flush=True)

    t1 = time.monotonic()  # the time limit covers the probe and the training
    deadline = t1 + 60 * job.time_limit if job.time_limit else None
    plan = _plan(job, deadline)
    probe_s = time.monotonic() - t1
    status = _train_all(job, plan["steps"], deadline, progress=progress)
    train_s = time.monotonic() - t1 - probe_s
    unigram, scored = _unigram(job)

    results: dict[str, Any] = {
        "job": asdict(job), "steps": plan["steps"], "calibration": plan,
        "tokens_per_step": job.batch_size * job.seq_len,
        "unigram_val_loss": unigram, "unigram_val_ppl": math.exp(unigram),
        "scored_tokens": scored, "data_prep_s": prep_s, "probe_s": probe_s,
        "train_wall_s": train_s, "torch": torch.__version__, "models": {}}
    levels = None
    for f in job.families:
        run_dir = out / "runs" / f
        if not (run_dir / "eval_validation.json").is_file():
            results["failed"] = {**results.get("failed", {}), f: status.get(f, "no result")}
            continue
        ev = json.loads((run_dir / "eval_validation.json").read_text())
        train_curve, val_curve, rates = _metrics(run_dir)
        _, model, tokenizer, _ = _load_run(run_dir)
        if f == "hope":
            levels = format_levels(model.levels())
        results["models"][f] = {
            "name": FAMILY_NAMES.get(f, f), "parameters": sum(p.numel() for p in model.parameters()),
            "status": status.get(f, "reused"), "steps": train_curve[-1][0] if train_curve else 0,
            "final_train_loss": train_curve[-1][1] if train_curve else float("nan"),
            "val_loss": ev["loss"], "val_ppl": ev["perplexity"], "eval_tokens": ev["tokens"],
            "tokens_per_s": sorted(rates)[len(rates) // 2] if rates else float("nan"),
            "train_curve": train_curve, "val_curve": val_curve,
            "per_position": ev["per_position"], "weights": ev["weights"],
            "sample": _sample(model, tokenizer, job.prompt, job.sample_tokens),
        }
    results["total_s"] = time.monotonic() - t0
    plots = _plots(out, results, unigram)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report = out / "report.md"
    report.write_text(_report(job, results, levels, plots))
    return report


def _equal_steps(models: dict[str, dict[str, Any]]) -> list[str]:
    """When the models trained different numbers of steps (a time limit stopped some), their
    training losses at the fewest steps any of them trained: the comparison on equal tokens."""
    curves = {m["name"]: m["train_curve"] for m in models.values() if m["train_curve"]}
    if len({c[-1][0] for c in curves.values()}) < 2:
        return []
    step = min(c[-1][0] for c in curves.values())
    cells = []
    for name, curve in curves.items():
        at = [(s, loss) for s, loss in curve if s <= step][-1:]  # the last logged step <= step
        cells.append(f"{name} {at[0][1]:.3f} (step {at[0][0]})" if at else f"{name} -")
    return ["", f"Equal-tokens comparison (the models trained different numbers of steps): "
                f"training loss at step {step} or the last logged step before it: "
                + ", ".join(cells) + "."]


def _calibration(plan: dict[str, Any]) -> list[str]:
    """The report's paragraph on the step count: the probe's timings and the choice."""
    text = f"Steps: {plan['reason']}."
    if plan.get("sec_per_step"):
        per = ", ".join(f"{FAMILY_NAMES.get(f, f)} {plan['sec_per_step'][f]:.2f} s/step + "
                        f"{plan['overhead_s'][f]:.0f} s" for f in plan["sec_per_step"])
        text += (f" The probe ({plan['probe_s']:.0f} s, before training, in `probe/`) trained "
                 f"{PROBE_STEPS} steps of each model in the lanes of the real runs and measured "
                 f"seconds per step + start-up and evaluation per run: {per}.")
    if plan.get("reused"):
        text += " (Planned by an earlier invocation, `calibration.json`; its runs were reused.)"
    return ["", text]


def _report(job: MainJob, r: dict[str, Any], levels: str | None, plots: list[str]) -> str:
    tok, steps = r["tokens_per_step"], r["steps"]
    lines = [
        "# nestlearn main job: tiny HOPE vs Transformer++ vs Titans on the bundled corpus", "",
        f"Each model: the `{job.recipe}` recipe (equal parameter count), {steps} AdamW steps of "
        f"{job.batch_size} x {job.seq_len} = {tok:,} tokens ({steps * tok:,} tokens), lr "
        f"{job.lr} with {job.warmup(steps)} warm-up steps then cosine, float32, "
        f"{job.lanes} process(es) x {job.threads} thread(s). Validation: the first "
        f"{job.eval_batches * job.batch_size} windows of {job.seq_len} tokens of the validation "
        f"split ({r['scored_tokens']:,} scored tokens, the same for every row).",
        *_calibration(r["calibration"]), "",
        "| model | parameters | steps | train loss | val loss | val ppl | train tokens/s "
        "(1 thread) | status |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in r["models"].values():
        lines.append(f"| {m['name']} | {m['parameters']:,} | {m['steps']} | "
                     f"{m['final_train_loss']:.3f} | {m['val_loss']:.3f} | {m['val_ppl']:.1f} | "
                     f"{m['tokens_per_s']:,.0f} | {m['status']} |")
    for f, why in r.get("failed", {}).items():
        lines.append(f"| {FAMILY_NAMES.get(f, f)} | - | - | - | - | - | - | {why} |")
    lines.append(f"| unigram (train-split frequencies, add-one) | - | - | - | "
                 f"{r['unigram_val_loss']:.3f} | {r['unigram_val_ppl']:.1f} | - | fitted |")
    lines += _equal_steps(r["models"])
    lines += ["", f"Wall clock: data {r['data_prep_s']:.0f} s, calibration probe "
              f"{r['probe_s']:.0f} s, training + evaluation {r['train_wall_s'] / 60:.1f} min, "
              f"total {r['total_s'] / 60:.1f} min.", ""]
    if r.get("failed") or any(m["status"] != "trained" for m in r["models"].values()):
        lines += ["Rows whose status is not `trained` did not train the full budget in this "
                  "invocation (`reused`: a finished run from an earlier invocation; `stopped`: "
                  "the time limit ended it; `diverged`: the loss became non-finite; the last "
                  "two are evaluated from their last checkpoint).", ""]
    lines += ["Reading: this is a CPU-sized sketch of the paper's Table 2 (arXiv 2512.24695), "
              "not a reproduction of it: a few hundred thousand tokens instead of 15-100B, "
              "5.5M parameters instead of 340M-1.3B. What it shows is that every model learns "
              "the corpus well beyond the unigram floor; at this budget the ranking between "
              "the architectures is not yet informative.", ""]
    for name in plots:
        lines += [f"![{name}]({name})", ""]
    if levels:
        lines += ["## HOPE's levels (decision D1)", "",
                  "Every part that learns, with its update period; the optimizer is the slowest "
                  "level.", "", levels, ""]
    lines += ["## Samples", "",
              f"Prompt `{job.prompt}`, {job.sample_tokens} tokens, temperature 0.8, top-k 40, "
              "seed 0.", ""]
    for m in r["models"].values():
        lines += [f"**{m['name']}**", "", "```", m["sample"].strip(), "```", ""]
    lines += ["## Reproduce", "", "```bash", "bash scripts/main.sh            # = nestlearn main",
              "nestlearn eval runs/main/runs/hope     # full validation split",
              "nestlearn generate runs/main/runs/hope --prompt 'ROMEO:'", "```", "",
              "Numbers: `results.json`; training logs: `runs/<family>/train.log`, "
              "`metrics.jsonl`.", ""]
    return "\n".join(lines)
