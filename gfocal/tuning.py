"""Speed settings (`train.tuning`, `--tuning`), written once for both ports.

`default`: each framework as it comes (PyTorch eager with cuDNN autotuning off and its
deterministic algorithms on a GPU; Jittor with its default flags). `tuned`: the framework's
own speed features that were measured faster here, and only those (`TUNED`; the numbers,
and the features measured and dropped, are in docs/MODEL.md section 14).

A tuned model computes the same function: the parity suite runs against it
(`--tuning tuned`) under the same tolerances (parity_tests/TOLERANCES.md, "Tuned setting").
Compilation is paid on the first call of each new input shape, which the perf suite and the
training log report apart from the steady-state time.
"""
from gfocal.choices import checked, checked_list

SETTINGS = ("default", "tuned")

# What `tuned` turns on, by (framework, device kind). A feature left out was measured no
# faster (docs/MODEL.md section 14); the CUDA entries are the CPU's plus cuDNN autotuning,
# timed by `scripts/gpu.py check` (no GPU was lent to measure them).
COMPILE_INFERENCE = "compile_inference"  # torch.compile (inductor) of the no-grad forward
CUDNN_BENCHMARK = "cudnn_benchmark"      # cuDNN picks the fastest algorithm per shape
TUNED = {
    ("torch", "cpu"): (COMPILE_INFERENCE,),
    ("torch", "cuda"): (COMPILE_INFERENCE, CUDNN_BENCHMARK),
    ("jittor", "cpu"): (),
    ("jittor", "cuda"): (),
}


class TuningError(ValueError):
    """A setting name that is not one of SETTINGS."""


def check_setting(value, where="--tuning"):
    """`value` if it is a setting name, else TuningError naming `where`."""
    return checked(value, SETTINGS, TuningError, where, "a speed setting")


def setting_list(text, where="--tuning"):
    """A comma-separated list of setting names (pytest's --tuning), each checked."""
    return checked_list(text, check_setting, where)


def features(framework, setting, device="cpu"):
    """The features `setting` turns on for `framework` on `device` (cpu, cuda, cuda:N)."""
    check_setting(setting)
    if setting == "default":
        return ()
    return TUNED[(framework, str(device).split(":")[0])]
