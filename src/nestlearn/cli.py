"""The ``nestlearn`` command.

    nestlearn main [--out DIR]     the main job (today: a demonstration of the memory core)

Later subcommands (train, eval, generate, levels, bench) arrive with the training issue.
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nestlearn", description="Nested Learning in PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("main", help="run the main job and write a report")
    p.add_argument("--out", default="runs/main", help="directory for the report (runs/main)")
    p.set_defaults(func=_cmd_main)
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
