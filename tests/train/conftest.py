"""Shared fixtures of the training tests: a few KB of text, its token cache, a trained debug run."""

import random
from pathlib import Path

import pytest

from nestlearn.train import apply_overrides, get_recipe, train

WORDS = ["the", "memory", "of", "a", "model", "learns", "while", "it", "reads", "and", "every",
         "level", "has", "its", "own", "clock", "slow", "weights", "remember", "what", "fast",
         "weights", "forget", "a", "stream", "of", "tokens", "flows", "through", "layers", "of",
         "attention", "and", "recurrence"]


def _document(rng: random.Random, n_sentences: int) -> str:
    lines = []
    for _ in range(n_sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
        lines.append(" ".join(words).capitalize() + rng.choice(".!?"))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """Eight ~1.5 KB documents (12 KB) of deterministic pseudo-English."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(8):
        (root / f"doc{i}.txt").write_text(_document(rng, 30))
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data_cache")


@pytest.fixture(scope="session")
def debug_overrides(corpus, cache_dir) -> list[str]:
    """Overrides pointing debug_cpu at the test corpus."""
    return [f"data.sources={corpus}", f"data.cache_dir={cache_dir}"]


def debug_config(overrides: list[str], out_dir: Path, *extra: str, family: str = "hope"):
    return apply_overrides(get_recipe("debug_cpu", family=family),
                           [*overrides, f"train.out_dir={out_dir}", *extra])


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, debug_overrides) -> Path:
    """A finished 6-step debug_cpu run (model/, checkpoints/, metrics.jsonl)."""
    out = tmp_path_factory.mktemp("runs") / "debug"
    train(debug_config(debug_overrides, out, "train.steps=6", "train.checkpoint_every=3"),
          progress=False)
    return out
