"""Prepare (tokenize and cache) a corpus and print its stats.

Usage: ``python -m nestlearn.data [SOURCE ...]``.

SOURCE is a name (shakespeare, wikipedia, brown, bible, austen) or a path; the default is the
shakespeare + wikipedia pair. Prints one JSON object: cache directory, tokenizer and, per split,
documents / chars / tokens. Useful to warm the cache before training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from .cache import prepare_data
from .corpus import DEFAULT_FRACTIONS
from .sources import DEFAULT_SOURCES, SOURCES
from .tokenizer import DEFAULT_VOCAB_SIZE


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nestlearn.data", description=__doc__)
    parser.add_argument(
        "sources",
        nargs="*",
        default=list(DEFAULT_SOURCES),
        help=f"source names ({', '.join(SOURCES)}) or paths; default: {' '.join(DEFAULT_SOURCES)}",
    )
    parser.add_argument(
        "--tokenizer", default="bpe", help="'bpe' (default), 'byte' or a tokenizer.json path"
    )
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    parser.add_argument(
        "--fractions", type=float, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST")
    )
    parser.add_argument(
        "--cache-dir", default=None, help="default: $NESTLEARN_DATA_CACHE or ./data_cache"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        data = prepare_data(
            args.sources,
            tokenizer=args.tokenizer,
            vocab_size=args.vocab_size,
            fractions=args.fractions or DEFAULT_FRACTIONS,
            cache_dir=args.cache_dir,
            progress=sys.stderr.isatty(),
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = {
        "directory": str(data.directory),
        "tokenizer": repr(data.tokenizer),
        "seconds": round(time.perf_counter() - start, 2),
        "splits": data.meta["splits"],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
