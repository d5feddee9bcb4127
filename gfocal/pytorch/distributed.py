"""Data-parallel training with torch.distributed: one process per device, started by
torchrun, gradients averaged by DistributedDataParallel (gloo on the CPU, NCCL on GPUs)."""
import datetime

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gfocal.device import is_cuda

from . import current_device

# A process that waits longer than cfg's train.dist_timeout_s on the others in one
# collective gives up (torchrun normally ends the job sooner: it stops every process when
# one fails). The default of gfocal.config: 3600 s.
DEFAULT_TIMEOUT_S = 3600


def start(device, timeout_s=DEFAULT_TIMEOUT_S):
    """Join the job torchrun started, giving up on a collective after `timeout_s` seconds;
    returns (rank, world size)."""
    backend = "nccl" if is_cuda(str(device)) else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout_s)))
    return dist.get_rank(), dist.get_world_size()


def active():
    return dist.is_available() and dist.is_initialized()


def reduce_mean(values):
    """The mean over the processes of each float of `values` (the values themselves when
    not distributed), as the official code's reduce_mean."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=current_device())
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def gather_predictions(indexed):
    """Process 0: every process's `indexed` ([(image position, prediction dict of numpy
    arrays), ...]) together, sorted by image position; the others: None. Not distributed:
    `indexed` sorted."""
    if not active():
        return sorted(indexed, key=lambda item: item[0])
    parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    # gather_object pickles; on NCCL it moves the bytes through this process's GPU
    dist.gather_object(list(indexed), parts, dst=0)
    if parts is None:
        return None
    return sorted((item for part in parts for item in part), key=lambda item: item[0])


class _LossForward(nn.Module):
    """DDP synchronises what its module's forward computes: here the detector's loss."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, batch):
        return self.detector.loss(batch)


class DataParallel:
    """What train_step needs of a detector (`loss`), with DDP averaging the gradients; the
    detector itself (for checkpoints and evaluation) stays `module`."""

    def __init__(self, detector):
        device = current_device()
        ids = [device.index] if device.type == "cuda" else None
        # DDP broadcasts rank 0's parameters and buffers: identical models at step 0
        self.ddp = DistributedDataParallel(_LossForward(detector), device_ids=ids)
        self.module = detector

    def loss(self, batch):
        return self.ddp(batch)


def wrap(detector):
    return DataParallel(detector)


def finish_step():
    """Nothing to do: DDP's all-reduce has finished when backward returns."""


def barrier():
    if active():
        dist.barrier()


def stop():
    if active():
        dist.destroy_process_group()
