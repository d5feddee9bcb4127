"""Build Jittor's CUDA side and prove it on the GPU, after scripts/jittor_cuda.py (its
TREE/env.sh sourced): importing Jittor compiles its core and its cuBLAS, cuDNN, cuRAND,
cuFFT and cuSPARSE ops with nvcc; then one convolution (cuDNN where loaded) and one matmul
(cuBLAS) run on the GPU and are checked against the CPU. Prints Jittor's CUDA facts; exit 1
with one line when Jittor has no CUDA or a result is off.

    python scripts/jittor_cuda_smoke.py
"""
import sys
import time


def main():
    start = time.time()
    import numpy as np

    from gfocal.runtime import configure_frameworks
    configure_frameworks()
    import jittor as jt
    from jittor import compile_extern
    built = time.time() - start
    if not jt.has_cuda:
        print(f"jittor_cuda_smoke: Jittor {jt.__version__} has no CUDA (has_cuda 0) after "
              f"{built:.0f} s: see the log above", file=sys.stderr)
        return 1
    flags = jt.flags
    std = [f for f in flags.nvcc_flags.split() if f.startswith("-std=")]
    print(f"[smoke] Jittor {jt.__version__}: core and ops built/loaded in {built:.0f} s; "
          f"cuda_archs {list(flags.cuda_archs)}, nvcc {flags.nvcc_path} {' '.join(std)}, "
          f"cuDNN {'loaded' if compile_extern.cudnn else 'off'}, "
          f"cuBLAS {'loaded' if compile_extern.cublas else 'off'}, "
          f"use_tensorcore {flags.use_tensorcore}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 40, 56)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.1
    a = rng.standard_normal((64, 96)).astype(np.float32)
    b = rng.standard_normal((96, 48)).astype(np.float32)

    def run():
        conv = jt.nn.conv2d(jt.array(x), jt.array(w), padding=1)
        return conv.numpy(), jt.matmul(jt.array(a), jt.array(b)).numpy()

    with jt.flag_scope(use_cuda=0):
        cpu = run()
    start = time.time()
    with jt.flag_scope(use_cuda=1):
        gpu = run()
        jt.sync_all(True)
    for name, c, g in zip(("conv2d", "matmul"), cpu, gpu):
        err = float(np.abs(g - c).max() / max(np.abs(c).max(), 1e-30))
        print(f"[smoke] {name} on the GPU vs the CPU: max relative error {err:.2e}")
        if not err < 1e-4:  # fp32 both ways (NVIDIA_TF32_OVERRIDE=0 in the GPU check)
            print(f"jittor_cuda_smoke: {name} on the GPU is off by {err:.2e}", file=sys.stderr)
            return 1
    print(f"[smoke] first GPU run (kernels compiled) in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
