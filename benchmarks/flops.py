"""Arithmetic per token of the language models at equal parameter count (tiny presets).

Counts the floating-point operations of one forward+backward pass with
``torch.utils.flop_counter.FlopCounterMode`` (matrix products; elementwise work is not
counted), per token, at the sequence lengths given. CPU attention kernels are not counted by
the flop counter, so the causal attention of the families that have it is added from the
shapes: ``2 T D`` multiply-adds per token and layer for ``QK^T`` and ``AV`` over the causal
half, times 3 for forward + backward. Together with ``models.py``'s tokens/s this separates
"more arithmetic" from "less efficient arithmetic" (docs/performance.md).

    python benchmarks/flops.py                       # T = 2048 and 8192
    python benchmarks/flops.py --lengths 512 2048

Prints a table and writes ``flops.json`` and ``flops.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FAMILIES = ("transformer", "hope", "hope_attention", "titans")
ATTENTION = {"transformer", "hope_attention"}  # families whose every block has global attention


def count(family: str, length: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nestlearn.models.presets import preset_config, preset_model_class

    torch.manual_seed(0)
    config = preset_config(family, "tiny")
    model = preset_model_class(family)(config)
    ids = torch.randint(0, config.vocab_size, (1, length))
    with FlopCounterMode(display=False) as counter:
        model(ids, labels=ids).loss.backward()
    counted = counter.get_total_flops() / length
    attention = 0.0
    if family in ATTENTION:  # 2 products x 2 flops x (T/2 keys) x D, x 3 for fwd+bwd, per layer
        attention = 3 * 2 * length * config.hidden_size * config.num_hidden_layers
    return dict(family=family, T=length, counted_mflop=counted / 1e6,
                attention_mflop=attention / 1e6, total_mflop=(counted + attention) / 1e6)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES))
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--quick", action="store_true", help="T = 512 only (nestlearn bench --quick)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    if args.quick:
        args.lengths = [512]
    rows = [count(f, T) for T in args.lengths for f in args.families]
    lines = ["MFLOP per token, forward+backward (counted matrix products + causal attention from "
             "the shapes):",
             f"{'family':<16}" + "".join(f"{'T=' + str(T) + ' counted':>18}{'attention':>11}"
                                         f"{'total':>9}" for T in args.lengths)]
    for fam in args.families:
        cells = ""
        for T in args.lengths:
            r = next(r for r in rows if r["family"] == fam and r["T"] == T)
            cells += (f"{r['counted_mflop']:>18.1f}{r['attention_mflop']:>11.1f}"
                      f"{r['total_mflop']:>9.1f}")
        lines.append(f"{fam:<16}{cells}")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flops.json").write_text(json.dumps({"rows": rows}, indent=2))
    _plot(rows, args.families, args.lengths, args.out / "flops.png")
    print(f"wrote {args.out / 'flops.json'} and {args.out / 'flops.png'}")
    return 0


def _plot(rows, families, lengths, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / len(lengths)
    for j, T in enumerate(lengths):
        totals = [next(r["total_mflop"] for r in rows if r["family"] == f and r["T"] == T)
                  for f in families]
        ax.bar([i + j * width for i in range(len(families))], totals, width, label=f"T={T}")
    ax.set_xticks([i + width * (len(lengths) - 1) / 2 for i in range(len(families))], families)
    ax.set(ylabel="MFLOP per token (fwd+bwd)", title="arithmetic per token (tiny presets)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
