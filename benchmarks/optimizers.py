"""Benchmark of the deep optimizers in ``nestlearn.optim``.

Run:  python benchmarks/optimizers.py [--quick] [--threads N] [--out benchmarks/results]

Two kinds of task, both CPU-only and with no download at run time:

* ``toy`` (Nested Learning arXiv 2512.24695, Eq. 53, Fig. 4): the 2-D loss with time-varying
  curvature psi(r, theta) = r^2 + k (r - theta + a sin(w r))^2 from (r0, theta0) = (-3.5, 2).
  The paper gives no k, a, w; we use the values in ``TOY`` below. Metric: steps until
  psi < threshold, best over a learning-rate grid, for momentum vs Delta Momentum vs DMGD.
* ``digits``: an MLP classifier on scikit-learn's bundled handwritten digits (1,797 8x8 images,
  ``sklearn.datasets.load_digits``, shipped inside the package; ``pip install -e .[bench]``),
  trained by every optimizer in ``OPTIMIZERS`` with a short lr sweep, 3 seeds and the same step
  budget. Metric: final validation loss (mean and std over seeds at the best lr), validation
  accuracy, and wall time per training step relative to AdamW.

* ``lm``: a small Transformer++ language model (``nestlearn.models``) on the bundled corpus
  (``nestlearn.data``: Shakespeare + the Wikipedia sample, BPE 2048), same protocol; metric: final
  validation loss (nats per token).

A new training task is one more function with the signature of :func:`task_digits`,
``(make_optimizer, lr, seed, steps) -> RunResult``, added to ``TRAIN_TASKS`` with its step
budgets; the sweep, table, JSON and plot pick it up.

Outputs: a table on stdout, ``<out>/optimizers.json`` and ``<out>/optimizers.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from nestlearn.optim import M3, AssociativeMomentum, DeepMomentum, DeltaMomentum

MakeOptimizer = Callable[[list, float], torch.optim.Optimizer]


@dataclass
class RunResult:
    val_loss: float  # final validation loss (toy: final loss)
    curve: list[float]  # validation loss at the logged steps (toy: loss at every step)
    curve_steps: list[int]
    sec_per_step: float
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Optimizers under test. Each entry: a factory (param groups, lr) -> optimizer, and its lr grid.
# A task passes param groups tagged with a "role": "hidden" for the hidden weight matrices, "other"
# for the input and output layers, biases and norms (the Muon recipe orthogonalises only the
# hidden matrices). Optimizers without such a split get all parameters alike.
# Grids are centred on the usual scale of each family (Adam-like units vs SGD-momentum units).

MUON_ADAMW_LR = 1e-3  # AdamW lr for the non-hidden params of the Muon-style baseline (AdamW's best)


class Chained:
    """Two optimizers stepped together (Muon on hidden matrices + AdamW on the rest)."""

    def __init__(self, *opts: torch.optim.Optimizer) -> None:
        self.opts = opts

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.opts:
            o.step()


def _flat(groups) -> list:
    return [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]


def _by_role(groups, role: str) -> list:
    return [p for g in groups if isinstance(g, dict) and g.get("role") == role for p in g["params"]]


def _adamw(groups, lr):
    return torch.optim.AdamW(_flat(groups), lr=lr, weight_decay=0.0)


def _momentum(groups, lr):
    return AssociativeMomentum(_flat(groups), lr, momentum=0.9)


def _muon(groups, lr):
    # Muon-style: dot-product momentum + Newton-Schulz read-out (Eq. 42-44, 52) on the hidden
    # matrices, AdamW on the rest.
    muon = AssociativeMomentum(_by_role(groups, "hidden"), lr, momentum=0.95, nesterov=True,
                               output="newton_schulz")
    return Chained(muon, torch.optim.AdamW(_by_role(groups, "other"), lr=MUON_ADAMW_LR,
                                           weight_decay=0.0))


def _m3(groups, lr):
    # M3 on the hidden matrices, its built-in AdamW fallback (same lr) on the rest.
    return M3([{"params": _by_role(groups, "hidden")},
               {"params": _by_role(groups, "other"), "kind": "adamw"}], lr)


def _delta(groups, lr):
    return DeltaMomentum(_flat(groups), lr)


def _dmgd(groups, lr):
    return DeepMomentum(_flat(groups), lr)


def _grid(center: float) -> list[float]:
    """Five learning rates, a factor 10^(1/3) apart, centred on ``center`` (quick mode: centre)."""
    return [float(f"{center * 10 ** (k / 3):.2g}") for k in range(-2, 3)]


OPTIMIZERS: dict[str, tuple[Callable, list[float]]] = {
    "adamw": (_adamw, _grid(1e-3)),
    "muon": (_muon, _grid(0.0046)),
    "m3": (_m3, _grid(2.2e-3)),
    "momentum": (_momentum, _grid(0.046)),
    "delta_momentum": (_delta, _grid(0.1)),
    "dmgd": (_dmgd, _grid(0.22)),
}

# --------------------------------------------------------------------------------------------
# Toy task (Eq. 53).

TOY = {"k": 10.0, "a": 0.5, "w": 2.0, "r0": -3.5, "theta0": 2.0, "threshold": 1e-6}
TOY_OPTIMIZERS = ("momentum", "delta_momentum", "dmgd")
TOY_LRS = [10 ** (e / 8) for e in range(-32, -3)]


def toy_loss(x: torch.Tensor) -> torch.Tensor:
    r, theta = x[0], x[1]
    return r**2 + TOY["k"] * (r - theta + TOY["a"] * torch.sin(TOY["w"] * r)) ** 2


def task_toy(make_optimizer: MakeOptimizer, lr: float, steps: int) -> RunResult:
    x = torch.tensor([TOY["r0"], TOY["theta0"]], dtype=torch.float64, requires_grad=True)
    opt = make_optimizer([x], lr)
    curve = []
    t0 = time.perf_counter()
    hit = None
    for i in range(steps):
        loss = toy_loss(x)
        value = loss.item()
        curve.append(value)
        if not math.isfinite(value) or value > 1e6:
            break
        if value < TOY["threshold"]:
            hit = i
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    dt = (time.perf_counter() - t0) / max(len(curve), 1)
    return RunResult(curve[-1], curve, list(range(len(curve))), dt, {"steps_to_threshold": hit})


def run_toy(steps: int, bar: tqdm) -> dict:
    out = {}
    for name in TOY_OPTIMIZERS:
        factory = OPTIMIZERS[name][0]
        best = None
        for lr in TOY_LRS:
            res = task_toy(factory, lr, steps)
            bar.update(1)
            hit = res.extra["steps_to_threshold"]
            key = hit if hit is not None else math.inf
            if best is None or key < best[0]:
                best = (key, lr, res)
        key, lr, res = best
        out[name] = {"steps_to_threshold": None if key == math.inf else key, "lr": lr,
                         "curve": res.curve}
    return out


# --------------------------------------------------------------------------------------------
# Digits classifier.

_DIGITS: dict = {}


def _digits_data() -> tuple[torch.Tensor, ...]:
    if not _DIGITS:
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:  # pragma: no cover - message for users without the extra
            raise SystemExit("the digits task needs scikit-learn: pip install -e '.[bench]'") from e
        d = load_digits()
        X = torch.tensor(d.data, dtype=torch.float32) / 16.0  # [N, 64]
        y = torch.tensor(d.target, dtype=torch.long)  # [N]
        perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
        n_val = 360
        val, train = perm[:n_val], perm[n_val:]
        mean = X[train].mean(0)
        std = X[train].std(0).clamp_min(1e-3)
        X = (X - mean) / std
        _DIGITS.update(Xtr=X[train], ytr=y[train], Xva=X[val], yva=y[val])
    return _DIGITS["Xtr"], _DIGITS["ytr"], _DIGITS["Xva"], _DIGITS["yva"]


def task_digits(make_optimizer: MakeOptimizer, lr: float, seed: int, steps: int) -> RunResult:
    """MLP 64-256-256-256-10 (GELU), batch 128, cross-entropy; validation loss every 25 steps."""
    Xtr, ytr, Xva, yva = _digits_data()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 256),
        nn.GELU(), nn.Linear(256, 10))
    hidden = [model[2].weight, model[4].weight]
    other = [p for p in model.parameters() if all(p is not h for h in hidden)]
    opt = make_optimizer([{"params": hidden, "role": "hidden"}, {"params": other, "role": "other"}],
                         lr)
    gen = torch.Generator().manual_seed(1000 + seed)
    lossf = nn.CrossEntropyLoss()
    curve, curve_steps = [], []

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            logits = model(Xva)
            return lossf(logits, yva).item(), (logits.argmax(-1) == yva).float().mean().item()

    train_time = 0.0
    for i in range(steps):
        idx = torch.randint(0, len(Xtr), (128,), generator=gen)
        t0 = time.perf_counter()
        loss = lossf(model(Xtr[idx]), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        train_time += time.perf_counter() - t0
        if (i + 1) % 25 == 0 or i + 1 == steps:
            v, _ = evaluate()
            curve.append(v)
            curve_steps.append(i + 1)
    v, acc = evaluate()
    if not math.isfinite(v):
        v = float("inf")
    return RunResult(v, curve, curve_steps, train_time / steps, {"val_acc": acc})


# --------------------------------------------------------------------------------------------
# Transformer++ language model on the bundled corpus (Shakespeare + Wikipedia sample).

_LM: dict = {}
LM = {"vocab": 2048, "seq_len": 128, "batch": 8, "val_windows": 32}


def _lm_data():
    if not _LM:
        from nestlearn.data import RandomWindows, eval_windows, prepare_data

        data = prepare_data(tokenizer="bpe", vocab_size=LM["vocab"], progress=False)
        val = list(eval_windows(data.validation, seq_len=LM["seq_len"], batch_size=8))
        n = LM["val_windows"] // 8
        _LM.update(train=data.train, val=val[:n], windows=RandomWindows)
    return _LM


def task_lm(make_optimizer: MakeOptimizer, lr: float, seed: int, steps: int) -> RunResult:
    """Transformer++ (2 blocks, width 128, 4 heads, BPE vocabulary 2048; about 1M parameters),
    batch 8 x 128 tokens of the default corpus; validation loss on 32 fixed windows of the
    validation split, every 25 steps. Hidden = the blocks' weight matrices; other = embeddings,
    LM head and norm gains."""
    from nestlearn.models.transformer import TransformerConfig, TransformerForCausalLM

    d = _lm_data()
    torch.manual_seed(seed)
    model = TransformerForCausalLM(TransformerConfig(
        vocab_size=LM["vocab"], hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=384))
    hidden = [p for n, p in model.named_parameters() if ".layers." in n and p.ndim == 2]
    other = [p for p in model.parameters() if all(p is not h for h in hidden)]
    opt = make_optimizer([{"params": hidden, "role": "hidden"}, {"params": other, "role": "other"}],
                         lr)
    sampler = d["windows"](d["train"], seq_len=LM["seq_len"], batch_size=LM["batch"],
                           seed=1000 + seed)
    curve, curve_steps = [], []

    def evaluate() -> float:
        with torch.no_grad():
            losses = [torch.nn.functional.cross_entropy(
                model(b.inputs).logits.flatten(0, 1), b.targets.flatten()).item()
                for b in d["val"]]
        return statistics.fmean(losses)

    train_time = 0.0
    for i, batch in zip(range(steps), sampler):
        t0 = time.perf_counter()
        logits = model(batch.inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        train_time += time.perf_counter() - t0
        if (i + 1) % 25 == 0 or i + 1 == steps:
            curve.append(evaluate())
            curve_steps.append(i + 1)
    v = curve[-1] if math.isfinite(curve[-1]) else float("inf")
    return RunResult(v, curve, curve_steps, train_time / steps, {})


# name -> (task function, steps in full mode, steps in quick mode)
TRAIN_TASKS: dict[str, tuple[Callable, int, int]] = {
    "digits": (task_digits, 200, 100),
    "lm": (task_lm, 100, 40),
}
# The language model costs ~10x a digits run: its full sweep uses the middle 3 of the 5 lrs.
LR_POINTS = {"lm": slice(1, 4)}


def run_train_task(name: str, steps: int, seeds: list[int], lr_pick: Callable, bar: tqdm) -> dict:
    fn = TRAIN_TASKS[name][0]
    out = {}
    for opt_name, (factory, grid) in OPTIMIZERS.items():
        per_lr = {}
        for lr in lr_pick(grid)[LR_POINTS.get(name, slice(None))]:
            runs = []
            for seed in seeds:
                runs.append(fn(factory, lr, seed, steps))
                bar.update(1)
            per_lr[lr] = runs
        # Best lr by mean final validation loss over seeds (diverged runs count as +inf).
        best_lr = min(per_lr, key=lambda lr: statistics.fmean(r.val_loss for r in per_lr[lr]))
        runs = per_lr[best_lr]
        losses = [r.val_loss for r in runs]
        out[opt_name] = {
            "best_lr": best_lr,
            "val_loss_mean": statistics.fmean(losses),
            "val_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
            # Lowest validation loss seen during the run (every 25 steps): the small data set
            # overfits, so the final loss also measures how far past its best point a run went.
            "val_loss_min_mean": statistics.fmean(min(r.curve) for r in runs),
            "val_acc_mean": statistics.fmean(r.extra.get("val_acc", float("nan")) for r in runs),
            # Median over all runs of this optimizer: robust to other jobs on a shared machine.
            "sec_per_step": statistics.median(r.sec_per_step for lr_runs in per_lr.values()
                                           for r in lr_runs),
            "sweep": {str(lr): [r.val_loss for r in rs] for lr, rs in per_lr.items()},
            "curve_steps": runs[0].curve_steps,
            "curve_mean": [statistics.fmean(c) for c in zip(*(r.curve for r in runs))],
        }
    base = out["adamw"]["sec_per_step"]
    for v in out.values():
        v["time_vs_adamw"] = v["sec_per_step"] / base
    return out


# --------------------------------------------------------------------------------------------


def _table(toy: dict, train: dict) -> str:
    lines = [(f"Toy (Eq. 53): steps to psi < {TOY['threshold']:g} from ({TOY['r0']:g}, "
              f"{TOY['theta0']:g}), best lr of {len(TOY_LRS)}"),
             f"| {'optimizer':<15} | {'steps':>6} | {'best lr':>8} |",
             f"|{'-' * 17}|{'-' * 8}|{'-' * 10}|"]
    for name, v in toy.items():
        s = v["steps_to_threshold"]
        lines.append(f"| {name:<15} | {s if s is not None else 'never':>6} | {v['lr']:>8.2g} |")
    for task, res in train.items():
        lines += ["", (f"{task}: final validation loss at the best lr (mean +- std over seeds); "
                       "min val = lowest val loss during the run (mean); acc = final val accuracy"),
                  (f"| {'optimizer':<15} | {'best lr':>8} | {'val loss':>17} | {'min val':>7} "
                   f"| {'val acc':>7} | {'time/step vs AdamW':>18} |"),
                  f"|{'-' * 17}|{'-' * 10}|{'-' * 19}|{'-' * 9}|{'-' * 9}|{'-' * 20}|"]
        for name, v in res.items():
            loss = f"{v['val_loss_mean']:.4f} +- {v['val_loss_std']:.4f}"
            acc = "-" if math.isnan(v["val_acc_mean"]) else f"{v['val_acc_mean']:.3f}"
            lines.append(f"| {name:<15} | {v['best_lr']:>8.2g} | {loss:>17} "
                         f"| {v['val_loss_min_mean']:>7.4f} | {acc:>7} "
                         f"| {v['time_vs_adamw']:>18.2f} |")
    return "\n".join(lines)


def _plot(toy: dict, train: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(train), figsize=(5.5 * (1 + len(train)), 4))
    ax = axes[0]
    for name, v in toy.items():
        ax.semilogy(v["curve"], label=f"{name} (lr {v['lr']:.2g})")
    ax.axhline(TOY["threshold"], color="gray", lw=0.8, ls="--")
    ax.set(title="Toy, Eq. 53 (best lr)", xlabel="step", ylabel="loss")
    ax.legend()
    for ax, (task, res) in zip(axes[1:], train.items()):
        for name, v in res.items():
            ax.plot(v["curve_steps"], v["curve_mean"], label=f"{name} (lr {v['best_lr']:.2g})")
        ax.set(title=f"{task}: validation loss (mean of seeds, best lr)", xlabel="step",
               ylabel="val loss", yscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke mode: 1 seed, fewer lrs and steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    seeds = [0] if args.quick else [0, 1, 2]
    lr_pick = (lambda grid: grid[2:3]) if args.quick else (lambda grid: grid)
    toy_steps = 3000
    n_lr = 1 if args.quick else 5
    total = len(TOY_OPTIMIZERS) * len(TOY_LRS) + sum(
        len(OPTIMIZERS) * len(range(n_lr)[LR_POINTS.get(name, slice(None))]) * len(seeds)
        for name in TRAIN_TASKS)
    t0 = time.time()
    with tqdm(total=total, desc="runs") as bar:
        toy = run_toy(toy_steps, bar)
        train = {
            name: run_train_task(name, quick if args.quick else full, seeds, lr_pick, bar)
            for name, (_, full, quick) in TRAIN_TASKS.items()
        }
    table = _table(toy, train)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=False, cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        sha = ""
    meta = {"quick": args.quick, "seeds": seeds, "threads": args.threads, "git_sha": sha,
                "torch": torch.__version__, "python": platform.python_version(),
                "wall_seconds": round(time.time() - t0, 1), "toy_config": TOY,
                "train_steps": {k: (q if args.quick else f)
                                for k, (_, f, q) in TRAIN_TASKS.items()}}
    (args.out / "optimizers.json").write_text(json.dumps(
        {"meta": meta, "toy": toy, "train": train, "table": table}, indent=1))
    _plot(toy, train, args.out / "optimizers.png")
    print(f"\nwrote {args.out / 'optimizers.json'} and {args.out / 'optimizers.png'}"
          f" ({meta['wall_seconds']} s)")


if __name__ == "__main__":
    main()
