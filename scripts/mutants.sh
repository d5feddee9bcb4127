#!/usr/bin/env bash
# `make mutants`: cosmic-ray in its own small environment (outside the checkout, next to the
# shared frameworks environment, so that adding it never rebuilds that one), then
# scripts/mutants.py with it. Arguments go to scripts/mutants.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
COSMIC_RAY=cosmic-ray==8.7.0
TOOLS=${XDG_CACHE_HOME:-$HOME/.cache}/gfocal-parity/mutation-tools
die() { printf '[mutants] error: %s\n' "$*" >&2; exit 2; }

bash scripts/setup.sh >/dev/null 2>&1 || die "scripts/setup.sh failed (run bash scripts/setup.sh alone to see why)"
if ! "$TOOLS/bin/python" -c "import cosmic_ray" 2>/dev/null; then
    printf '[mutants] installing %s into %s\n' "$COSMIC_RAY" "$TOOLS"
    "$PY" -m venv "$TOOLS" || die "cannot create the environment $TOOLS with $PY"
    "$TOOLS/bin/python" -m pip install --quiet "$COSMIC_RAY" || die "pip could not install $COSMIC_RAY"
fi
exec "$TOOLS/bin/python" scripts/mutants.py "$@"
