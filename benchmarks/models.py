"""Benchmark of the language models at equal parameter count (tiny presets, float32, CPU).

1. Training throughput: tokens/s of one forward+backward (loss on all positions) at sequence
   lengths T in {512, 2048, 8192} with 8192 tokens per step (batch 8192 / T), and the peak
   resident memory of the process doing it.
2. Decoding: tokens/s of greedy one-token steps after a context of 1k and of 16k tokens (fed
   in pieces of 1024 tokens), the memory the cache holds (bytes of the tensors in it) and the
   process's peak.

Each case runs in its own subprocess, so peak memory belongs to that case alone. A family
name with ``+ckpt`` (e.g. ``hope+ckpt``) trains with activation checkpointing of every block.

    python benchmarks/models.py                 # everything (tens of minutes on 2 cores)
    python benchmarks/models.py --quick         # T = 512 and 2048, contexts 256 and 2048
    python benchmarks/models.py --families transformer hope --lengths 2048 8192 --contexts
                                                # training at T = 2048 and 8192 only
    python benchmarks/models.py --families hope hope+ckpt --lengths 8192 --contexts
                                                # memory and time of activation checkpointing

Prints tables and writes ``models.json`` and ``models.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

FAMILIES = ("transformer", "hope", "hope_attention", "titans")
TOKENS_PER_STEP = 8192
PREFILL_PIECE = 1024


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _state_bytes(obj, seen=None) -> int:
    import torch

    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        key = (obj.untyped_storage().data_ptr(), obj.untyped_storage().nbytes())
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, (list, tuple)):
        return sum(_state_bytes(o, seen) for o in obj)
    if hasattr(obj, "__dict__"):
        return sum(_state_bytes(v, seen) for v in vars(obj).values())
    if hasattr(obj, "__dataclass_fields__"):
        return sum(_state_bytes(getattr(obj, f), seen) for f in obj.__dataclass_fields__)
    return 0


def run_case(kind: str, family: str, length: int, steps: int) -> dict:
    """Run one case in this process and return its measurements."""
    import torch

    from nestlearn.models.presets import preset_config, preset_model_class

    torch.manual_seed(0)
    base, _, option = family.partition("+")
    config = preset_config(base, "tiny")
    model = preset_model_class(base)(config)
    if option == "ckpt":  # activation checkpointing of every block
        from nestlearn.models.base import enable_activation_checkpointing

        enable_activation_checkpointing(model)
    elif option:
        raise ValueError(f"unknown family option +{option} (known: +ckpt)")
    vocab = config.vocab_size
    if kind == "train":
        batch = max(1, TOKENS_PER_STEP // length)
        ids = torch.randint(0, vocab, (batch, length))
        model.train()
        times = []
        for _ in range(steps + 1):  # the first step is a warm-up
            t0 = time.perf_counter()
            model(ids, labels=ids).loss.backward()
            model.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        dt = min(times[1:])
        return dict(kind=kind, family=family, T=length, batch=batch, step_s=dt,
                    tokens_per_s=batch * length / dt, peak_rss_mb=_peak_rss_mb())
    model.eval()
    ids = torch.randint(0, vocab, (1, length))
    with torch.no_grad():
        # The context is fed in pieces of PREFILL_PIECE tokens keeping only the last logits (as
        # generate() keeps only the last position): the peak then measures what decoding holds
        # (weights, cache, one piece's activations), not a one-shot prefill of the whole
        # context. Every model gets the same pieces; the KV caches grow, the recurrent states
        # do not.
        t0 = time.perf_counter()
        cache = None
        for lo in range(0, length, PREFILL_PIECE):
            out = model(ids[:, lo:lo + PREFILL_PIECE], past_key_values=cache, use_cache=True,
                        logits_to_keep=1)
            cache = out.past_key_values
        prefill_s = time.perf_counter() - t0
        nxt = out.logits[:, -1:].argmax(-1)
        times = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            out = model(nxt, past_key_values=cache, use_cache=True,
                        attention_mask=torch.ones(1, length + i + 1, dtype=torch.long))
            times.append(time.perf_counter() - t0)
            cache = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
    dt = sorted(times[1:])[len(times[1:]) // 2]
    return dict(kind=kind, family=family, context=length, prefill_s=prefill_s, step_s=dt,
                tokens_per_s=1 / dt, cache_mb=_state_bytes(cache.states) / 2**20,
                peak_rss_mb=_peak_rss_mb())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--families", nargs="+", default=list(FAMILIES))
    p.add_argument("--lengths", type=int, nargs="*", default=None,
                   help="training sequence lengths (default 512 2048 8192; --quick: 512 2048); "
                        "give none to skip training")
    p.add_argument("--contexts", type=int, nargs="*", default=None,
                   help="decoding contexts (default 1024 16384; --quick: 256 2048); "
                        "give none to skip decoding")
    p.add_argument("--steps", type=int, default=2, help="timed training steps (min is kept)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--case", nargs=4, metavar=("KIND", "FAMILY", "LENGTH", "STEPS"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        kind, family, length, steps = args.case
        print(json.dumps(run_case(kind, family, int(length), int(steps))))
        return 0
    from tqdm import tqdm

    lengths = args.lengths
    if lengths is None:
        lengths = [512, 2048] if args.quick else [512, 2048, 8192]
    contexts = args.contexts
    if contexts is None:
        contexts = [256, 2048] if args.quick else [1024, 16384]
    jobs = [("train", f, T, args.steps) for T in lengths for f in args.families]
    jobs += [("decode", f, c, 8) for c in contexts for f in args.families]
    rows = []
    for kind, family, length, steps in tqdm(jobs, desc="models benchmark", unit="case"):
        cmd = [sys.executable, __file__, "--case", kind, family, str(length), str(steps)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            rows.append(dict(kind=kind, family=family, length=length,
                             error=done.stderr.strip().splitlines()[-1]))
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    args.out.mkdir(parents=True, exist_ok=True)
    text = _tables(rows, lengths, contexts, args.families)
    print(text)
    (args.out / "models.json").write_text(json.dumps(
        {"tokens_per_step": TOKENS_PER_STEP, "rows": rows}, indent=2))
    _plot(rows, args.families, args.out / "models.png")
    print(f"wrote {args.out / 'models.json'} and {args.out / 'models.png'}")
    return 0


def _tables(rows, lengths, contexts, families) -> str:
    def get(kind, fam, key, val):
        for r in rows:
            if r["kind"] == kind and r["family"] == fam and r.get(key) == val and "error" not in r:
                return r
        return None

    lines = []
    if lengths:
        lines += [f"Training, tiny presets, {TOKENS_PER_STEP} tokens per step (forward+backward); "
                  "'vs tf': tokens/s relative to transformer at the same T:",
                  f"{'family':<16}" + "".join(f"{'T=' + str(T) + ' tok/s':>16}{'peak MB':>9}"
                                              f"{'vs tf':>7}" for T in lengths)]
    for fam in families if lengths else ():
        cells = ""
        for T in lengths:
            r, ref = get("train", fam, "T", T), get("train", "transformer", "T", T)
            ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if r and ref else "-"
            cells += (f"{r['tokens_per_s']:>16.0f}{r['peak_rss_mb']:>9.0f}{ratio:>7}" if r
                      else f"{'error':>16}{'':>9}{'':>7}")
        lines.append(f"{fam:<16}{cells}")
    if contexts:
        lines += [""] if lines else []
        lines += [f"Decoding (batch 1, greedy, after a context fed in pieces of {PREFILL_PIECE} "
                  "tokens):",
                  f"{'family':<16}" + "".join(f"{'ctx=' + str(c) + ' tok/s':>17}{'cache MB':>10}"
                                              f"{'peak MB':>9}" for c in contexts)]
        for fam in families:
            cells = ""
            for c in contexts:
                r = get("decode", fam, "context", c)
                cells += (f"{r['tokens_per_s']:>17.1f}{r['cache_mb']:>10.2f}"
                          f"{r['peak_rss_mb']:>9.0f}"
                          if r else f"{'error':>17}{'':>10}{'':>9}")
            lines.append(f"{fam:<16}{cells}")
    errors = [r for r in rows if "error" in r]
    lines += [f"error: {r['kind']} {r['family']} {r['length']}: {r['error']}" for r in errors]
    return "\n".join(lines)


def _plot(rows, families, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for fam in families:
        tr = sorted((r["T"], r["tokens_per_s"]) for r in rows
                    if r["kind"] == "train" and r["family"] == fam and "error" not in r)
        de = sorted((r["context"], r["cache_mb"]) for r in rows
                    if r["kind"] == "decode" and r["family"] == fam and "error" not in r)
        if tr:
            ax1.plot(*zip(*tr), "o-", label=fam)
        if de:
            ax2.plot(*zip(*de), "o-", label=fam)
    ax1.set(xscale="log", xlabel="sequence length T", ylabel="training tokens/s",
            title="training throughput (equal parameters)")
    ax2.set(xscale="log", yscale="log", xlabel="context length", ylabel="cache size (MB)",
            title="decoding state size")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.get_lines():  # the decoding panel is empty when decoding was skipped
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
