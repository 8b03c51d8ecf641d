"""The ``nestlearn`` command.

    nestlearn main [--out DIR]                     the main job (today: the memory-core demo)
    nestlearn levels [--family F] [--preset P]     print a model's levels (decision D1)
    nestlearn levels --model DIR                   ... of a saved model

Later subcommands (train, eval, generate, bench) arrive with the training issue.
User mistakes end with a one-line ``error: ...`` message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_main(args: argparse.Namespace) -> int:
    from nestlearn.demo import run_demo

    report = run_demo(Path(args.out))
    print(f"report: {report}")
    return 0


def _cmd_levels(args: argparse.Namespace) -> int:
    from nestlearn.models import format_levels
    from nestlearn.models.presets import FAMILIES, SIZES, preset_config, preset_model_class

    if args.model:
        from transformers import AutoModelForCausalLM

        path = Path(args.model)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no saved model (config.json) in {path}")
        model = AutoModelForCausalLM.from_pretrained(path)
    else:
        if args.family not in FAMILIES:
            raise ValueError(f"--family must be one of {list(FAMILIES)}, got {args.family!r}")
        if args.preset not in SIZES:
            raise ValueError(f"--preset must be one of {list(SIZES)}, got {args.preset!r}")
        import torch

        with torch.device("meta"):
            model = preset_model_class(args.family)(preset_config(args.family, args.preset))
    print(format_levels(model.levels()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nestlearn", description="Nested Learning in PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("main", help="run the main job and write a report")
    p.add_argument("--out", default="runs/main", help="directory for the report (runs/main)")
    p.set_defaults(func=_cmd_main)
    p = sub.add_parser("levels", help="print the levels of a model (D1)")
    p.add_argument("--family", default="hope", help="transformer, hope, hope_attention, titans, "
                   "titans_mag (default hope)")
    p.add_argument("--preset", default="tiny", help="tiny, 340M, 760M, 1.3B (default tiny)")
    p.add_argument("--model", help="a directory written by save_pretrained (overrides --family)")
    p.set_defaults(func=_cmd_levels)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
