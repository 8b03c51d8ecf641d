"""Running the main job: data, step plan, lanes, evaluation, results and report."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from experiments.main_job.config import FAMILY_NAMES, MainJob
from experiments.main_job.lanes import train_all
from experiments.main_job.plan import plan_steps
from experiments.main_job.report import _metrics, _plots, _report, _sample, level_updates
from experiments.main_job.synthetic import run_panel


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

    from nestlearn.data import prepare_data
    from nestlearn.models import format_levels
    from nestlearn.train import apply_overrides, get_recipe, load_run

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
          f"{len(data.validation):,} validation tokens "
          f"({d.tokenizer} {data.tokenizer.vocab_size}); training "
          f"{', '.join(job.families)} for up to {job.steps} steps x "
          f"{job.batch_size * job.seq_len:,} tokens in {job.lanes} lane(s); logs in "
          f"{out / 'runs'}/<family>/train.log", flush=True)

    t1 = time.monotonic()  # the time limit covers the probe and the training
    deadline = t1 + 60 * job.time_limit if job.time_limit else None
    plan = plan_steps(job, deadline)
    probe_s = time.monotonic() - t1
    status = train_all(job, plan["steps"], deadline, progress=progress)
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
        _, model, tokenizer, _ = load_run(run_dir)
        if f == "hope":
            levels = format_levels(model.levels())
            results["level_updates"] = level_updates(
                list(model.config.cms_periods),
                list(model.config.cms_inner_lrs or [0.0] * len(model.config.cms_periods)),
                steps=train_curve[-1][0] if train_curve else 0,
                tokens_per_step=job.batch_size * job.seq_len)
        results["models"][f] = {
            "name": FAMILY_NAMES.get(f, f),
            "parameters": sum(p.numel() for p in model.parameters()),
            "status": status.get(f, "reused"), "steps": train_curve[-1][0] if train_curve else 0,
            "final_train_loss": train_curve[-1][1] if train_curve else float("nan"),
            "val_loss": ev["loss"], "val_ppl": ev["perplexity"], "eval_tokens": ev["tokens"],
            "tokens_per_s": (job.tokens_per_step * len(rates) / sum(rates) if rates
                             else float("nan")),
            "train_curve": train_curve, "val_curve": val_curve,
            "per_position": ev["per_position"], "weights": ev["weights"],
            "sample": _sample(model, tokenizer, job.prompt, job.sample_tokens),
        }
    results["synthetic"] = run_panel(job, progress=progress)
    results["total_s"] = time.monotonic() - t0
    plots = _plots(out, results, unigram)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report = out / "report.md"
    report.write_text(_report(job, results, levels, plots))
    return report


