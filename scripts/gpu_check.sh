#!/usr/bin/env bash
# Run ON the borrowed GPU machine (no network; wheels from scripts/gpu_wheels.sh in .whl/):
# one shot, well inside its 10 minutes. Installs the wheels into a temporary folder (no
# index), then runs, each step under its own time cap so that one slow step cannot eat the
# others:
#   1. perf   the PyTorch port's GPU benchmark cases, TF32 off and on, and again in bf16 and
#             fp16, the parity policy and native AMP (--amp; pytest-benchmark JSON)
#   2. tuned  the training step and inference cases again in the tuned speed setting
#             (--tuning tuned: torch.compile, cuDNN autotuning; fp32 and bf16), compilation
#             timed apart (extra_info first_call_s)
#   3. parity the parity suite with the PyTorch port on the GPU against its CPU run
#   4. train  a short training of the mini preset on the GPU, then its evaluation
# and writes into OUT_DIR: perf.json, perf_tuned.json, perf.html, parity.html, parity_verdict.json,
# train/ (checkpoint, log, results), check.log (everything printed) and summary.md, whose
# tables it prints at the end. A failed step is reported in the summary; the others still run.
#
# --jittor: the Jittor check instead, a second run (its CUDA build alone takes minutes; run
# the PyTorch check first: it needs no build). Needs Jittor's source package and numpy 1.26
# (gpu_wheels.sh --with-jittor), installed into a second folder that only these steps see
# (numpy 1.26 must not shadow numpy 2 for the PyTorch steps above), then:
#   1. jittor_setup  scripts/jittor_cuda.py: CUDA home links, the patch, Jittor's environment
#   2. jittor_build  Jittor's core and its cuBLAS/cuDNN/... ops with nvcc, one cuDNN
#                    convolution on the GPU against the CPU
#   3. perf          the Jittor port's GPU cases and the paired cases on the GPU (both fp32,
#                    and in native fp16, which Jittor relays to cuDNN)
#   4. parity        the parity suite's Jittor cases, Jittor on the GPU
# all in full fp32: NVIDIA_TF32_OVERRIDE=0 (Jittor has no TF32 switch and cuDNN's default
# math permits TF32 on this GPU).
#
#   bash scripts/gpu_check.sh OUT_DIR [--device cuda|cuda:N|cpu] [--dry-run] [--jittor]
#
# --dry-run: every step on a tiny case (benchmarks untimed, one parity case, two training
# iterations); with --device cpu this is what the default test suite runs on a CPU. With
# --jittor it patches copies of Jittor's files and does not build (no GPU driver here): the
# Jittor steps run Jittor as it is, on the CPU. The PyTorch check's wheels are installed as
# on the GPU machine where PYTHON is a CPython 3.12 on x86-64 Linux (the copy of that
# machine's software of scripts/gpu_image_check.sh), and only checked for it elsewhere.
# PYTHON=... the interpreter (default python3, the one holding PyTorch there); GFOCAL_NVCC=...
# the nvcc for Jittor (default: scripts/jittor_cuda.py's search); GFOCAL_JITTOR_CUDNN=off: Jittor
# without cuDNN (its own convolution kernels; if cuDNN 9 fails there); GFOCAL_CHECK_STEPS=a,b runs
# only the steps named (the others are reported skipped; the caps of the PyTorch check add up to
# 11 minutes, one more than a device command may run: where every step may need its cap, run
# GFOCAL_CHECK_STEPS=perf,parity,train and GFOCAL_CHECK_STEPS=tuned in two commands, into two
# folders); GFOCAL_CAP_PERF, _TUNED, _PARITY, _TRAIN,
# _JT_SETUP, _JT_BUILD, _JT_PERF, _JT_PARITY: the caps in seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/capped.sh  # capped: one step under a time cap
PY=${PYTHON:-python3}
WHEELS=${GFOCAL_WHEELS:-.whl}
CAP_PERF=${GFOCAL_CAP_PERF:-240} CAP_TUNED=${GFOCAL_CAP_TUNED:-180} CAP_PARITY=${GFOCAL_CAP_PARITY:-150} CAP_TRAIN=${GFOCAL_CAP_TRAIN:-120}
CAP_JT_SETUP=${GFOCAL_CAP_JT_SETUP:-60} CAP_JT_BUILD=${GFOCAL_CAP_JT_BUILD:-150}
CAP_JT_PERF=${GFOCAL_CAP_JT_PERF:-180} CAP_JT_PARITY=${GFOCAL_CAP_JT_PARITY:-120}
TRAIN_ITERS=200

die() { printf '[gpu_check] error: %s\n' "$*" >&2; exit 2; }

out="" device=cuda dry=0 jittor=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) [ $# -ge 2 ] || die "--device needs a value"; device=$2; shift ;;
        --dry-run) dry=1 ;;
        --jittor) jittor=1 ;;
        -*) die "unknown option '$1' (known: --device, --dry-run, --jittor)" ;;
        *) [ -z "$out" ] || die "one OUT_DIR only (got '$out' and '$1')"; out=$1 ;;
    esac
    shift
