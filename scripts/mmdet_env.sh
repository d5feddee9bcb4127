#!/usr/bin/env bash
# mmdetection 3.x in an environment of its own, for the mmdet subject of the parity suite
# (parity_tests/subjects/mmdet_gfl.py). Made once per machine and pin set, outside the
# checkout, as ~/.cache/gfocal-parity/mmdet-<hash>: a virtual environment whose .pth puts the
# shared frameworks environment (scripts/setup.sh) behind its own packages, so torch,
# torchvision, numpy, opencv, pycocotools and matplotlib are used from there, never
# reinstalled. Only the pins below go in, each without its dependencies (pip cannot then
# replace anything of the shared environment).
#
#   bash scripts/mmdet_env.sh            make it if needed; the last stdout line is its python
#   bash scripts/mmdet_env.sh --path     print its python, make nothing
#
# Idempotent (a second run checks a stamp), one set-up at a time (a lock), every wait bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=1  # bump when the way the environment is built changes
PINS=(
    mmdet==3.3.0 mmengine==0.10.7 mmcv-lite==2.1.0
    # their pure-Python needs the shared environment lacks
    addict==2.4.0 yapf==0.43.0 platformdirs==4.3.6 termcolor==2.5.0 rich==13.9.4
    markdown-it-py==3.0.0 mdurl==0.1.2 pyyaml==6.0.2 scipy==1.13.1 shapely==2.0.7
    terminaltables==3.1.10
)
PIP_TIMEOUT_S=900  # the whole install; pip's own socket timeout is below
LOCK_WAIT_S=1200   # another set-up of the same environment may be installing

die() { printf '[mmdet-env] error: %s\n' "$*" >&2; exit 2; }
log() { printf '[mmdet-env] %s\n' "$*" >&2; }

shared=$(bash scripts/setup.sh --env-path) || die "scripts/setup.sh --env-path failed"
[ -x "$shared/bin/python" ] || die "no shared frameworks environment at $shared (run bash scripts/setup.sh)"
shared_site=$("$shared/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') ||
    die "cannot ask $shared/bin/python for its site-packages"
key=$(printf '%s\n' "${PINS[@]}" "$shared" "recipe $RECIPE" | sha256sum | cut -c1-12)
ENV=${XDG_CACHE_HOME:-$HOME/.cache}/gfocal-parity/mmdet-$key
stamp="$ENV/.gfocal-mmdet-pins"

if [ "${1:-}" = --path ]; then echo "$ENV/bin/python"; exit 0; fi
[ $# = 0 ] || die "unknown option '$1' (use --path)"

ready() { [ "$(cat "$stamp" 2>/dev/null)" = "$(printf '%s\n' "${PINS[@]}")" ]; }
if ! ready; then
    mkdir -p "$(dirname "$ENV")"
    exec 9>"$ENV.lock"
    flock -w "$LOCK_WAIT_S" 9 || die "waited ${LOCK_WAIT_S}s for $ENV.lock (another set-up stuck?)"
    if ! ready; then  # the lock's previous holder may have made it meanwhile
        log "creating $ENV (once per machine and pin set)"
        rm -rf "$ENV"
        "$shared/bin/python" -m venv "$ENV" >&2 || die "cannot create the environment $ENV"
        own_site=$("$ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        # after its own site-packages, so a pin here wins over anything of the shared one
        printf '%s\n' "$shared_site" > "$own_site/zz-gfocal-shared-frameworks.pth"
        # (pipefail: the pipeline fails when pip does; grep only drops pip's local-index noise)
        timeout "$PIP_TIMEOUT_S" "$ENV/bin/python" -m pip install --quiet --no-deps \
            --disable-pip-version-check --timeout 60 --retries 2 "${PINS[@]}" 2>&1 |
            { grep -v "is ignored: it is neither" >&2 || true; } ||
            die "pip could not install the pins into $ENV within ${PIP_TIMEOUT_S}s (PyPI unreachable? see above)"
        "$ENV/bin/python" -c 'import mmdet, mmengine, mmcv, torch' 2>/dev/null ||
            die "$ENV: mmdet, mmengine, mmcv or torch does not import after the install"
        printf '%s\n' "${PINS[@]}" > "$stamp"
    fi
    flock -u 9
fi
echo "$ENV/bin/python"
