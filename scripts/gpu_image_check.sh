#!/usr/bin/env bash
# The borrowed GPU machine's software on this CPU, for when no GPU machine is lent: what
# scripts/gpu_check.sh and the PyTorch side of the suites will meet there, tried here first.
# That machine has Python 3.12 with torch 2.11.0, torchvision 0.26.0, numpy 2.5, opencv,
# matplotlib, tqdm, pytest, pytest-benchmark and hypothesis, no Jittor and no package index.
#
# Builds (once; it needs PyPI then, and downloads about 3 GB: torch 2.11 is a CUDA build) a
# virtual environment of those versions from a Python 3.12, outside the checkout under
# ~/.cache/gfocal-parity/gpu-image-env-<hash of the pins>/ (reused by later runs and by every
# checkout), and makes the wheels the GPU machine lacks (scripts/gpu_wheels.sh into .whl/)
# when they are missing. Then, with no package index (PIP_NO_INDEX=1, no pip configuration:
# pip can install only the carried wheels), runs each step under its own time cap:
#   dry_run     bash scripts/gpu_check.sh OUT/gpu_check --dry-run --device cpu, its wheel
#               install included (PYTHON = the environment's interpreter)
#   parity      pytest parity_tests --device cpu: the PyTorch port against its own CPU run,
#               every case (the Jittor cases skip: not installed)
#   perf        pytest perf_tests --benchmark-disable: every case once, untimed
#   perf_timed  the PyTorch port's benchmark cases timed once each (GFOCAL_PERF_ROUNDS=1),
#               written as pytest-benchmark JSON as the GPU check writes its perf.json
# and writes OUT/summary.md (versions, the steps' status, tests and seconds) and each step's
# log beside it; it prints the summary at the end. Exit 0 when every step passed, 1 when one
# did not (or the environment could not be built), 2 on bad input (one line, before any work).
# 6 to 8 minutes on 2 shared cores once the environment exists: not part of `make test`.
#
#   bash scripts/gpu_image_check.sh [--out DIR] [--steps a,b] [--rebuild]
#   bash scripts/gpu_image_check.sh --env-path     print the environment's path, do nothing
#
# --out DIR: an empty or new folder (default reports/gpu-image-check/<UTC time>); --steps:
# only the steps named (the others are reported skipped); --rebuild: delete the environment
# and build it again. PYTHON312=... the base interpreter (default: python3.12 on PATH, then
# pyenv's 3.12); GFOCAL_GPU_IMAGE_ENV=... the environment's path; GFOCAL_WHEELS=... the
# wheels' folder (default .whl); GFOCAL_CAP_BUILD (default 3600), GFOCAL_CAP_DRY_RUN (900),
# GFOCAL_CAP_IMAGE_PARITY (1200), GFOCAL_CAP_IMAGE_PERF (1200), GFOCAL_CAP_IMAGE_PERF_TIMED
# (900): the caps in seconds; the build waits at most GFOCAL_CAP_BUILD for another one's lock.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
root=$(pwd -P)
source scripts/capped.sh  # capped: one step under a time cap
RECIPE=1  # bump when the way the environment is built changes
# What the GPU machine holds (docs of the device tool, 2026-11: Python 3.12.3, torch 2.11.0,
# torchvision 0.26.0, numpy 2.5.2; the others' versions there unread: the ones tested here).
PINS=(torch==2.11.0 torchvision==0.26.0 numpy==2.5.2 opencv-python-headless==5.1.0.95
      matplotlib==3.11.2 tqdm==4.70.1 pytest==9.2.0 pytest-benchmark==5.3.1
      hypothesis==6.170.17)
STEPS=(dry_run parity perf perf_timed)
CAP_BUILD=${GFOCAL_CAP_BUILD:-3600} CAP_DRY_RUN=${GFOCAL_CAP_DRY_RUN:-900}
CAP_PARITY=${GFOCAL_CAP_IMAGE_PARITY:-1200} CAP_PERF=${GFOCAL_CAP_IMAGE_PERF:-1200}
CAP_PERF_TIMED=${GFOCAL_CAP_IMAGE_PERF_TIMED:-900}
WHEELS=${GFOCAL_WHEELS:-.whl}

log() { printf '[gpu_image_check] %s\n' "$*"; }
die() { printf '[gpu_image_check] error: %s\n' "$*" >&2; exit 2; }  # bad input
fail() { printf '[gpu_image_check] error: %s\n' "$*" >&2; exit 1; }  # could not do the work

out="" only="" rebuild=0 env_path=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] && [ -n "$2" ] || die "--out needs a folder"; out=$2; shift ;;
        --steps) [ $# -ge 2 ] && [ -n "$2" ] || die "--steps needs a comma-separated list"
                 only=$2; shift ;;
        --rebuild) rebuild=1 ;;
        --env-path) env_path=1 ;;
        *) die "unknown argument '$1' (known: --out DIR, --steps a,b, --rebuild, --env-path)" ;;
    esac
    shift