done
[ -n "$out" ] || die "usage: bash scripts/gpu_check.sh OUT_DIR [--device cuda|cuda:N|cpu] [--dry-run] [--jittor]"
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
# Jittor's (its source package, numpy 1.26) into a second one, seen by the Jittor steps only.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
site=$work/site jtsite=$work/jittor-site
shopt -s nullglob
wheels=() jt_wheels=()
for w in "$WHEELS"/*.whl; do
    case "${w##*/}" in
        numpy-*) jt_wheels+=("$w") ;;
        *) wheels+=("$w") ;;
    esac
done
jt_source=("$WHEELS"/jittor-*.tar.gz)
pip_install=("$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir)
check_wheels() {  # check_wheels WHEEL...: would pip install them on the GPU machine?
    # Here they would not import (built for the GPU machine's Python 3.12): only check that
    # pip accepts every one for that target.
    echo "[gpu_check] dry run: checking $# wheels from $WHEELS for Python 3.12 x86-64"
    "${pip_install[@]}" --target "$site" --dry-run --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 "$@" \
        || die "pip would not install the wheels of $WHEELS on Python 3.12 x86-64"
}
# Is $PY the GPU machine's kind of interpreter (CPython 3.12, x86-64 Linux)? Then a dry run
# installs the wheels as the real check does (a copy of that machine's software, e.g.
# scripts/gpu_image_check.sh's environment); elsewhere they would not import: checked only.
like_gpu=$("$PY" -c 'import platform, sys
print(int(sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 12)
          and sys.platform == "linux" and platform.machine() == "x86_64"))' 2>/dev/null)
if [ "${#wheels[@]}" -gt 0 ] && [ "$dry" = 1 ] && [ "$like_gpu" != 1 ]; then
    check_wheels "${wheels[@]}"
elif [ "${#wheels[@]}" -gt 0 ]; then
    echo "[gpu_check] installing ${#wheels[@]} wheels from $WHEELS"
    "${pip_install[@]}" --target "$site" "${wheels[@]}" || die "pip could not install the wheels of $WHEELS"
else
    echo "[gpu_check] no wheels in $WHEELS: using what $PY already has"
fi
if [ "$jittor" = 1 ] && [ "${#jt_source[@]}" -gt 0 ] && [ "$dry" = 1 ]; then
    [ "${#jt_wheels[@]}" -eq 0 ] || check_wheels "${jt_wheels[@]}"
    echo "[gpu_check] dry run: building the metadata of ${jt_source[*]}"
    "${pip_install[@]}" --target "$jtsite" --dry-run --no-build-isolation "${jt_source[@]}" \
        || die "pip would not install ${jt_source[*]} (setuptools missing?)"
elif [ "$jittor" = 1 ] && [ "${#jt_source[@]}" -gt 0 ]; then
    echo "[gpu_check] installing ${jt_wheels[*]##*/} ${jt_source[*]##*/} into a folder of their own"
    "${pip_install[@]}" --target "$jtsite" --no-build-isolation "${jt_wheels[@]}" "${jt_source[@]}" \
        || die "pip could not install ${jt_source[*]} ${jt_wheels[*]}"
elif [ "$jittor" = 1 ]; then
    echo "[gpu_check] no Jittor source package in $WHEELS: using the Jittor $PY already has"
elif [ "${#jt_source[@]}" -gt 0 ] || [ "${#jt_wheels[@]}" -gt 0 ]; then
    echo "[gpu_check] Jittor's packages in $WHEELS are left out here: they are the --jittor check's"
fi
export PYTHONPATH="$site:$(pwd -P)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[ "$jittor" = 1 ] && export PYTHONPATH="$jtsite:$PYTHONPATH"
"$PY" -c "import pycocotools, pytest_html" 2>/dev/null \
    || die "pycocotools or pytest-html is missing: run scripts/gpu_wheels.sh where PyPI is reachable and carry $WHEELS"
if [ "$jittor" = 1 ]; then
    "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('jittor') is None)" \
        || die "no Jittor for $PY: run scripts/gpu_wheels.sh --with-jittor where PyPI is reachable and carry $WHEELS"
fi

declare -A status seconds
step() {  # step NAME CAP COMMAND...: run under its cap; record exit status and wall time
    local name=$1 cap=$2
    shift 2
    if [ -n "${GFOCAL_CHECK_STEPS:-}" ] && [[ ",$GFOCAL_CHECK_STEPS," != *",$name,"* ]]; then
        status[$name]="skipped (not in GFOCAL_CHECK_STEPS)" seconds[$name]=0
        echo "[gpu_check] === $name: ${status[$name]}"
        return
    fi
    echo "[gpu_check] === $name (cap ${cap} s): $*"
    capped "$name" "$cap" 20 "$@"
    echo "[gpu_check] === $name: ${status[$name]} after ${seconds[$name]} s"
}

pytest=("$PY" -m pytest -p no:cacheprovider --device "$device")
perf_out=(--benchmark-json "$out/perf.json" --html "$out/perf.html" --self-contained-html)
parity_out=(--html "$out/parity.html" --self-contained-html)
if [ "$jittor" = 1 ]; then
    export NVIDIA_TF32_OVERRIDE=0  # full fp32 in cuBLAS and cuDNN, for both ports
    names=(jittor_setup jittor_build perf parity)
    tree=$work/jtcuda  # "jtcuda" in the name: Jittor then does not warn about a CUDA path
    setup=("$PY" scripts/jittor_cuda.py "$tree" --python "$PY" --cudnn "${GFOCAL_JITTOR_CUDNN:-on}"
           ${GFOCAL_NVCC:+--nvcc "$GFOCAL_NVCC"})
    if [ "$dry" = 1 ]; then
        perf_select=(-k "paired and inference and 1" --benchmark-disable)  # both ports
        parity_select=(-k "jittor and first_divergence and eval" --parity-cases coco_b1)
        step jittor_setup "$CAP_JT_SETUP" "${setup[@]}" --copy
        echo "[gpu_check] dry run: Jittor's environment printed, not applied; no CUDA build"
        status[jittor_build]="skipped (dry run: no GPU driver)" seconds[jittor_build]=0
    else
        perf_select=(-k "jittor or paired" --benchmark-enable --amp off,native-fp16)
        parity_select=(-k "jittor and not eager_jittor")
        step jittor_setup "$CAP_JT_SETUP" "${setup[@]}"
        if [ "${status[jittor_setup]}" = passed ]; then
            . "$tree/env.sh"
            step jittor_build "$CAP_JT_BUILD" "$PY" scripts/jittor_cuda_smoke.py
        fi
    fi
    for name in jittor_build perf parity; do  # without Jittor's CUDA build, nothing to time
        if [ "${status[jittor_setup]}" != passed ]; then
            status[$name]="not run (jittor_setup did not pass)" seconds[$name]=0
        elif [ "$name" != jittor_build ]; then
            case "${status[jittor_build]}" in
                failed*|stopped*) status[$name]="not run (jittor_build did not pass)" seconds[$name]=0 ;;
            esac
        fi
    done
    [ -n "${status[perf]:-}" ] ||
        step perf "$CAP_JT_PERF" "${pytest[@]}" perf_tests/test_benchmarks.py "${perf_select[@]}" \
        "${perf_out[@]}"
    [ -n "${status[parity]:-}" ] || GFOCAL_PARITY_VERDICT="$out/parity_verdict.json" \
        step parity "$CAP_JT_PARITY" "${pytest[@]}" parity_tests "${parity_select[@]}" \
        "${parity_out[@]}"
