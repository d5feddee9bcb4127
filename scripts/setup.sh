#!/usr/bin/env bash
# One-command set-up, in two parts:
#  1. the frameworks (torch, torchvision, jittor, numpy < 2, test tools) in one environment
#     kept OUTSIDE the checkout, under ~/.cache/gfocal-parity/env-<hash of the dependency set>,
#     so that every checkout on this machine reuses it and, with it, Jittor's compiled kernels
#     (Jittor keys each kernel on the absolute paths of the interpreter and of its own sources);
#  2. `.venv/bin/` in this checkout: launchers (python, pytest, gfocal, gfocal-convert,
#     gfocal-subset, activate) that run that environment's interpreter on THIS checkout's code
#     (PYTHONPATH), so two checkouts share the frameworks but never each other's code.
# Plus oneDNN for Jittor's CPU convolutions from Debian's libdnnl-dev, and Jittor's core
# compiled once. Idempotent: a second run only checks stamps (seconds).
#
#   bash scripts/setup.sh            set up (what `make test` / `make compare` run first)
#   bash scripts/setup.sh --env-path print the shared environment's path, set up nothing
#   bash scripts/setup.sh --remove   delete the shared environment and this checkout's .venv/
#
# GFOCAL_VENV=/path chooses the environment's path; PYTHON=python3.x its base interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$(pwd -P)
PY=${PYTHON:-python3}
LAUNCHERS=.venv
RECIPE=2  # bump when the way the environment is built changes

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

command -v "$PY" >/dev/null || die "no Python interpreter '$PY' (set PYTHON=...)"

# The dependency set, one requirement a line: pyproject's dependencies and test extras.
requirements=$("$PY" - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["test"]))
PY
) || die "cannot read the dependency lists of pyproject.toml (needs Python >= 3.11)"
base_python=$("$PY" -c 'import os, sys; print(os.path.realpath(sys.executable), sys.version)')
key=$(printf '%s\n%s\nrecipe %s\n' "$requirements" "$base_python" "$RECIPE" | sha256sum | cut -c1-12)
cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/gfocal-parity
ENV=${GFOCAL_VENV:-$cache_root/env-$key}

case "${1:-}" in
    --env-path) echo "$ENV"; exit 0 ;;
    --remove)
        removed=0
        for path in "$ENV" "$ENV.lock" "$checkout/$LAUNCHERS"; do
            if [ -e "$path" ]; then rm -rf "$path"; log "removed $path"; removed=1; fi
        done
        [ "$removed" = 1 ] || log "nothing to remove (no $ENV, no $LAUNCHERS)"
        log "Jittor's compiled kernels stay in ~/.cache/jittor (delete that folder to drop them)"
        exit 0 ;;
    "") ;;
    *) die "unknown option '$1' (use --env-path or --remove)" ;;
esac

# 1. The shared environment. A lock, so that two checkouts setting up at once take turns.
mkdir -p "$(dirname "$ENV")"
exec 9>"$ENV.lock"
flock 9
stamp="$ENV/.gfocal-requirements"
if [ ! -x "$ENV/bin/python" ]; then
    log "creating the shared environment $ENV"
    "$PY" -m venv "$ENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$requirements" ]; then
    log "installing the frameworks into $ENV (once per machine and dependency set)"
    mapfile -t reqs <<<"$requirements"
    "$ENV/bin/python" -m pip install -q --disable-pip-version-check "${reqs[@]}" 2>&1 |
        { grep -v "is ignored: it is neither" || true; }
    printf '%s\n' "$requirements" > "$stamp"
else
    log "frameworks already installed in $ENV"
fi
flock -u 9

# 2. This checkout's launchers. An older set-up kept a real virtual environment in .venv/
#    (it holds our stamp): replace it, since nothing runs from it any more.
if [ -f "$LAUNCHERS/pyvenv.cfg" ] && [ -f "$LAUNCHERS/.gfocal-installed" ]; then
    log "replacing the old in-checkout virtual environment $LAUNCHERS/ by launchers"
    rm -rf "$LAUNCHERS"
