#!/usr/bin/env bash
# The test suite: set up .venv if needed, lint with ruff, then run pytest (slow tests excluded;
# `bash scripts/test.sh -m slow` runs them).
source "$(dirname "$0")/_env.sh"
ruff check src tests benchmarks experiments
exec python -m pytest "$@"
