"""The main job's report: ``report.md``, ``loss.png`` and ``context.png`` from its results."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from experiments.main_job.config import FAMILY_NAMES, PROBE_STEPS, MainJob
from experiments.main_job.plan import minimum_warning
from experiments.main_job.synthetic import panel_lines, panel_summary


def reading(models: dict[str, dict[str, Any]], unigram: float) -> str:
    """The report's comparison sentences, each derived from the validation losses."""
    scored = {m["name"]: m["val_loss"] for m in models.values()
              if isinstance(m.get("val_loss"), (int, float)) and math.isfinite(m["val_loss"])}
    if not scored:
        return "No model has a finite validation loss to compare."
    better = [n for n, v in scored.items() if v < unigram]
    if not better:
        text = f"No model beat the unigram baseline ({unigram:.3f})."
    elif len(better) == len(scored):
        text = f"Every model beat the unigram baseline ({unigram:.3f})."
    else:
        worse = [n for n in scored if n not in better]
        text = (f"{', '.join(better)} beat the unigram baseline ({unigram:.3f}); "
                f"{', '.join(worse)} did not.")
    ranked = sorted(scored.items(), key=lambda kv: kv[1])
    if len(ranked) > 1:
        best = ranked[0]
        text += (" Ranking by validation loss: " + " < ".join(
            f"{n} {v:.3f}" + (f" (+{v - best[1]:.3f})" if n != best[0] else "")
            for n, v in ranked) + ".")
    return text


def _metrics(run_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]], list[float]]:
    """Training curve, validation curve and the seconds of every clean logged step: not the
    first (warm-up) and not one whose interval holds the evaluation or checkpoint of the step
    before, so that throughput counts training time only."""
    cfg = json.loads((run_dir / "train_config.json").read_text())["config"]["train"]
    busy = [n for n in (cfg.get("eval_every", 0), cfg.get("checkpoint_every", 0)) if n]
    train, val, seconds = [], [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            train.append((r["step"], r["loss"]))
            prev = r["step"] - 1
            if prev >= 1 and r.get("tokens_per_s") and all(prev % n for n in busy):
                seconds.append(1.0 / r["tokens_per_s"])
        if "val_loss" in r:
            val.append((r["step"], r["val_loss"]))
    return train, val, seconds


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
        line, = ax.plot(steps, losses, marker=".", label=f"{FAMILY_NAMES.get(f, f)} (train)",
                        alpha=0.8)
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
        ax.plot(*binned(curve), marker=".", label=FAMILY_NAMES.get(f, f))
    ax.axhline(unigram, color="gray", ls=":", label="unigram")
    ax.set_xscale("log")
    _finish(plt, fig, ax, out / "context.png",
            xlabel="position in the validation window (tokens, log-spaced bins)",
            ylabel="mean next-token loss (nats)",
            title="context usage: loss by position (NL Fig. 10)")
    return ["loss.png", "context.png"]


def level_updates(periods: list[int], inner_lrs: list[float], *, steps: int,
                  tokens_per_step: int) -> list[str]:
    """How often each CMS level was updated in a run of ``steps`` optimizer steps: every step
    (period 0), in context (inner learning rate > 0), or once every ``ceil(period /
    tokens_per_step)`` steps (a slow level, as the training loop schedules it)."""
    out = []
    for level, (period, lr) in enumerate(zip(periods, inner_lrs, strict=True)):
        if period <= 0:
            out.append(f"CMS level {level}: every optimizer step ({steps} updates)")
        elif lr > 0:
            out.append(f"CMS level {level}: in context, every {period} tokens of each sequence "
                       f"(inner lr {lr:g}), and by the optimizer every step ({steps} updates)")
        else:
            every = math.ceil(period / tokens_per_step)
            n = steps // every
            note = " (never: the run is shorter than one period)" if n == 0 else ""
            out.append(f"CMS level {level}: every {every} optimizer steps ({period:,} tokens): "
                       f"{n} updates{note}")
    return out


def binned(curve: list[float], *, bins_per_decade: int = 8) -> tuple[list[float], list[float]]:
    """The loss-by-position curve averaged over log-spaced position bins (positions 1-based):
    the bin centres (geometric mean of the positions in the bin) and the mean losses."""
    xs, ys, lo = [], [], 1
    while lo <= len(curve):
        hi = max(lo + 1, math.ceil(lo * 10 ** (1 / bins_per_decade)))
        chunk = curve[lo - 1:hi - 1]
        xs.append(math.exp(sum(math.log(p) for p in range(lo, lo + len(chunk))) / len(chunk)))
        ys.append(sum(chunk) / len(chunk))
        lo = hi
    return xs, ys


def _finish(plt, fig, ax, path: Path, *, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
        *([f"**Warning:** {minimum_warning(r['calibration'])}.", ""]
          if r["calibration"].get("outcome") == "minimum" else []),
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
              "5.5M parameters instead of 340M-1.3B. "
              + reading(r["models"], r["unigram_val_loss"]),
              ""]
    for name in plots:
        lines += [f"![{name}]({name})", ""]
    if levels:
        lines += ["## HOPE's levels (decision D1)", "",
                  "Every part that learns, with its update period; the optimizer is the slowest "
                  "level.", "", levels, ""]
        lines += [f"Updates in this run ({steps} steps of {tok:,} tokens):", "",
                  *[f"- {u}" for u in r.get("level_updates", [])], ""]
    lines += panel_lines(r.get("synthetic"))
    lines += ["## Samples", "",
              f"Prompt `{job.prompt}`, {job.sample_tokens} tokens, temperature 0.8, top-k 40, "
              "seed 0.", ""]
    for m in r["models"].values():
        lines += [f"**{m['name']}**", "", "```", m["sample"].strip(), "```", ""]
    lines += ["## Reproduce", "", "```bash",
              "bash scripts/main.sh            # = python -m experiments.main_job",
              "nestlearn eval runs/main/runs/hope     # full validation split",
              "nestlearn generate runs/main/runs/hope --prompt 'ROMEO:'", "```", "",
              "Numbers: `results.json`; training logs: `runs/<family>/train.log`, "
              "`metrics.jsonl`.", ""]
    lines += ["", "Summary: "
              + reading(r["models"], r["unigram_val_loss"]).split(". ")[0].rstrip(".")
              + f"; {steps} steps per model{panel_summary(r.get('synthetic'))}; total "
              f"{r['total_s'] / 60:.1f} min.", ""]
    return "\n".join(lines)
