"""Where a training step's time goes: matrix products against everything else (tiny presets, CPU).

For each family and sequence length, one forward+backward step (8192 tokens, as in
``benchmarks/models.py``) is timed, and a second one with a timer around every call of a
matrix-product kernel (``mm``, ``bmm``, ``baddbmm``, ``addmm``, ``addbmm``, ``addmv``, ``mv``,
``dot``, ``vdot``) and of the attention kernels (``*scaled_dot_product*``), forward and backward.
``products share`` is their time over the plain step's; the rest is elementwise passes, copies,
reductions, autograd and Python overhead.

``bound tok/s`` is the throughput if ``other`` cost nothing and the products ran as they do: an
upper bound for any fusion of the non-product work that keeps the same products (a fused kernel
would also have to run its products faster than the library's small batched products to go
beyond it). Comparing a family's bound with another family's measured throughput tells whether
fusion alone can close a gap.

    python benchmarks/gemm_bound.py                         # hope and transformer, T=2048, 8192
    python benchmarks/gemm_bound.py --families hope titans --lengths 2048
    python benchmarks/gemm_bound.py --quick                 # T = 512, 1024 tokens per step

Each case runs in its own subprocess with one thread (``OMP_NUM_THREADS=1`` is set for it).
Prints a table and writes ``gemm_bound.json`` and ``gemm_bound.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

TOKENS_PER_STEP = 8192
PRODUCTS = ("mm", "bmm", "baddbmm", "baddbmm_", "addmm", "addmm_", "addbmm", "addmv", "mv",
            "dot", "vdot")


def run_case(family: str, length: int, tokens: int = TOKENS_PER_STEP) -> dict:
    """Time one step (after one warm-up step) of ``family`` at ``length`` in this process, then
    one more with every matrix product timed (a dispatch mode around each aten call: no trace is
    kept, so the memory stays that of the step)."""
    import time

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from nestlearn.models.presets import preset_config, preset_model_class

    class ProductTimer(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seconds = 0.0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__.split(".")[0]
            if name in PRODUCTS or "scaled_dot_product" in name:
                start = time.perf_counter()
                out = func(*args, **(kwargs or {}))
                self.seconds += time.perf_counter() - start
                return out
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    config = preset_config(family, "tiny")
    model = preset_model_class(family)(config)
    batch = max(1, tokens // length)
    ids = torch.randint(0, config.vocab_size, (batch, length))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()

    step()  # warm-up
    start = time.perf_counter()
    step()
    plain_s = time.perf_counter() - start
    with ProductTimer() as timer:
        step()
    tokens = batch * length  # the tokens actually in the step
    return {"family": family, "length": length, "batch": batch, "step_s": plain_s,
            "tok_s": tokens / plain_s, "products_s": timer.seconds,
            "gemm_share": timer.seconds / plain_s, "bound_tok_s": tokens / timer.seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=["hope", "transformer"])
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--quick", action="store_true",
                   help="T = 512 with 1024 tokens per step (nestlearn bench --quick)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--case", nargs=3, metavar=("FAMILY", "LENGTH", "TOKENS"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]), int(args.case[2]))))
        return 0
    if args.quick:
        args.lengths, tokens = [512], 1024
    else:
        tokens = TOKENS_PER_STEP
    from nestlearn.models.presets import FAMILIES

    for family in args.families:
        if family not in FAMILIES:
            raise SystemExit(f"--families: {family!r} is not one of {list(FAMILIES)}")
    for length in args.lengths:
        if length < 1:
            raise SystemExit(f"--lengths must be positive integers, got {length}")
    from tqdm.auto import tqdm

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cases = [(f, n) for n in args.lengths for f in args.families]
    rows = []
    for family, length in tqdm(cases, desc="cases", unit="case"):
        out = subprocess.run([sys.executable, __file__, "--case", family, str(length), str(tokens)],
                             env=env, capture_output=True, text=True, check=False)
        if out.returncode:
            raise SystemExit(f"case {family} T={length} failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    lines = ["| family | T | step s | tok/s | products s | products share | "
             "bound tok/s (rest = 0) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['length']} | {r['step_s']:.1f} | {r['tok_s']:.0f} | "
                     f"{r['products_s']:.1f} | {r['gemm_share']:.0%} | {r['bound_tok_s']:.0f} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gemm_bound.json").write_text(json.dumps(rows, indent=1) + "\n")
    _plot(rows, args.out / "gemm_bound.png")
    print(f"wrote {args.out / 'gemm_bound.json'} and {args.out / 'gemm_bound.png'}")
    return 0


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['family']}\nT={r['length']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
    ax.bar([i - 0.2 for i in x], [r["tok_s"] for r in rows], width=0.4, label="measured")
    ax.bar([i + 0.2 for i in x], [r["bound_tok_s"] for r in rows], width=0.4,
           label="bound: products only")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("training tokens/s (1 thread)")
    ax.set_title("Training throughput and its product-only bound (tiny presets)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
