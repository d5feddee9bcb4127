#!/usr/bin/env bash
# Run HERE (PyPI reachable): downloads the wheels the borrowed GPU machine lacks into the
# git-ignored folder .whl/ (name it in the device tool's `carry`). That machine has Python
# 3.12 (x86-64, manylinux) with torch, torchvision, numpy 2, opencv, matplotlib, tqdm, pytest,
# pytest-benchmark and hypothesis, but no network: pycocotools and pytest-html (with its
# pytest-metadata) must travel. --with-jittor adds Jittor's source package and numpy 1.26
# (Jittor 1.3.11 needs numpy < 2), for the Jittor-on-CUDA check (gpu_check.sh --jittor, which
# installs them apart from the PyTorch check's wheels).
#
#   bash scripts/gpu_wheels.sh                 the PyTorch check's wheels
#   bash scripts/gpu_wheels.sh --with-jittor   ... and Jittor's
#   bash scripts/gpu_wheels.sh --list          print what would be downloaded, download nothing
#
# GFOCAL_WHEELS=dir picks another folder; PYTHON=... the pip to download with (any version:
# it downloads for the target's Python and platform, not its own).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${GFOCAL_WHEELS:-.whl}
LIMIT_MB=64  # what the device tool carries at most

# The versions this machine's environment uses (pyproject allows ranges); each builds for 3.12.
WHEELS=(pycocotools==2.0.11 pytest-html==4.2.0 pytest-metadata==3.1.1)
JITTOR_WHEELS=(numpy==1.26.4)
JITTOR_SOURCE=(jittor==1.3.11)  # published as a source package only

die() { printf '[gpu_wheels] error: %s\n' "$*" >&2; exit 2; }

with_jittor=0 list=0
for arg in "$@"; do
    case "$arg" in
        --with-jittor) with_jittor=1 ;;
        --list) list=1 ;;
        *) die "unknown option '$arg' (known: --with-jittor, --list)" ;;
    esac
done
binary=("${WHEELS[@]}") source=()
if [ "$with_jittor" = 1 ]; then
    binary+=("${JITTOR_WHEELS[@]}")
    source+=("${JITTOR_SOURCE[@]}")
fi
if [ "$list" = 1 ]; then
    printf '%s\n' "${binary[@]}" "${source[@]}"
    exit 0
fi

git check-ignore -q "$DEST/x.whl" 2>/dev/null || die "$DEST is not git-ignored: the wheels must not be committed"
# Into a fresh folder that then replaces $DEST: two versions of one package would stop the
# install there, and a failed download leaves the old folder as it was.
fresh=$(mktemp -d "${DEST%/}.new.XXXXXX")
trap 'rm -rf "$fresh"' EXIT
pip_download=("$PY" -m pip download --quiet --no-deps --dest "$fresh")
"${pip_download[@]}" --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 "${binary[@]}" \
    || die "pip could not download ${binary[*]} for Python 3.12 x86-64"
if [ "${#source[@]}" -gt 0 ]; then
    "${pip_download[@]}" --no-binary=:all: "${source[@]}" || die "pip could not download ${source[*]}"
fi
size_mb=$(du -sm "$fresh" | cut -f1)
[ "$size_mb" -le "$LIMIT_MB" ] || die "the wheels take ${size_mb} MiB, over the ${LIMIT_MB} MiB the device tool carries"
rm -rf "$DEST"
mv "$fresh" "$DEST"
printf '[gpu_wheels] %s (%s MiB):\n' "$DEST" "$size_mb"
ls -1 "$DEST"
