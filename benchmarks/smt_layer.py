"""Benchmark of the self-modifying Titans (SMT) layer against the Titans layer and Transformer++.

For each layer and sequence length T (batch B chosen so that every step has the same number of
tokens), times forward and backward of one training step (float32, CPU, loss ``y.square().mean()``)
and records the peak resident memory of the step. Every configuration runs in a fresh
subprocess, so the peak RSS is that configuration's own.

    python benchmarks/smt_layer.py                 # T = 512, 2048 at 4096 tokens per step
    python benchmarks/smt_layer.py --quick         # T = 512 only, one timed repeat
    python benchmarks/smt_layer.py --impl per_group  # the SMT layer's per-group path as well
    python benchmarks/smt_layer.py --malloc-tuned  # glibc keeps freed memory (see below)

Layers (all d_model 256, 4 heads, chunk 16):

* ``smt``: ``SelfModifyingTitans`` (HOPE's sequence mixer; default fused path);
* ``smt-per_group``: the same layer with ``impl="per_group"`` (one ``memory_chunked`` call per
  group of memories per segment; only with ``--impl per_group``);
* ``titans``: ``TitansMemory`` (residual MLP memory, static projections);
* ``tfpp-1`` / ``tfpp-4``: one / four Transformer++ blocks (RMSNorm, causal SDPA attention with
  RoPE, SwiGLU MLP), four being the ``tiny`` preset's depth.

``--malloc-tuned`` runs the subprocesses with ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` set large, so glibc keeps freed blocks instead of returning them to the
operating system after every backward pass; on CPU the first touch of fresh pages is a large part
of a recurrent layer's step (``nestlearn/memory/README.md``, section 8).

Prints a table and writes ``smt_layer.json`` and ``smt_layer.png`` to ``--out``. Timings on a
shared machine are noisy: compare ratios from one run. Each number is the minimum over
``--repeats`` steps after a warm-up step, as wall time and as process CPU time (``cpu s``, all
threads; less sensitive to other processes' load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

D_MODEL, HEADS, CHUNK = 256, 4, 16


class _TransformerBlock(nn.Module):
    """Pre-norm Transformer++ block (the baseline's ``TransformerBlock``, built from layers)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        from nestlearn.layers.attention import Attention
        from nestlearn.layers.mlp import SwiGLU
        from nestlearn.layers.norm import RMSNorm

        hidden = 256 * ((int(8 * d / 3) + 255) // 256)  # SwiGLU width ~ 8/3 d, rounded up
        self.attn_norm, self.mlp_norm = RMSNorm(d), RMSNorm(d)
        self.attn = Attention(d, num_heads=heads)
        self.mlp = SwiGLU(d, hidden_size=hidden)

    def forward(self, x):
        x = x + self.attn(self.attn_norm(x))[0]
        return x + self.mlp(self.mlp_norm(x))


class _Stack(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_TransformerBlock(D_MODEL, HEADS) for _ in range(n))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x, None


def build(name: str) -> tuple[nn.Module, dict]:
    from nestlearn.layers.self_modifying_titans import SelfModifyingTitans
    from nestlearn.layers.titans_memory import TitansMemory

    if name == "smt":
        return SelfModifyingTitans(D_MODEL, HEADS, chunk_size=CHUNK, proj_chunk_size=CHUNK), {}
    if name == "smt-per_group":
        layer = SelfModifyingTitans(D_MODEL, HEADS, chunk_size=CHUNK, proj_chunk_size=CHUNK)
        return layer, {"impl": "per_group"}
    if name == "titans":
        return TitansMemory(D_MODEL, HEADS, chunk_size=CHUNK), {}
    if name.startswith("tfpp-"):
        return _Stack(int(name.split("-")[1])), {}
    raise ValueError(name)


def run_one(name: str, B: int, T: int, repeats: int, threads: int | None) -> dict:
    """Time one configuration in this process (called in a subprocess by ``main``)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    layer, kw = build(name)
    x = torch.randn(B, T, D_MODEL, requires_grad=True)

    def step() -> tuple[float, float, float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        y, _ = layer(x, **kw)
        t1, c1 = time.perf_counter(), time.process_time()
        y.square().mean().backward()
        t2, c2 = time.perf_counter(), time.process_time()
        layer.zero_grad(set_to_none=True)
        x.grad = None
        return t1 - t0, t2 - t1, c1 - c0, c2 - c1

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()  # warm-up (and the peak-memory step)
    times = [step() for _ in range(repeats)]
    # the minimum over repeats: on a shared machine other processes only ever add time
    fwd, bwd, fwd_cpu, bwd_cpu = (min(t[i] for t in times) for i in range(4))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "layer": name, "B": B, "T": T, "params": sum(p.numel() for p in layer.parameters()),
        "fwd_s": fwd, "bwd_s": bwd, "step_s": fwd + bwd,
        "fwd_cpu_s": fwd_cpu, "bwd_cpu_s": bwd_cpu, "step_cpu_s": fwd_cpu + bwd_cpu,
        "tokens_per_s": B * T / (fwd + bwd),
        "peak_rss_mib": peak / 1024, "step_rss_mib": (peak - rss_before) / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per step (B * T)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--impl", choices=["chunked", "per_group"], default="chunked",
                    help="also time the SMT layer's per-group path")
    ap.add_argument("--layers", nargs="+", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--malloc-tuned", action="store_true",
                    help="run with glibc's mmap/trim thresholds raised (keeps freed memory)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--one", nargs=3, metavar=("LAYER", "B", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        name, B, T = args.one
        print(json.dumps(run_one(name, int(B), int(T), args.repeats, args.threads)))
        return
    if args.quick:
        args.lengths, args.repeats = [512], 1
    layers = args.layers or (["smt"] + (["smt-per_group"] if args.impl == "per_group" else [])
                             + ["titans", "tfpp-1", "tfpp-4"])
    rows = []
    for T in args.lengths:
        B = max(1, args.tokens // T)
        for name in layers:
            cmd = [sys.executable, __file__, "--one", name, str(B), str(T),
                   "--repeats", str(args.repeats)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            env = dict(os.environ)
            if args.malloc_tuned:
                env.update(MALLOC_MMAP_THRESHOLD_=str(2**32), MALLOC_TRIM_THRESHOLD_=str(2**36))
            out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                 env=env).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{name:>14} T={T:5d} B={B:3d}  fwd {r['fwd_s']:.3f}s  bwd {r['bwd_s']:.3f}s  "
                  f"peak {r['peak_rss_mib']:.0f} MiB", flush=True)
    for T in args.lengths:
        ref = {r["layer"]: r for r in rows if r["T"] == T}
        base = ref.get("tfpp-1")
        print(f"\nT = {T} (B = {max(1, args.tokens // T)}, {args.tokens} tokens per step)")
        print(f"{'layer':>14} {'params':>9} {'fwd s':>7} {'bwd s':>7} {'step s':>7} "
              f"{'cpu s':>7} {'tok/s':>8} {'vs tfpp-1':>9} {'cpu vs':>7} {'peak MiB':>9}")
        for r in (r for r in rows if r["T"] == T):
            rel = "" if base is None else f"{base['step_s'] / r['step_s']:.2f}x"
            rel_cpu = "" if base is None else f"{base['step_cpu_s'] / r['step_cpu_s']:.2f}x"
            print(f"{r['layer']:>14} {r['params']:>9} {r['fwd_s']:>7.3f} {r['bwd_s']:>7.3f} "
                  f"{r['step_s']:>7.3f} {r['step_cpu_s']:>7.3f} {r['tokens_per_s']:>8.0f} "
                  f"{rel:>9} {rel_cpu:>7} {r['peak_rss_mib']:>9.0f}")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": args.threads or torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor(),
            "tokens_per_step": args.tokens, "repeats": args.repeats,
            "malloc_tuned": args.malloc_tuned}
    stem = "smt_layer" + ("_malloc_tuned" if args.malloc_tuned else "")
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    _plot(rows, args.out / f"{stem}.png")
    print(f"\nwrote {args.out / (stem + '.json')} and {args.out / (stem + '.png')}")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["T"] for r in rows})
    names = list(dict.fromkeys(r["layer"] for r in rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        rs = {r["T"]: r for r in rows if r["layer"] == name}
        xs = [j + i * width for j in range(len(lengths))]
        fwd = [rs[T]["fwd_s"] if T in rs else 0 for T in lengths]
        bwd = [rs[T]["bwd_s"] if T in rs else 0 for T in lengths]
        ax1.bar(xs, fwd, width, label=f"{name} fwd")
        ax1.bar(xs, bwd, width, bottom=fwd, alpha=0.5)
        ax2.bar(xs, [rs[T]["peak_rss_mib"] if T in rs else 0 for T in lengths], width,
                label=name)
    for ax, title in ((ax1, "step time (s): forward + backward (light)"),
                      (ax2, "peak RSS (MiB)")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(lengths))])
        ax.set_xticklabels([f"T={T}" for T in lengths])
        ax.set_title(title)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