done
for cap in "$CAP_BUILD" "$CAP_DRY_RUN" "$CAP_PARITY" "$CAP_PERF" "$CAP_PERF_TIMED"; do
    [[ "$cap" =~ ^[1-9][0-9]*$ ]] || die "a cap must be a whole number of seconds, got '$cap'"
done
if [ -n "$only" ]; then
    IFS=, read -ra chosen <<<"$only"
    for name in "${chosen[@]}"; do
        [[ " ${STEPS[*]} " == *" $name "* ]] || die "--steps: unknown step '$name' (known: $(IFS=,; echo "${STEPS[*]}"))"
    done
fi

# The output folder: new or empty, checked before any work.
[ -n "$out" ] || out=reports/gpu-image-check/$(date -u +%Y%m%d-%H%M%S)
if [ -e "$out" ]; then
    [ -d "$out" ] || die "--out $out is not a folder"
    [ -z "$(ls -A "$out" 2>/dev/null)" ] || die "$out is not empty: give a new or empty folder"
fi

# The base interpreter: a CPython 3.12 that can make virtual environments.
is_312() { timeout 30 "$1" -c 'import sys, venv, ensurepip
sys.exit(sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; }
base=""
if [ -n "${PYTHON312:-}" ]; then
    is_312 "$PYTHON312" || die "PYTHON312='$PYTHON312' is not a CPython 3.12 with venv"
    base=$PYTHON312
else
    candidates=(python3.12)
    if command -v pyenv >/dev/null; then
        pyenv_root=$(timeout 30 pyenv root 2>/dev/null) && candidates+=("$pyenv_root"/versions/3.12*/bin/python3.12)
    fi
    candidates+=("$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12)
    for c in "${candidates[@]}"; do
        if is_312 "$c"; then base=$c; break; fi
    done
    [ -n "$base" ] || die "no CPython 3.12 found (python3.12, pyenv's 3.12): set PYTHON312=/path/to/python3.12"
fi
base_id=$(timeout 30 "$base" -c 'import os, sys; print(os.path.realpath(sys.executable), sys.version.split()[0])') \
    || die "cannot run $base"
key=$(printf '%s\n' "${PINS[@]}" "$base_id" "recipe $RECIPE" | sha256sum | cut -c1-12)
ENV=${GFOCAL_GPU_IMAGE_ENV:-${XDG_CACHE_HOME:-$HOME/.cache}/gfocal-parity/gpu-image-env-$key}
if [ "$env_path" = 1 ]; then
    echo "$ENV"
    exit 0
fi

# 1. The environment (PyPI needed here only). A lock with a bounded wait: two checkouts
#    building at once take turns; a stamp written last marks a complete build.
stamp=$ENV/.gfocal-gpu-image building=$ENV/.gfocal-gpu-image-building
ours() { [ ! -e "$ENV" ] || [ -e "$stamp" ] || [ -e "$building" ] || [ -z "$(ls -A "$ENV" 2>/dev/null)" ]; }
ours || die "$ENV exists and is not this script's environment: name another (GFOCAL_GPU_IMAGE_ENV)"
mkdir -p "$(dirname "$ENV")" || fail "cannot create $(dirname "$ENV")"
exec 9>"$ENV.lock"
flock -w "$CAP_BUILD" 9 || fail "another build of $ENV held its lock for ${CAP_BUILD} s"
if [ "$rebuild" = 1 ] || [ ! -x "$ENV/bin/python" ] ||
        [ "$(cat "$stamp" 2>/dev/null)" != "$(printf '%s\n' "${PINS[@]}")" ]; then
    ours || die "$ENV exists and is not this script's environment: name another (GFOCAL_GPU_IMAGE_ENV)"
    [ ! -e "$ENV" ] || rm -rf "$ENV"  # ours: built with other pins, or half built
    log "building the GPU machine's software into $ENV from $base (${PINS[*]}; once: ~3 GB from PyPI)"
    timeout 120 "$base" -m venv "$ENV" || fail "$base could not create a virtual environment at $ENV"
    : > "$building"
    if ! timeout --kill-after=30 "$CAP_BUILD" nice "$ENV/bin/python" -m pip install --quiet \
            --disable-pip-version-check --no-cache-dir "${PINS[@]}" > "$ENV/build.log" 2>&1; then
        grep -v "is ignored: it is neither" "$ENV/build.log" | tail -n 5 >&2
        fail "pip could not install the pins into $ENV (PyPI unreachable? log: $ENV/build.log)"
    fi
    printf '%s\n' "${PINS[@]}" > "$stamp"
    rm -f "$building"
else
    log "reusing $ENV"
fi
flock -u 9
PY=$ENV/bin/python

# 2. The wheels the GPU machine lacks (scripts/gpu_wheels.sh's pins), made when missing.
#    Only those: Jittor's numpy 1.26 (--with-jittor) must not shadow numpy 2 here.
carried_wheels() {  # fills carried=(wheel files) and missing=(pins without one)
    local pin name version found
    carried=() missing=()
    for pin in $(bash scripts/gpu_wheels.sh --list); do
        name=${pin%%==*} version=${pin#*==}
        found=("$WHEELS"/"${name//-/_}"-"$version"-*.whl)
        if [ -e "${found[0]}" ]; then carried+=("${found[0]}"); else missing+=("$pin"); fi
    done
}
carried_wheels
if [ "${#missing[@]}" -gt 0 ]; then
    log "making the wheels (${missing[*]} missing in $WHEELS): scripts/gpu_wheels.sh"
    GFOCAL_WHEELS=$WHEELS timeout --kill-after=10 300 bash scripts/gpu_wheels.sh \
        || fail "scripts/gpu_wheels.sh could not make the wheels (PyPI unreachable?)"
    carried_wheels
    [ "${#missing[@]}" -eq 0 ] || fail "scripts/gpu_wheels.sh made no wheel for ${missing[*]}"
fi

# 3. The steps, as on the GPU machine: no package index, no pip configuration of this machine.
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT PYTHONPATH
export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
mkdir -p "$out" || die "cannot create $out"
out=$(cd "$out" && pwd -P)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
site=$work/site
timeout 300 "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
    --target "$site" "${carried[@]}" > "$out/wheels.log" 2>&1 \
    || fail "pip could not install the wheels of $WHEELS without an index (see $out/wheels.log)"
{
    echo "base interpreter: $base_id"
    "$PY" -m pip list --format=freeze 2>/dev/null | grep -v -i '^nvidia-'
    echo "carried (from $WHEELS, installed with --no-index):"
    printf '%s\n' "${carried[@]##*/}"
} > "$out/versions.txt"

counts() {  # counts NAME: pytest's count line of the step's log ("12 passed, 3 skipped"), or -
    local text
    if [ "$1" = dry_run ]; then  # gpu_check.sh's steps, with the counts of its pytest steps
        text=$(awk '
            /^\[gpu_check\] === [a-z_]+ \(cap / { step = $3 }
            /^=+ [0-9]+ (passed|failed|error)/ { n = $0; gsub(/^=+ | in [0-9.]+s.*$/, "", n); count[step] = n }
            /^\[gpu_check\] === [a-z_]+: / {
                name = $3; sub(/:$/, "", name); st = $0
                sub(/^\[gpu_check\] === [a-z_]+: /, "", st); sub(/ after .*$/, "", st)
                text = text sep name ": " (name in count ? count[name] : st); sep = "; " }
            END { print text }' "$out/gpu_check/check.log" 2>/dev/null)
    else
        text=$(grep -E '^=* ?[0-9]+ (passed|failed|error)' "$out/$1.log" | tail -n 1 |
               sed -E 's/^=+ //; s/ =+$//; s/ in [0-9.]+s.*//')
    fi
    echo "${text:--}"
}
declare -A status seconds tests
step() {  # step NAME CAP COMMAND...: run under its cap, output to OUT/NAME.log
    local name=$1 cap=$2
    shift 2
    if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then
        status[$name]="skipped (not in --steps)" seconds[$name]=0 tests[$name]=-
        return
    fi
    log "=== $name (cap ${cap} s)"
    capped "$name" "$cap" 30 nice "$@" > "$out/$name.log" 2>&1
    tests[$name]=$(counts "$name")
    log "=== $name: ${status[$name]} after ${seconds[$name]} s (${tests[$name]})"
}
pytest=("$PY" -m pytest -p no:cacheprovider)
in_image=(env PYTHONPATH="$site:$root" nvcc_path=)
step dry_run "$CAP_DRY_RUN" env PYTHON="$PY" GFOCAL_WHEELS="$WHEELS" \
    bash scripts/gpu_check.sh "$out/gpu_check" --dry-run --device cpu
step parity "$CAP_PARITY" "${in_image[@]}" "${pytest[@]}" parity_tests --device cpu
step perf "$CAP_PERF" "${in_image[@]}" "${pytest[@]}" perf_tests --benchmark-disable
step perf_timed "$CAP_PERF_TIMED" "${in_image[@]}" GFOCAL_PERF_ROUNDS=1 "${pytest[@]}" \
    perf_tests/test_benchmarks.py -k "torch and not paired" --device cpu --benchmark-enable \
    --benchmark-json "$out/perf.json"

rc=0
{
    echo "# GPU image check (the GPU machine's software on a CPU, no package index)"
    echo
    echo "| step | status | tests | seconds |"
    echo "|---|---|---|---|"
    for name in "${STEPS[@]}"; do
        echo "| $name | ${status[$name]} | ${tests[$name]} | ${seconds[$name]} |"
        case "${status[$name]}" in passed|skipped*) ;; *) rc=1 ;; esac
    done
    echo
    echo "## Versions"
    echo
    echo '```'
    cat "$out/versions.txt"
    echo '```'
} > "$out/summary.md"
cat "$out/summary.md"
for name in "${STEPS[@]}"; do
    [ ! -f "$out/$name.log" ] || echo "log: $out/$name.log"
done
echo "summary: $out/summary.md"
exit $rc
