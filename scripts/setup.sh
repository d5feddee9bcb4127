#!/usr/bin/env bash
# One-command set-up: a virtual environment with both frameworks, oneDNN for Jittor's CPU
# convolutions from Debian's libdnnl-dev, and Jittor's core compiled once.
# Idempotent: a second run only checks stamps (a few seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GFOCAL_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.gfocal-installed"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

log() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing the project and its dependencies into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | { grep -v "is ignored: it is neither" || true; }
    echo "$want" > "$stamp"
else
    log "dependencies already installed"
fi

# oneDNN: Jittor downloads it at first import, which fails offline. Debian's libdnnl-dev
# laid out where Jittor looks makes it skip the download (SPEC.md section 10).
dnnl_lib=/usr/lib/x86_64-linux-gnu/libdnnl.so
[ -e "$dnnl_lib" ] || dnnl_lib=$(ls /usr/lib/*/libdnnl.so 2>/dev/null | head -n1 || true)
if [ -z "$dnnl_lib" ] || [ ! -e "$dnnl_lib" ] || [ ! -e /usr/include/dnnl.h ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing libdnnl-dev (oneDNN) from Debian"
        (apt-get install -y -qq libdnnl-dev >/dev/null 2>&1 ||
         { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libdnnl-dev >/dev/null 2>&1; }) ||
            log "WARNING: could not install libdnnl-dev; Jittor will use its slow CPU convolutions"
        dnnl_lib=$(ls /usr/lib/*/libdnnl.so 2>/dev/null | head -n1 || true)
    else
        log "WARNING: libdnnl-dev is not installed and this user cannot apt-get it;"
        log "         Jittor will use its slow CPU convolutions (the test report says so)"
    fi
fi
if [ -n "$dnnl_lib" ] && [ -e "$dnnl_lib" ]; then
    mkl_home="$HOME/.cache/jittor/mkl/dnnl_lnx_2.2.0_cpu_gomp"
    mkdir -p "$mkl_home/include" "$mkl_home/lib"
    for f in /usr/include/dnnl*.h /usr/include/dnnl*.hpp; do ln -sf "$f" "$mkl_home/include/"; done
    ln -sfn /usr/include/oneapi "$mkl_home/include/oneapi"
    ln -sf "$dnnl_lib" "$mkl_home/lib/libmkldnn.so"
fi

# Compile Jittor's core now (about 2 minutes the first time, cached in ~/.cache/jittor)
# so that the first test does not pay for it.
log "checking that both frameworks import"
"$VENV/bin/python" - <<'PY'
from gfocal.runtime import configure_frameworks, describe_environment
configure_frameworks()
import torch, jittor  # noqa: F401
env = describe_environment()
print("[setup] torch", env["torch"], "| jittor", env["jittor"], "| numpy", env["numpy"],
      "| jittor oneDNN:", env["jittor_onednn"])
PY
log "done"
