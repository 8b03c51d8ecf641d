#!/usr/bin/env bash
# The main job: set up .venv if needed, then run `python -m experiments.main_job` from the
# repository root (see README).
source "$(dirname "$0")/_env.sh"
exec python -m experiments.main_job "$@"
