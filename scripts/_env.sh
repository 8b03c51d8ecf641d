# Sourced by scripts/main.sh and scripts/test.sh: create (once) the project's virtual environment
# in .venv and install nestlearn into it. torch is pinned to 2.13.0 here only (the library itself
# asks for torch>=2.4): on these machines that pin takes the local CPU build instead of a CUDA one.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NESTLEARN_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating $venv" >&2
    "$py" -m venv "$venv"
fi
stamp="$venv/.nestlearn-installed"
want="$(cat "$root/pyproject.toml" "$root/scripts/_env.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing torch==2.13.0 and nestlearn[test] into $venv (about a minute)" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 \
        | grep -v "is ignored: it is neither" >&2 || true
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[test]" 2>&1 \
        | grep -v "is ignored: it is neither" >&2 || true
    "$venv/bin/python" -c "import nestlearn, torch" || { echo "[setup] install failed" >&2; exit 1; }
    echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
