"""Data-parallel training with Jittor's MPI mode: one process per device, started by
OpenMPI's mpirun, gradients averaged by Jittor's optimizer (mpi_all_reduce "mean" in
Optimizer.pre_step whenever jt.in_mpi)."""
import numpy as np

import jittor as jt


def start(device, timeout_s=None):
    """Join the job mpirun started (MPI is up since the import); returns (rank, world
    size). `timeout_s` (train.dist_timeout_s) is not used: Jittor's MPI collectives have no
    timeout; mpirun ends the job when a process fails."""
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


# One detection as a row of float64 numbers (exact for float32 boxes and scores and
# integer labels): image position, x1, y1, x2, y2, score, label.
_ROW = 7


def _all_sum(array):
    """The element-wise sum over the processes of a float64 array of one shape in all."""
    return jt.array(array).mpi_all_reduce("add").numpy()


def gather_predictions(indexed):
    """Process 0: every process's `indexed` ([(image position, prediction dict of numpy
    arrays), ...]) together, sorted by image position; the others: None. Not distributed:
    `indexed` sorted.

    Jittor's MPI offers all-reduce, reduce and broadcast of Vars, no gather of objects: each
    process puts its images and detections as rows into zero arrays of the whole job's
    size, at its own offset, and an all-reduce "add" of them is every row exactly (x + 0 is
    x in floating point)."""
    if not active():
        return sorted(indexed, key=lambda item: item[0])
    rank, world = jt.rank, jt.world_size
    rows, positions = [], []
    for position, pred in indexed:
        boxes = np.asarray(pred["boxes"], np.float64).reshape(-1, 4)
        scores = np.asarray(pred["scores"], np.float64).reshape(-1, 1)
        labels = np.asarray(pred["labels"], np.float64).reshape(-1, 1)
        positions.append(position)
        rows.append(np.hstack([np.full((len(boxes), 1), float(position)), boxes, scores,
                               labels]))
    counts = np.zeros((world, 2), np.float64)  # images, detections of each process
    counts[rank] = len(positions), sum(len(r) for r in rows)
    counts = _all_sum(counts).astype(np.int64)
    # positions of the images (those without a detection included) and the detections
    all_positions = np.zeros(max(1, int(counts[:, 0].sum())), np.float64)
    start = int(counts[:rank, 0].sum())
    all_positions[start:start + len(positions)] = positions
    all_rows = np.zeros((max(1, int(counts[:, 1].sum())), _ROW), np.float64)
    start = int(counts[:rank, 1].sum())
    if rows:
        mine = np.concatenate(rows)
        all_rows[start:start + len(mine)] = mine
    all_positions = _all_sum(all_positions)[:int(counts[:, 0].sum())]
    all_rows = _all_sum(all_rows)[:int(counts[:, 1].sum())]
    if rank != 0:
        return None
    out = []
    for position in sorted(int(p) for p in all_positions):
        # rows of one image stay in their order (the image's own detections, by rank)
        own = all_rows[all_rows[:, 0] == position]
        out.append((position, {"boxes": own[:, 1:5],
                               "scores": own[:, 5],
                               "labels": own[:, 6].astype(np.int64)}))
    return out


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
