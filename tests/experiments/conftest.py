"""The training tests' fixtures (test corpus, token cache, debug overrides) for the experiments."""

from tests.train.conftest import cache_dir, corpus, debug_overrides  # noqa: F401
