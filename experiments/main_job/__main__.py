"""``python -m experiments.main_job [options]``: the main job from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.main_job.config import MainJob


def build_parser() -> argparse.ArgumentParser:
    d = MainJob.__dataclass_fields__
    out, steps, lanes, threads = (d[k].default for k in ("out", "steps", "lanes", "threads"))
    families, limit = ",".join(d["families"].default), d["time_limit"].default
    p = argparse.ArgumentParser(prog="python -m experiments.main_job",
                                description="the main job: train tiny HOPE, Transformer++ and "
                                "Titans on the bundled corpus, evaluate, write a report")
    p.add_argument("--out", default=out, help=f"directory for the report ({out})")
    p.add_argument("--steps", type=int, default=steps, help=f"optimizer steps per model ({steps})")
    p.add_argument("--families", default=families,
                   help=f"comma-separated model families ({families})")
    p.add_argument("--lanes", type=int, default=lanes,
                   help=f"training processes in parallel ({lanes})")
    p.add_argument("--threads", type=int, default=threads, help=f"threads per process ({threads})")
    p.add_argument("--time-limit", type=float, default=limit,
                   help=f"minutes of probe + training before running trainings are stopped "
                   f"({limit:g}; 0 = none)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="no speed probe: train --steps steps even if they do not fit the time "
                   "limit (by default every model trains the steps that fit it, at most --steps)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    from experiments.main_job.job import run_main_job

    args = build_parser().parse_args(argv)
    try:
        job = MainJob(out=args.out, steps=args.steps, lanes=args.lanes, threads=args.threads,
                      time_limit=args.time_limit, calibrate=not args.no_calibrate,
                      families=tuple(f.strip() for f in args.families.split(",") if f.strip()))
        report = run_main_job(job, progress=not args.quiet)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a training or evaluation child failed: its log is quoted
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"report: {Path(report).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
