"""Benchmark of the associative-memory core: chunk-parallel fast path vs token-by-token reference.

For each memory (linear, residual MLP of Eq. 89) and sequence length, times one forward+backward
pass of ``memory_chunked`` and of ``memory_reference`` with HOPE's default rule (l2 objective,
Delta Gradient Descent, momentum and retention, decision D5), counts the fast path's matmul FLOPs
with ``torch.utils.flop_counter`` and sets its achieved GFLOP/s beside a float32 matmul ceiling
measured in the same run. Before timing, both paths are checked against each other in float64.

    python benchmarks/memory_core.py            # T = 512, 2048, 8192 (several minutes)
    python benchmarks/memory_core.py --quick    # T = 256, 1024 (under a minute)

Prints a table and writes ``memory_core.json`` and ``memory_core.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from nestlearn.memory import MemoryState, memory_chunked, memory_reference

MEMORIES = ("linear", "residual_mlp")


def make_inputs(memory: str, T: int, *, heads: int, dim: int, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=dtype)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    B, H, D = 1, heads, dim
    leaves = {
        "q": randn(B, T, H, D),
        "k": F.normalize(randn(B, T, H, D), dim=-1),
        "v": randn(B, T, H, D),
        "lr": 0.1 * rand(B, T, H),
        "alpha": 0.9 + 0.1 * rand(B, T, H),
        "beta": 0.05 + 0.9 * rand(B, T, H),
    }
    if memory == "linear":
        weights = (0.02 * randn(H, D, D),)
    else:
        weights = (0.02 * randn(H, D, 2 * D), 0.02 * randn(H, 2 * D, D))
    for i, w in enumerate(weights):
        leaves[f"W{i}"] = w
    for t in leaves.values():
        t.requires_grad_(True)
    return leaves, MemoryState(weights=weights)


def forward_backward(fn, memory, leaves, state, chunk):
    o, s = fn(
        leaves["q"], leaves["k"], leaves["v"], leaves["lr"], leaves["alpha"], leaves["beta"],
        memory=memory, objective="l2", rule="dgd", chunk_size=chunk, initial_state=state,
    )
    loss = o.square().mean() + sum(w.square().mean() for w in s.weights)
    loss.backward()
    return o.detach(), [w.detach() for w in s.weights]


def timed(fn, *args, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def validate(memory: str, chunk: int, heads: int, dim: int) -> float:
    """Max abs difference between the two paths (outputs, final weights, input gradients) in
    float64 at a length that ends mid-chunk."""
    T = 3 * chunk + 5
    worst = 0.0
    results = []
    for fn in (memory_chunked, memory_reference):
        leaves, state = make_inputs(memory, T, heads=heads, dim=dim, dtype=torch.float64)
        o, ws = forward_backward(fn, memory, leaves, state, chunk)
        results.append([o, *ws, *(t.grad for t in leaves.values())])
    for a, b in zip(*results):
        worst = max(worst, float((a - b).abs().max()))
    if worst > 1e-8:
        raise SystemExit(f"chunked != reference for {memory}: max abs diff {worst:.3e}")
    return worst


def matmul_ceiling(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = timed(torch.matmul, a, b, repeats=repeats)
    return 2 * n**3 / t / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of the fast path")
    p.add_argument("--quick", action="store_true", help="T = 256, 1024 only")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    lengths = [256, 1024] if args.quick else args.lengths
    args.out.mkdir(parents=True, exist_ok=True)

    ceiling = matmul_ceiling()
    checks = {m: validate(m, args.chunk, args.heads, 8) for m in MEMORIES}
    rows = []
    jobs = [(m, T) for m in MEMORIES for T in lengths]
    for memory, T in tqdm(jobs, desc="memory core", unit="case"):
        leaves, state = make_inputs(memory, T, heads=args.heads, dim=args.head_dim)
        run = (memory_chunked, memory, leaves, state, args.chunk)
        forward_backward(*run)  # warm-up
        with FlopCounterMode(display=False) as counter:
            forward_backward(*run)
        flops = counter.get_total_flops()
        t_fast = timed(forward_backward, *run, repeats=args.repeats)
        t_ref = timed(forward_backward, memory_reference, memory, leaves, state, args.chunk,
                      repeats=1)
        rows.append({
            "memory": memory, "T": T, "chunked_s": t_fast, "reference_s": t_ref,
            "speedup": t_ref / t_fast, "chunked_gflop": flops / 1e9,
            "chunked_gflops_per_s": flops / t_fast / 1e9,
            "fraction_of_ceiling": flops / t_fast / 1e9 / ceiling,
            "chunked_tokens_per_s": T / t_fast,
        })

    header = (f"{'memory':<13}{'T':>6}{'chunked s':>11}{'reference s':>13}{'speedup':>9}"
              f"{'GFLOP/s':>9}{'of ceiling':>12}")
    lines = [
        f"forward+backward, B=1, H={args.heads}, head dim {args.head_dim}, C={args.chunk}, "
        "l2 objective, DGD + momentum + retention, float32, "
        f"{torch.get_num_threads()} threads",
        f"matmul ceiling (fp32 2048x2048): {ceiling:.1f} GFLOP/s; float64 check max abs diff: "
        + ", ".join(f"{m} {d:.1e}" for m, d in checks.items()),
        header,
        "-" * len(header),
    ]
    for r in rows:
        lines.append(
            f"{r['memory']:<13}{r['T']:>6}{r['chunked_s']:>11.3f}{r['reference_s']:>13.2f}"
            f"{r['speedup']:>8.1f}x{r['chunked_gflops_per_s']:>9.2f}"
            f"{100 * r['fraction_of_ceiling']:>11.1f}%"
        )
    print("\n".join(lines))
    result = {
        "config": {"heads": args.heads, "head_dim": args.head_dim, "chunk": args.chunk,
                   "rule": "l2/dgd/momentum/retention", "dtype": "float32", "batch": 1,
                   "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "machine": platform.machine()},
        "matmul_ceiling_gflops_per_s": ceiling,
        "float64_check_max_abs_diff": checks,
        "rows": rows,
    }
    (args.out / "memory_core.json").write_text(json.dumps(result, indent=2))
    _plot(rows, args.out / "memory_core.png", ceiling)
    print(f"wrote {args.out / 'memory_core.json'} and {args.out / 'memory_core.png'}")
    return 0


def _plot(rows, path: Path, ceiling: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for memory in MEMORIES:
        rs = [r for r in rows if r["memory"] == memory]
        Ts = [r["T"] for r in rs]
        ax1.plot(Ts, [r["chunked_s"] for r in rs], "o-", label=f"{memory} chunked")
        ax1.plot(Ts, [r["reference_s"] for r in rs], "s--", label=f"{memory} reference")
        ax2.plot(Ts, [r["chunked_gflops_per_s"] for r in rs], "o-", label=memory)
    ax1.set(xscale="log", yscale="log", xlabel="sequence length T",
            ylabel="forward+backward time (s)", title="chunked vs reference")
    ax2.axhline(ceiling, color="k", ls=":", label="fp32 matmul ceiling")
    ax2.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="GFLOP/s",
            title="chunked path throughput")
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
