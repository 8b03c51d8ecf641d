"""Step planning: the calibration probe and the step count that fits the time limit.

With a time limit, a probe first trains ``PROBE_STEPS`` steps of each model with the real run's
command and settings, in ``<out>/probe/<family>/`` and in the same lanes (so the same start-up
cost, threads and contention), and reads seconds per step, per evaluation and per process start
from the probe's ``metrics.jsonl`` and wall clock. :func:`calibrated_steps` (pure) then picks the
largest ``N <= steps`` whose predicted makespan (per lane: its models' ``N`` x seconds per step
plus start-up and evaluations, the slowest lane deciding) fills at most ``BUDGET_FRACTION`` of
the time left after the probe; all models train ``N`` steps, at least ``MIN_STEPS``. The plan is
recorded in ``<out>/calibration.json``: a later invocation whose runs already started reuses it.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.main_job.config import (
    BUDGET_FRACTION,
    MIN_STEPS,
    PROBE_STEPS,
    TRAIN_EVALS,
    MainJob,
    family_name,
)
from experiments.main_job.lanes import ProbeLane, drive, lane_families

__all__ = ["calibrated_steps", "plan_steps", "predicted_makespan", "probe_timing"]


def probe_timing(run_dir: Path, wall_s: float) -> dict[str, float] | None:
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
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None
    for line in metrics.read_text().splitlines():
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


def run_overhead(timing: dict[str, float], eval_batches: int) -> float:
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


def _check_calibration_input(sec_per_step, lanes, overhead, limit_s, max_steps, fraction,
                             min_steps) -> None:
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


def calibrated_steps(sec_per_step: Mapping[str, float], lanes: Sequence[Sequence[str]], *,
                     overhead: Mapping[str, float], limit_s: float, max_steps: int,
                     fraction: float = BUDGET_FRACTION, min_steps: int = MIN_STEPS) -> int:
    """The largest ``n <= max_steps`` whose :func:`predicted_makespan` fits ``fraction`` of
    ``limit_s`` seconds; ``min(min_steps, max_steps)`` when the largest that fits is smaller
    (fewer steps would compare little more than warm-ups; the time limit stops what overruns).

    ``lanes`` run in parallel, the families of a lane one after another; every family of
    ``lanes`` needs ``sec_per_step`` (>= 0) and ``overhead`` (seconds of start-up and
    evaluation per run, >= 0)."""
    _check_calibration_input(sec_per_step, lanes, overhead, limit_s, max_steps, fraction,
                             min_steps)
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
    from nestlearn.train import latest_checkpoint

    return (run_dir / "model" / "model.safetensors").is_file() or (
        latest_checkpoint(run_dir) is not None)


def plan_steps(job: MainJob, deadline: float | None) -> dict[str, Any]:
    """The step count of every run of this invocation and how it was chosen (written to
    ``<out>/calibration.json``; see the module docstring). ``outcome`` is ``"minimum"`` when
    calibration forced ``MIN_STEPS`` although they do not fit (also warned on stderr)."""
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
    if plan["outcome"] == "minimum":
        print(f"warning: {minimum_warning(plan)}", file=sys.stderr, flush=True)
    path.write_text(json.dumps(plan, indent=1) + "\n")
    return plan


def minimum_warning(plan: Mapping[str, Any]) -> str:
    """The warning when calibration forced the minimum step count."""
    return (f"the step count was forced to the minimum of {plan['steps']} steps: by the probe's "
            f"timings not even these fit the time limit, so the time limit may stop trainings "
            f"before they finish; the models train only {plan['steps']} of "
            f"{plan['max_steps']} steps")


def _probe_lanes(job: MainJob, deadline: float) -> tuple[dict, dict]:
    """Run the probe; (timings of the timed families, reason of every family not timed)."""
    probes = [ProbeLane(job, fams, deadline) for fams in lane_families(job)]
    drive(probes, deadline)
    timings, untimed = {}, {}
    for lane in probes:
        for f, code in lane.exit_codes.items():
            run_dir = Path(job.out) / "probe" / f
            timing = probe_timing(run_dir, lane.wall_s[f]) if code == 0 else None
            if timing is None:
                untimed[f] = f"not timed (exit {code}, see {run_dir / 'train.log'})"
            else:
                timings[f] = timing
    return timings, untimed


def _probe(job: MainJob, deadline: float) -> dict[str, Any]:
    """Time every family in its lane and plan the steps (:func:`calibrated_steps`)."""
    t0 = time.monotonic()
    print(f"[main] calibration probe: {PROBE_STEPS} steps of {', '.join(job.families)} "
          f"(logs in {Path(job.out) / 'probe'}/<family>/train.log) ...", flush=True)
    timings, untimed = _probe_lanes(job, deadline)
    sec = {f: t["step"] for f, t in timings.items()}
    overhead = {f: run_overhead(t, job.eval_batches) for f, t in timings.items()}
    lanes = [[f for f in lane if f in timings] for lane in lane_families(job)]
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
    speeds = ", ".join(f"{family_name(f)} {s:.2f}" for f, s in sec.items())
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
