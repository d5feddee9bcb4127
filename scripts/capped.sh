# Sourced by scripts/gpu_check.sh and scripts/gpu_image_check.sh: one step under a time cap.
#
#   capped NAME CAP GRACE COMMAND...
#
# runs COMMAND under `timeout` (SIGINT at CAP seconds, so that pytest still writes its
# reports; SIGKILL GRACE seconds later) and records the outcome in the caller's associative
# arrays: status[NAME] (passed / stopped at its cap / failed (exit N)) and seconds[NAME].
capped() {
    local name=$1 cap=$2 grace=$3 start rc
    shift 3
    start=$(date +%s)
    timeout --signal=INT --kill-after="$grace" "$cap" "$@"
    rc=$?
    seconds[$name]=$(( $(date +%s) - start ))
    case $rc in
        0) status[$name]=passed ;;
        124|137) status[$name]="stopped at its ${cap} s cap" ;;
        *) status[$name]="failed (exit $rc)" ;;
    esac
}
