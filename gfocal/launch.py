"""Which launcher started this process, written once for both ports (mmdetection's
`--launcher none|pytorch|mpi`): torchrun for the PyTorch port (torch.distributed, DDP),
OpenMPI's mpirun for the Jittor port (Jittor's MPI mode). The frameworks do the rest.
This is the one module that reads the launchers' environment variables."""
import os
import sys

LAUNCHERS = {"none": None, "pytorch": "torch", "mpi": "jittor"}
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
MPIRUN_ENV = ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")
COMMANDS = {"pytorch": "torchrun --nproc-per-node N -m gfocal train CONFIG --framework torch "
                       "--launcher pytorch ...",
            "mpi": "mpirun -np N gfocal train CONFIG --framework jittor --launcher mpi ..."}


class LaunchError(ValueError):
    """A launcher that does not fit the framework or the way the process was started."""


def check_launcher(launcher, framework):
    """Stop with one line when `launcher` is not the one of `framework` or this process was
    not started by it."""
    if launcher not in LAUNCHERS:
        raise LaunchError(f"--launcher {launcher!r} is not one of {', '.join(LAUNCHERS)}")
    if launcher == "none":
        return
    if LAUNCHERS[launcher] != framework:
        other = next(k for k, v in LAUNCHERS.items() if v == framework)
        raise LaunchError(f"--launcher {launcher} is for --framework {LAUNCHERS[launcher]}; "
                          f"--framework {framework} trains data-parallel with --launcher {other}")
    needed = TORCHRUN_ENV if launcher == "pytorch" else MPIRUN_ENV
    missing = [k for k in needed if k not in os.environ]
    if missing:
        starter = "torchrun" if launcher == "pytorch" else "mpirun"
        raise LaunchError(f"--launcher {launcher}: this process was not started by {starter} "
                          f"({', '.join(missing)} not set); run `{COMMANDS[launcher]}`")


def process_label():
    """'rank R of N' when this process belongs to a torchrun or mpirun job, else ''."""
    for rank, world in (("RANK", "WORLD_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")):
        if rank in os.environ and world in os.environ:
            return f"rank {os.environ[rank]} of {os.environ[world]}"
    return ""


def local_rank():
    """This process's index on its machine (0 outside a job)."""
    for key in ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def job_size():
    """The number of processes of the job this process belongs to (1 outside a job)."""
    for key in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 1


def local_processes():
    """Processes of this job on this machine: torchrun's LOCAL_WORLD_SIZE, mpirun's
    OMPI_COMM_WORLD_LOCAL_SIZE, else 1."""
    for key in ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        if os.environ.get(key, "").isdigit():
            return max(1, int(os.environ[key]))
    return 1


def started_by_mpirun():
    return MPIRUN_ENV[0] in os.environ


def job_device(framework, rank_here, visible=None):
    """(device, CUDA_VISIBLE_DEVICES for this process or None) of the process with local rank
    `rank_here` of a job on a GPU machine; `visible`: the CUDA_VISIBLE_DEVICES it inherited.
    PyTorch addresses GPU r as cuda:r. Jittor only ever uses the first GPU it sees, so each
    of its processes is shown just its own GPU (the r-th visible one) and uses cuda."""
    gpus = [g.strip() for g in visible.split(",")] if visible else None
    if gpus is not None and rank_here >= len(gpus):
        raise LaunchError(f"the process of local rank {rank_here} has no GPU: "
                          f"CUDA_VISIBLE_DEVICES={visible!r} lists {len(gpus)}")
    if framework == "torch":
        return f"cuda:{rank_here}", None
    return "cuda", gpus[rank_here] if gpus is not None else str(rank_here)


def show_only_gpu(gpu):
    """Restrict this process to GPU `gpu` (job_device's second value); it must happen before
    Jittor is imported, which is when Jittor initialises CUDA."""
    if "jittor" in sys.modules and os.environ.get("CUDA_VISIBLE_DEVICES") != gpu:
        raise LaunchError(f"Jittor was imported before this process of the job was given its "
                          f"GPU (CUDA_VISIBLE_DEVICES={gpu}); start it through `gfocal train`")
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
