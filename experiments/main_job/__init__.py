"""The main job: a small Table 2 on a CPU.

Run it with ``python -m experiments.main_job`` (or ``bash scripts/main.sh``).

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
``plan.plan_steps``) first trains ``PROBE_STEPS`` steps of each model with the real run's command
and settings, in ``<out>/probe/<family>/`` and in the same lanes (so the same start-up cost, threads
and contention), and reads seconds per step, per evaluation and per process start from the
probe's ``metrics.jsonl`` and wall clock. ``plan.calibrated_steps`` (pure) then picks the largest
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

from experiments.main_job.config import MainJob
from experiments.main_job.job import run_main_job
from experiments.main_job.plan import calibrated_steps, predicted_makespan

__all__ = ["MainJob", "calibrated_steps", "predicted_makespan", "run_main_job"]
