#!/usr/bin/env bash
# Run ON the borrowed GPU machine (no network; wheels from scripts/gpu_wheels.sh in .whl/):
# one shot, well inside its 10 minutes. Installs the wheels into a temporary folder (no
# index), then runs, each step under its own time cap so that one slow step cannot eat the
# others:
#   1. perf   the PyTorch port's GPU benchmark cases, TF32 off and on (pytest-benchmark JSON)
#   2. parity the parity suite with the PyTorch port on the GPU against its CPU run
#             (and Jittor, where it is installed and its CUDA build works)
#   3. train  a short training of the mini preset on the GPU, then its evaluation
# and writes into OUT_DIR: perf.json, perf.html, parity.html, parity_verdict.json,
# train/ (checkpoint, log, results), check.log (everything printed) and summary.md, whose
# tables it prints at the end. A failed step is reported in the summary; the others still run.
#
#   bash scripts/gpu_check.sh OUT_DIR [--device cuda|cuda:N|cpu] [--dry-run]
#
# --dry-run: every step on a tiny case (benchmarks untimed, one parity case, two training
# iterations); with --device cpu this is what the default test suite runs on a CPU.
# PYTHON=... the interpreter (default python3, the one holding PyTorch there).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${GFOCAL_WHEELS:-.whl}
CAP_PERF=${GFOCAL_CAP_PERF:-210} CAP_PARITY=${GFOCAL_CAP_PARITY:-150} CAP_TRAIN=${GFOCAL_CAP_TRAIN:-150}
TRAIN_ITERS=200

die() { printf '[gpu_check] error: %s\n' "$*" >&2; exit 2; }

out="" device=cuda dry=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) [ $# -ge 2 ] || die "--device needs a value"; device=$2; shift ;;
        --dry-run) dry=1 ;;
        -*) die "unknown option '$1' (known: --device, --dry-run)" ;;
        *) [ -z "$out" ] || die "one OUT_DIR only (got '$out' and '$1')"; out=$1 ;;
    esac
    shift
done
[ -n "$out" ] || die "usage: bash scripts/gpu_check.sh OUT_DIR [--device cuda|cuda:N|cpu] [--dry-run]"
command -v "$PY" >/dev/null || die "no Python interpreter '$PY' (set PYTHON=...)"
reason=$(PYTHONPATH="$(pwd -P)" "$PY" -c '
import sys
from gfocal.device import DeviceError, resolve_device
try:
    resolve_device(sys.argv[1])
except DeviceError as exc:
    print(exc)' "$device") || die "cannot run $PY on this checkout"
[ -z "$reason" ] || die "$reason"
mkdir -p "$out" || die "cannot create $out"
out=$(cd "$out" && pwd -P)
[ -e "$out/summary.md" ] && die "$out already holds a check (summary.md): give an empty folder"
exec > >(tee -a "$out/check.log") 2>&1

# Wheels into a temporary folder that Python sees first; the project itself from here.
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
pip_install=("$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir
             --target "$site")
if [ "${#wheels[@]}" -gt 0 ] && [ "$dry" = 1 ]; then
    # Here they would not import (built for the GPU machine's Python 3.12): only check that
    # pip accepts every one for that target.
    echo "[gpu_check] dry run: checking ${#wheels[@]} wheels from $WHEELS for Python 3.12 x86-64"
    "${pip_install[@]}" --dry-run --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 "${wheels[@]}" \
        || die "pip would not install the wheels of $WHEELS on Python 3.12 x86-64"
elif [ "${#wheels[@]}" -gt 0 ]; then
    echo "[gpu_check] installing ${#wheels[@]} wheels from $WHEELS"
    "${pip_install[@]}" "${wheels[@]}" || die "pip could not install the wheels of $WHEELS"
else
    echo "[gpu_check] no wheels in $WHEELS: using what $PY already has"
fi
export PYTHONPATH="$site:$(pwd -P)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import pycocotools, pytest_html" 2>/dev/null \
    || die "pycocotools or pytest-html is missing: run scripts/gpu_wheels.sh where PyPI is reachable and carry $WHEELS"

declare -A status seconds
step() {  # step NAME CAP COMMAND...: run under its cap; record exit status and wall time
    local name=$1 cap=$2 start rc
    shift 2
    echo "[gpu_check] === $name (cap ${cap} s): $*"
    start=$(date +%s)
    timeout --signal=INT --kill-after=20 "$cap" "$@"
    rc=$?
    seconds[$name]=$(( $(date +%s) - start ))
    case $rc in
        0) status[$name]=passed ;;
        124|137) status[$name]="stopped at its ${cap} s cap" ;;
        *) status[$name]="failed (exit $rc)" ;;
    esac
    echo "[gpu_check] === $name: ${status[$name]} after ${seconds[$name]} s"
}

pytest=("$PY" -m pytest -p no:cacheprovider --device "$device")
if [ "$dry" = 1 ]; then
    perf_select=(-k "torch and inference and not paired" --benchmark-disable)
    parity_select=(-k "coco_b1 and not r50 and not bottleneck")
    iters=2 config=tests/gpu_check_tiny_config.py
else
    perf_select=(-k "torch and not paired" --benchmark-enable)
    parity_select=()
    iters=$TRAIN_ITERS config=configs/gfl_r18_mini.py
fi

step perf "$CAP_PERF" "${pytest[@]}" perf_tests/test_benchmarks.py "${perf_select[@]}" \
    --benchmark-json "$out/perf.json" --html "$out/perf.html" --self-contained-html
GFOCAL_PARITY_VERDICT="$out/parity_verdict.json" \
    step parity "$CAP_PARITY" "${pytest[@]}" parity_tests "${parity_select[@]}" \
    --html "$out/parity.html" --self-contained-html
# train, then test its checkpoint (the 12 COCO statistics also go to train/test.txt)
step train "$CAP_TRAIN" bash -c 'set -o pipefail
    "$1" -m gfocal train "$2" --framework torch --device "$3" --work-dir "$4" --max-iters "$5" &&
    "$1" -m gfocal test "$2" "$4/latest.pth" --framework torch --device "$3" \
        --out "$4/results.json" | tee "$4/test.txt"' _ "$PY" "$config" "$device" "$out/train" "$iters"

"$PY" scripts/gpu_summary.py "$out" --device "$device" \
    --step "perf=${status[perf]}=${seconds[perf]}" \
    --step "parity=${status[parity]}=${seconds[parity]}" \
    --step "train=${status[train]}=${seconds[train]}"
rc=$?
for name in perf parity train; do
    [ "${status[$name]}" = passed ] || rc=1
done
exit $rc
