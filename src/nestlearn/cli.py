"""The ``nestlearn`` command.

    nestlearn demo [--out DIR]                     the memory-core demonstration
    nestlearn levels [--family F] [--preset P]     print a model's levels (decision D1)
    nestlearn levels --model RUN                   ... of a trained run or saved model
    nestlearn train RECIPE [--family F] [--set section.field=value ...] [--out DIR]
                                                   train (resumes from DIR's latest checkpoint;
                                                   --set may be repeated, all of them apply)
    nestlearn eval RUN [--split validation]        perplexity and per-position loss (NL Fig. 10)
    nestlearn eval --suite formal|mad|mqar [--out DIR]
                                                   a synthetic table, every family, 3 seeds
    nestlearn task --task T [--family F ...] [--seeds N] --out DIR
                                                   train and score on a synthetic task
    nestlearn task --train-file F --test-file F1 [--test-file F2 ...] --out DIR
                                                   ... on a task of JSON Lines files
    nestlearn generate RUN --prompt TEXT           sample text, printed as it is generated
    nestlearn bench [NAME ...] [--quick]           run benchmarks/NAME.py (all by default)

``RUN`` is a run directory (``train.out_dir``), one of its checkpoints or its ``model/``.
Under ``torchrun --nproc-per-node N -m nestlearn train ...`` training uses DDP (FSDP2 with
``--set train.parallel=fsdp``).

User mistakes end with a one-line ``error: ...`` message and exit code 2, never a traceback.
The main job (tiny HOPE vs Transformer++ vs Titans with a report) is an experiment, not a verb:
``python -m experiments.main_job`` from the repository root (``bash scripts/main.sh``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_demo(args: argparse.Namespace) -> int:
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
        if (path / "config.json").is_file():  # a save_pretrained directory
            model = AutoModelForCausalLM.from_pretrained(path)
        else:  # a run directory or one of its checkpoints, as eval and generate take
            from nestlearn.train import load_run

            model = load_run(path)[1]
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


def _cmd_train(args: argparse.Namespace) -> int:
    from nestlearn.train import apply_overrides, get_recipe, train

    _positive("--steps", args.steps)
    config = get_recipe(args.recipe, family=args.family)
    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    config = apply_overrides(config, overrides)
    result = train(config, resume=args.resume, progress=not args.quiet)
    if result.rank != 0:
        return 130 if result.interrupted else 0
    val = f", validation loss {result.val_losses[-1][1]:.4f}" if result.val_losses else ""
    print(f"run {result.run_dir}: step {result.step}/{config.steps}, loss "
          f"{result.losses[-1]:.4f}{val}, {result.tokens_per_second:,.0f} tokens/s"
          + (f" (resumed from step {result.resumed_from})" if result.resumed_from else ""))
    if result.interrupted:
        print(f"stopped early; run the same command to resume from {result.run_dir}/checkpoints")
        return 130
    print(f"model: {result.model_dir}; metrics: {result.run_dir}/metrics.jsonl; plot: "
          f"{result.run_dir}/loss.png")
    return 0


def _command_line() -> str:
    import shlex

    return "nestlearn " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _families(names: list[str] | None, default: tuple[str, ...]) -> list[str]:
    from nestlearn.models.presets import FAMILIES, TASK_FAMILIES

    if not names:
        return list(default)
    out: list[str] = []
    for name in names:
        for part in name.split(","):
            if part == "all":
                out.extend(FAMILIES)
            elif part not in TASK_FAMILIES:
                raise ValueError(f"--family must be one of {list(TASK_FAMILIES)} or all, "
                                 f"got {part!r}")
            else:
                out.append(part)
    return list(dict.fromkeys(out))


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")


def _set_threads(threads: int | None) -> None:
    _positive("--threads", threads)
    if threads:
        import torch

        torch.set_num_threads(threads)


def _cmd_task(args: argparse.Namespace) -> int:
    from nestlearn.eval.runner import budget_for, file_task, run_task, summarize, with_steps
    from nestlearn.eval.tasks import TASKS
    from nestlearn.models.presets import FAMILIES

    for name in ("steps", "batch_size", "seeds"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    _set_threads(args.threads)
    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if bool(args.task) == bool(args.train_file):
        raise ValueError("give either --task (one of the generated tasks) or --train-file")
    if args.task and args.task not in TASKS:
        raise ValueError(f"--task must be one of {sorted(TASKS)}, got {args.task!r}")
    if args.train_file and not args.test_file:
        raise ValueError("--train-file needs at least one --test-file")
    if args.test_file and not args.train_file:
        raise ValueError("--test-file is for a task of files: give --train-file too")
    task = args.task or file_task(args.train_file, args.test_file)
    name = args.task or task.name
    budget = with_steps(budget_for(name), steps=args.steps, batch_size=args.batch_size,
                        lr=args.lr)
    families = _families(args.family, FAMILIES)
    results = run_task(task, families, args.seeds, args.out, budget=budget,
                       progress=not args.quiet, command=_command_line())
    metric = "accuracy" if results["kind"] == "classification" else "token_accuracy"
    for family, tests in summarize(results, "accuracy").items():
        tokens = summarize(results, "token_accuracy")[family]
        print(f"{family:<18}" + "  ".join(
            f"{t} {100 * m:5.1f} ± {100 * s:4.1f}%"
            + (f" (tokens {100 * tokens[t][0]:.1f}%)" if metric == "token_accuracy" else "")
            for t, (m, s, _) in tests.items()))
    print(f"wrote {Path(args.out).resolve() / 'results.json'} and results.png")
    return 0


def _cmd_suite(args: argparse.Namespace) -> int:
    from nestlearn.eval.suites import run_suite
    from nestlearn.models.presets import FAMILIES

    _positive("--steps", args.steps)
    _positive("--seeds", args.seeds)
    _set_threads(args.threads)
    out = Path(args.out or f"runs/suite_{args.suite}")
    run_suite(args.suite, out, _families(args.family, FAMILIES), seeds=args.seeds,
              steps=args.steps, tasks=args.tasks, progress=not args.quiet,
              command=_command_line())
    print((out / "table.md").read_text())
    print(f"wrote {(out / 'table.md').resolve()}, suite.json and suite.png")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    if args.suite:
        if args.run:
            raise ValueError("give either a RUN to evaluate or --suite, not both")
        return _cmd_suite(args)
    if not args.run:
        raise ValueError("give a RUN directory to evaluate, or --suite formal|mad|mqar")

    _positive("--seq-len", args.seq_len)
    _positive("--batch-size", args.batch_size)
    if args.max_batches < 0:
        raise ValueError(f"--max-batches must be 0 (the whole split) or a positive integer, got "
                         f"{args.max_batches}")
    from nestlearn.data import prepare_data
    from nestlearn.eval import evaluate
    from nestlearn.train import load_run

    config, model, _, weights = load_run(Path(args.run))
    seq_len = args.seq_len if args.seq_len is not None else config.data.seq_len
    data = prepare_data(config.data.sources, tokenizer=config.data.tokenizer,
                        vocab_size=config.data.vocab_size, cache_dir=config.data.cache_dir,
                        progress=not args.quiet)
    result = evaluate(model, data[args.split], seq_len=seq_len,
                      batch_size=args.batch_size if args.batch_size is not None
                      else config.data.batch_size,
                      max_batches=args.max_batches, progress=not args.quiet)
    out = Path(args.out) if args.out else weights / f"eval_{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"weights": str(weights), "split": args.split, "seq_len": seq_len,
                               "loss": result.loss, "perplexity": result.perplexity,
                               "tokens": result.tokens, "per_position": result.per_position},
                              indent=1) + "\n")
    curve = result.per_position
    marks = sorted({p for p in (0, 1, 3, 7, 15, 31, 63, 127, 255, 511, 1023, 2047, len(curve) - 1)
                    if p < len(curve)})
    print(f"{args.split}: loss {result.loss:.4f}, perplexity {result.perplexity:.2f} over "
          f"{result.tokens:,} tokens ({weights})")
    print("loss by position: " + ", ".join(f"{p + 1}: {curve[p]:.3f}" for p in marks))
    plot = _plot_context_curve(out.with_suffix(".png"), curve, title=f"{weights} ({args.split})")
    print(f"wrote {out}" + (f" and {plot}" if plot else ""))
    return 0


def _plot_context_curve(path: Path, curve: list[float], *, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(curve) + 1), curve)
    ax.set_xscale("log")
    ax.set_xlabel("position in the window (tokens)")
    ax.set_ylabel("mean next-token loss (nats)")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


class _PrintStreamer:
    """A ``generate()`` streamer printing the decoded text as tokens arrive."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.ids, self.shown, self.prompt_seen = tokenizer, [], 0, False

    def put(self, value) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # a multi-byte character still incomplete
            return
        print(text[self.shown:], end="", flush=True)
        self.shown = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids)
        print(text[self.shown:], flush=True)
        self.shown = len(text)


