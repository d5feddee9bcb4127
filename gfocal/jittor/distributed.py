"""Data-parallel training with Jittor's MPI mode: one process per device, started by
OpenMPI's mpirun, gradients averaged by Jittor's optimizer (mpi_all_reduce "mean" in
Optimizer.pre_step whenever jt.in_mpi)."""
import numpy as np

import jittor as jt


def start(device):
    """Join the job mpirun started (MPI is up since the import); returns (rank, world
    size)."""
    return jt.rank, jt.world_size


def active():
    return bool(jt.in_mpi)


def reduce_mean(values):
    """The mean over the processes of each float of `values` (the values themselves when
    not distributed), as the official code's reduce_mean."""
    if not active():
        return list(values)
    v = jt.array(np.asarray(values, np.float64))
    return v.mpi_all_reduce("mean").numpy().tolist()


class DataParallel:
    """What train_step needs of a detector (`loss`); Jittor's optimizer averages the
    gradients itself. The detector (for checkpoints and evaluation) stays `module`."""

    def __init__(self, detector):
        # Each process initialises (and seeds) on its own: rank 0's parameters for all, one
        # at a time. MPI pairs broadcasts by call order, and Jittor runs lazy ops in an order
        # that can differ between processes (Module.mpi_param_broadcast leaves them lazy):
        # two parameters of one shape then silently swapped values (measured: layer2
        # updates off by 1e-2 in 1 of 6 runs).
        for p in detector.parameters():
            p.update(p.mpi_broadcast(0))
            p.sync()
        self.module = detector

    def loss(self, batch):
        return self.module.loss(batch)


def wrap(detector):
    return DataParallel(detector)


def finish_step():
    """Run the step's pending work now, in every process: Jittor is lazy, and an
    all-reduce left pending would otherwise first run when process 0 alone reads the
    weights (for a checkpoint) and wait for the others forever."""
    jt.sync_all()


def barrier():
    if active():
        jt.array([0]).mpi_all_reduce("add").sync()


def stop():
    pass  # Jittor finalises MPI at exit
