#!/usr/bin/env bash
# The test suite: set up .venv if needed, then run pytest (slow tests excluded; `-m slow` runs them).
source "$(dirname "$0")/_env.sh"
exec python -m pytest "$@"