def _cmd_generate(args: argparse.Namespace) -> int:
    import math

    import torch

    from nestlearn.train import load_run

    if args.max_new_tokens <= 0:
        raise ValueError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise ValueError(f"--temperature must be a finite number >= 0 (0 = greedy), got "
                         f"{args.temperature}")
    _positive("--top-k", args.top_k)
    _, model, tokenizer, _ = load_run(Path(args.run))
    ids = [tokenizer.eot_id, *tokenizer.encode(args.prompt)]
    torch.manual_seed(args.seed)
    sample = args.temperature > 0
    print(args.prompt, end="", flush=True)
    with torch.no_grad():
        model.generate(torch.tensor([ids]), max_new_tokens=args.max_new_tokens, do_sample=sample,
                       temperature=args.temperature if sample else None,
                       top_k=args.top_k if sample else None,
                       eos_token_id=tokenizer.eot_id, pad_token_id=tokenizer.eot_id,
                       streamer=_PrintStreamer(tokenizer))
    return 0


def _benchmarks_dir() -> Path:
    """The checkout's own ``benchmarks/`` (never the current directory's: running whatever
    ``./benchmarks/*.py`` holds would execute a stranger's code)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks"
    if not path.is_dir():
        raise FileNotFoundError(f"no benchmarks/ beside this nestlearn ({path}): the benchmarks "
                                "ship with a checkout of the repository, not with the package")
    return path


def _cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    root = _benchmarks_dir()
    known = sorted(p.stem for p in root.glob("*.py") if not p.stem.startswith("_"))
    if args.list:
        print("\n".join(known))
        return 0
    names = args.names or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown benchmark {unknown[0]!r}; known: {', '.join(known)}")
    for name in names:
        cmd = [sys.executable, str(root / f"{name}.py")] + (["--quick"] if args.quick else []) + (
            ["--out", args.out] if args.out else [])
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        code = subprocess.run(cmd, check=False).returncode
        if code:
            raise ValueError(f"benchmark {name} failed with exit code {code}")
    return 0


def _add_task_parser(sub) -> None:
    p = sub.add_parser("task", help="train and score small models on a synthetic task")
    p.add_argument("--task", help="a generated task: parity, aa_star, abab_star, anbn, anbncn, "
                   "shuffle2, mad_*, mqar, mqar_8/16/32")
    p.add_argument("--train-file", help="a JSON Lines training file (instead of --task)")
    p.add_argument("--test-file", action="append", help="a JSON Lines test file (repeatable)")
    p.add_argument("--family", action="append", help="families or HOPE ablations (repeat or "
                   "comma-separate; all = the five families; default all)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the task's budget)")
    p.add_argument("--batch-size", type=int, help="default: the task's budget")
    p.add_argument("--lr", type=float, help="default: the task's budget")
    p.add_argument("--out", required=True, help="output directory (a rerun resumes it)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_task)


def build_parser() -> argparse.ArgumentParser:
    from nestlearn.train import ModelConfig

    family, size = ModelConfig.family, ModelConfig.size
    parser = argparse.ArgumentParser(prog="nestlearn", description="Nested Learning in PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="the memory-core demonstration (chunked vs reference, "
                       "recall of the Hebbian and delta rules)")
    p.add_argument("--out", default="runs/demo", help="directory for the report (runs/demo)")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("levels", help="print the levels of a model (D1)")
    p.add_argument("--family", default=family, help="transformer, hope, hope_attention, "
                   f"titans, titans_mag (default {family})")
    p.add_argument("--preset", default=size, help=f"tiny, 340M, 760M, 1.3B (default {size})")
    p.add_argument("--model", help="a run directory, one of its checkpoints or a directory "
                   "written by save_pretrained (overrides --family)")
    p.set_defaults(func=_cmd_levels)

    p = sub.add_parser("train", help="train a model from a recipe (resumes a run directory)")
    p.add_argument("recipe", help="debug_cpu (seconds), tiny (minutes), tiny_stream")
    p.add_argument("--family", default=family, help="transformer, hope, hope_attention, "
                   f"titans, titans_mag (default {family})")
    p.add_argument("--set", nargs="+", action="extend", metavar="SECTION.FIELD=VALUE",
                   help="overrides, e.g. train.steps=20 optim.lr=1e-3 data.seq_len=128 "
                   "(repeatable: every --set applies)")
    p.add_argument("--out", help="run directory (= train.out_dir)")
    p.add_argument("--steps", type=int, help="optimizer steps (= train.steps)")
    p.add_argument("--resume", default="auto", help="auto (latest checkpoint of the run "
                   "directory, default), never, or a checkpoint directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="validation perplexity and per-position loss of a run, "
                       "or a synthetic suite (--suite)")
    p.add_argument("run", nargs="?", help="run directory, checkpoint or model directory of a run")
    p.add_argument("--suite", choices=["formal", "mad", "mqar"],
                   help="run a synthetic suite for every family instead (see docs/evaluation.md)")
    p.add_argument("--family", action="append", help="with --suite: families (repeat or "
                   "comma-separate; default: the five families)")
    p.add_argument("--seeds", type=int, default=3, help="with --suite: seeds (default 3)")
    p.add_argument("--steps", type=int, help="with --suite: steps per cell (default: the "
                   "task's budget)")
    p.add_argument("--tasks", nargs="+", help="with --suite: only these tasks of the suite")
    p.add_argument("--threads", type=int, help="with --suite: torch threads (one process per "
                   "core, each with its own --family, share an --out and run in parallel)")
    p.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    p.add_argument("--seq-len", type=int, help="window length (default: the run's)")
    p.add_argument("--batch-size", type=int, help="windows per batch (default: the run's)")
    p.add_argument("--max-batches", type=int, default=0, help="0 = the whole split")
    p.add_argument("--out", help="JSON file (default: eval_<split>.json beside the weights); "
                   "with --suite the output directory (default runs/suite_<name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_eval)

    _add_task_parser(sub)

    p = sub.add_parser("generate", help="generate text from a prompt (streamed)")
    p.add_argument("run", help="run directory, checkpoint or model directory of a run")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("bench", help="run the benchmarks in benchmarks/")
    p.add_argument("names", nargs="*", help="benchmark names (default: all)")
    p.add_argument("--quick", action="store_true", help="pass --quick (smoke mode)")
    p.add_argument("--out", help="results directory (passed as --out)")
    p.add_argument("--list", action="store_true", help="list the benchmarks")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from nestlearn.train.lock import RunLockedError

    try:
        return args.func(args)
    except (ValueError, OSError, RunLockedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # the loss diverged: not a usage error, exit 1
        hint = ("; checkpoints written before it are intact (lower optim.lr or raise "
                "optim.warmup_steps, then use a new train.out_dir)"
                if args.command == "train" else "")
        print(f"error: FloatingPointError: {err}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
