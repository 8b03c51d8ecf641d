#!/usr/bin/env bash
# The main job: set up .venv if needed, then run `nestlearn main` (see README).
source "$(dirname "$0")/_env.sh"
exec nestlearn main "$@"