fi
mkdir -p "$LAUNCHERS/bin"
launcher() {  # launcher NAME PYTHON-ARGS...: NAME runs the shared interpreter on this checkout
    local name=$1
    shift
    {
        printf '#!/bin/sh\n# Written by scripts/setup.sh: the shared environment, this checkout'"'"'s code.\n'
        printf 'PYTHONPATH=%q${PYTHONPATH:+:$PYTHONPATH}\nexport PYTHONPATH\n' "$checkout"
        printf '[ -x %q ] || { echo %q >&2; exit 1; }\n' "$ENV/bin/python" \
            "$name: the frameworks environment $ENV is missing: run bash $checkout/scripts/setup.sh"
        printf 'exec %q' "$ENV/bin/python"
        [ $# = 0 ] || printf ' %q' "$@"
        printf ' "$@"\n'
    } > "$LAUNCHERS/bin/$name.tmp"
    chmod +x "$LAUNCHERS/bin/$name.tmp"
    mv "$LAUNCHERS/bin/$name.tmp" "$LAUNCHERS/bin/$name"
}
launcher python
launcher pytest -m pytest
launcher torchrun -m torch.distributed.run
# The console scripts of pyproject.toml, each as `python -c 'from MODULE import FUNC ...'`.
"$PY" - <<'PY' | while read -r name module func; do
import tomllib
with open("pyproject.toml", "rb") as f:
    for name, target in tomllib.load(f)["project"]["scripts"].items():
        module, func = target.split(":")
        print(name, module, func)
PY
    launcher "$name" -c "import sys; from $module import $func; sys.argv[0] = '$name'; sys.exit($func())"
done
cat > "$LAUNCHERS/bin/activate" <<EOF
# Written by scripts/setup.sh. \`source .venv/bin/activate\`: this checkout's launchers first
# on PATH (python, pytest, gfocal, ...); \`deactivate\` undoes it.
_gfocal_old_path=\$PATH
PATH=$(printf %q "$checkout/$LAUNCHERS/bin"):\$PATH
VIRTUAL_ENV=$(printf %q "$ENV")
export PATH VIRTUAL_ENV
deactivate() { PATH=\$_gfocal_old_path; unset VIRTUAL_ENV _gfocal_old_path; unset -f deactivate; hash -r; }
hash -r
EOF
echo "$ENV" > "$LAUNCHERS/env-path"

# oneDNN: Jittor downloads it at first import, which fails offline. Debian's libdnnl-dev
# laid out where Jittor looks makes it skip the download (docs/MODEL.md section 10).
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

# OpenMPI for the Jittor port's data-parallel training (mpirun; Jittor builds its MPI module
# with mpicc on first use under mpirun). OpenMPI refuses to run as root unless told, as
# containers usually run: .venv/bin/mpirun tells it.
if ! command -v mpirun >/dev/null || ! command -v mpicc >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing OpenMPI (openmpi-bin, libopenmpi-dev) from Debian"
        (apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null 2>&1 ||
         { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null 2>&1; }) ||
            log "WARNING: could not install OpenMPI; --launcher mpi (Jittor data-parallel) will not work"
    else
        log "WARNING: OpenMPI is not installed and this user cannot apt-get it;"
        log "         --launcher mpi (Jittor data-parallel training) will not work"
    fi
fi
# (the system's mpirun, not this launcher when .venv/bin is on PATH)
if mpirun_path=$(PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$checkout/$LAUNCHERS/bin" |
                        paste -sd: -) command -v mpirun); then
    {
        printf '#!/bin/sh
# Written by scripts/setup.sh: OpenMPI'"'"'s mpirun, allowed to run as root (containers).
'
        printf '[ "$(id -u)" = 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
'
        printf 'exec %q "$@"
' "$mpirun_path"
    } > "$LAUNCHERS/bin/mpirun.tmp"
    chmod +x "$LAUNCHERS/bin/mpirun.tmp"
    mv "$LAUNCHERS/bin/mpirun.tmp" "$LAUNCHERS/bin/mpirun"
fi

# Compile Jittor's core now (about 2 minutes the first time, cached in ~/.cache/jittor)
# so that the first test does not pay for it.
log "checking that both frameworks import"
"$LAUNCHERS/bin/python" - <<'PY'
from gfocal.runtime import configure_frameworks, describe_environment
configure_frameworks()
import torch, jittor  # noqa: F401
env = describe_environment()
print("[setup] torch", env["torch"], "| jittor", env["jittor"], "| numpy", env["numpy"],
      "| jittor oneDNN:", env["jittor_onednn"])
PY
log "done: run the tests with $LAUNCHERS/bin/pytest, or \`source $LAUNCHERS/bin/activate\`"
