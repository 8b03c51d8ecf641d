"""Benchmark of the synthetic tasks' models: seconds per training step of the ``task`` preset.

One AdamW step (forward, backward, update) of every family at the ``task`` preset (~135K
parameters), on token batches shaped like the suites' (batch 32; 42 tokens: a formal-language
string of <= 40 characters with <sep> and its label; 130 and 257: MAD in-context recall and
selective copying), for the memory chunk sizes 4 (the preset's) and 16 (every other preset's).
The median of ``--repeats`` timed steps after two warm-up steps. Compare the rows of one run
with each other (ratios), not with other machines.

    python benchmarks/task_models.py            # lengths 42, 130, 257; chunks 4 and 16
    python benchmarks/task_models.py --quick    # length 42, chunk 4 and 16, 3 repeats

Prints a table and writes ``task_models.json`` and ``task_models.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

FAMILIES = ("transformer", "hope_attention", "titans", "titans_mag", "hope")


def step_seconds(family: str, chunk: int, batch: int, length: int, repeats: int) -> float:
    import torch

    from nestlearn.models.presets import preset_config, preset_model_class

    fields = {}
    if family in ("hope",):
        fields = {"smt_chunk_size": chunk, "smt_proj_chunk_size": chunk}
    elif family.startswith("titans"):
        fields = {"chunk_size": chunk}
    torch.manual_seed(0)
    config = preset_config(family, "task", vocab_size=32, **fields)
    model = preset_model_class(family)(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(3, 32, (batch, length))
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[42, 130, 257])
    ap.add_argument("--chunks", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    if args.quick:
        args.lengths, args.repeats = [42], 3
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print(f"{'family':<16}{'chunk':>6}{'tokens':>8}{'s/step':>10}{'vs transformer':>16}")
    for length in args.lengths:
        base = step_seconds("transformer", 0, args.batch, length, args.repeats)
        for family in FAMILIES:
            chunks = args.chunks if family in ("hope", "titans", "titans_mag") else [0]
            for chunk in chunks:
                s = base if family == "transformer" else step_seconds(
                    family, chunk, args.batch, length, args.repeats)
                rows.append({"family": family, "chunk": chunk, "length": length,
                             "batch": args.batch, "seconds": s, "vs_transformer": s / base})
                print(f"{family:<16}{chunk or '-':>6}{length:>8}{s:>10.3f}{s / base:>15.1f}x",
                      flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"threads": torch.get_num_threads(), "torch": torch.__version__,
            "repeats": args.repeats}
    (args.out / "task_models.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                          indent=2))
    _plot(rows, args.out / "task_models.png")
    print(f"wrote {args.out / 'task_models.json'} and task_models.png")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for family in FAMILIES:
        for chunk in sorted({r["chunk"] for r in rows if r["family"] == family}):
            pts = [(r["length"], r["seconds"]) for r in rows
                   if r["family"] == family and r["chunk"] == chunk]
            label = family + (f" (chunk {chunk})" if chunk else "")
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("tokens per row (batch 32)")
    ax.set_ylabel("seconds per training step")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