else
    names=(perf tuned parity train)
    if [ "$dry" = 1 ]; then
        perf_select=(-k "torch and inference and not paired" --benchmark-disable --amp off,bf16)
        tuned_select=(-k "torch and inference and not paired and 1" --benchmark-disable
                      --amp off)
        parity_select=(-k "coco_b1 and not r50 and not bottleneck")
        iters=2 config=tests/gpu_check_tiny_config.py
    else
        perf_select=(-k "torch and not paired" --benchmark-enable
                     --amp off,bf16,fp16,native-bf16,native-fp16)
        tuned_select=(-k "torch and not paired and not tf32 and (train_step or inference)"
                      --benchmark-enable --amp off,bf16)
        parity_select=()
        iters=$TRAIN_ITERS config=configs/gfl_r18_mini.py
    fi
    step perf "$CAP_PERF" "${pytest[@]}" perf_tests/test_benchmarks.py "${perf_select[@]}" \
        "${perf_out[@]}"
    step tuned "$CAP_TUNED" "${pytest[@]}" perf_tests/test_benchmarks.py "${tuned_select[@]}" \
        --tuning tuned --benchmark-json "$out/perf_tuned.json"
    GFOCAL_PARITY_VERDICT="$out/parity_verdict.json" \
        step parity "$CAP_PARITY" "${pytest[@]}" parity_tests "${parity_select[@]}" \
        "${parity_out[@]}"
    # train, then test its checkpoint (the 12 COCO statistics also go to train/test.txt)
    step train "$CAP_TRAIN" bash -c 'set -o pipefail
        "$1" -m gfocal train "$2" --framework torch --device "$3" --work-dir "$4" --max-iters "$5" &&
        "$1" -m gfocal test "$2" "$4/latest.pth" --framework torch --device "$3" \
            --out "$4/results.json" | tee "$4/test.txt"' _ "$PY" "$config" "$device" "$out/train" "$iters"
fi

steps=()
for name in "${names[@]}"; do
    steps+=(--step "$name=${status[$name]}=${seconds[$name]}")
done
"$PY" scripts/gpu_summary.py "$out" --device "$device" "${steps[@]}" \
    $([ "$jittor" = 1 ] && echo --jittor)
rc=$?
for name in "${names[@]}"; do
    case "${status[$name]}" in passed|skipped*) ;; *) rc=1 ;; esac
done
exit $rc
