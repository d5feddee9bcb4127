"""Framework set-up that must happen before torch or jittor is imported.

Jittor reads its configuration from environment variables at import time, so every entry
point (conftest, CLI, set-up script) calls :func:`configure_frameworks` first.
"""
import os
import platform
import warnings

from gfocal.device import cuda_available, cuda_index, is_cuda
from gfocal.launch import local_processes, started_by_mpirun

DEFAULT_SEED = 0


def configure_frameworks(threads=None):
    """Set Jittor's and the thread pools' environment; idempotent, call before imports."""
    # the cores are shared by the processes of a data-parallel job on this machine
    default = max(1, (os.cpu_count() or 1) // local_processes())
    threads = threads or int(os.environ.get("GFOCAL_THREADS", default))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    # Jittor loads its MPI module (and initialises MPI) whenever it finds mpicc: only
    # under mpirun, where it is used (set, not defaulted: children inherit the variable).
    os.environ["use_mpi"] = "1" if started_by_mpirun() else "0"
    # Jittor names its kernel cache after the git branch of the folder it is installed in: pin
    # the name so an environment inside a git checkout does not recompile on a branch switch.
    os.environ.setdefault("cache_name", "default")
    # cuBLAS is deterministic only with a fixed workspace, set before its first handle.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if not cuda_available():
        # An nvcc without a CUDA runtime makes Jittor try (and fail) to build CUDA ops.
        os.environ.setdefault("nvcc_path", "")
    return int(os.environ["OMP_NUM_THREADS"])


def num_threads():
    """The thread count both ports use (the PyTorch port applies it at import)."""
    return int(os.environ.get("OMP_NUM_THREADS") or configure_frameworks())


def jittor_onednn_enabled():
    """True when Jittor's CPU convolutions go through oneDNN (not the ~60x slower fallback)."""
    import jittor  # noqa: F401
    from jittor import compile_extern
    return compile_extern.mkl_ops is not None


def warn_if_jittor_slow():
    if not jittor_onednn_enabled():
        warnings.warn(
            "Jittor runs WITHOUT oneDNN: CPU convolutions use a fallback about 60x slower. "
            "Run `bash scripts/setup.sh` as root to provision libdnnl-dev (docs/MODEL.md section 10).",
            RuntimeWarning, stacklevel=2)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_environment(device="cpu", seed=DEFAULT_SEED):
    """Versions and settings that decide whether two runs (on `device`, of `seed`) are
    comparable."""
    import numpy
    env = {
        "device": device,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "seed": seed,
    }
    try:
        import torch
        import torchvision
        env.update(torch=torch.__version__, torchvision=torchvision.__version__,
                   torch_threads=torch.get_num_threads(),
                   gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
        if is_cuda(device):  # the GPU the run used, and its numerics
            env.update(gpu=torch.cuda.get_device_name(cuda_index(device)),
                       cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                       tf32=bool(torch.backends.cudnn.allow_tf32))
    except ImportError:
        env.update(torch="not installed", torchvision="not installed")
    try:
        import jittor
        env.update(jittor=jittor.__version__, jittor_onednn=jittor_onednn_enabled(),
                   jittor_cuda=bool(jittor.flags.use_cuda) if jittor.has_cuda else False)
    except ImportError:
        env.update(jittor="not installed", jittor_onednn=False)
    return env
