"""Which GPU each process of a data-parallel job takes (gfocal/launch.py), on the CPU: the
mapping local rank -> device for both launchers, and the engine applying it before the port
is imported."""
import sys
import types

import pytest

from gfocal import engine
from gfocal.launch import LaunchError, job_device, show_only_gpu
from gfocal.ports import FRAMEWORKS

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29500"}
MPIRUN = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1",
          "OMPI_COMM_WORLD_LOCAL_RANK": "1"}


@pytest.mark.parametrize("framework, rank, visible, want", [
    ("torch", 0, None, ("cuda:0", None)),
    ("torch", 3, None, ("cuda:3", None)),
    ("torch", 1, "4,5", ("cuda:1", None)),     # cuda:1 is the second visible GPU, 5
    ("jittor", 0, None, ("cuda", "0")),
    ("jittor", 3, None, ("cuda", "3")),
    ("jittor", 1, "4, 5", ("cuda", "5")),      # the second of the GPUs it was given
])
def test_local_rank_to_device(framework, rank, visible, want):
    assert job_device(framework, rank, visible) == want


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_process_beyond_the_visible_gpus_is_one_line(framework):
    with pytest.raises(LaunchError, match="local rank 2 has no GPU: CUDA_VISIBLE_DEVICES='4,5' "
                                          "lists 2"):
        job_device(framework, 2, "4,5")


def test_the_gpu_cannot_be_restricted_after_jittor_initialised(monkeypatch):
    monkeypatch.setitem(sys.modules, "jittor", types.ModuleType("jittor"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(LaunchError, match="Jittor was imported before"):
        show_only_gpu("1")


@pytest.mark.parametrize("framework, launcher, env, device, visible", [
    ("torch", "pytorch", TORCHRUN, "cuda:1", None),
    ("jittor", "mpi", MPIRUN, "cuda", "1"),
])
def test_join_job_gives_process_1_its_gpu(monkeypatch, framework, launcher, env, device,
                                          visible):
    """Rank 1 of 2 on a (pretended) GPU machine: the port is set up on the mapped device, and
    a Jittor process sees only its own GPU by the time its port is imported."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delitem(sys.modules, "jittor", raising=False)  # as in a fresh job process
    monkeypatch.setattr(engine, "resolve_device", lambda spec: "cuda")
    seen = {}

    def use_port(cfg, framework, device):
        seen.update(device=device, visible=__import__("os").environ.get("CUDA_VISIBLE_DEVICES"))
        return types.SimpleNamespace(distributed=types.SimpleNamespace(
            start=lambda device, timeout_s: (1, 2)))
    monkeypatch.setattr(engine, "use_port", use_port)
    cfg = {"train": {"device": "cuda", "dist_timeout_s": 60}, "data": {"batch_size": 2}}
    run = engine.TrainRun(cfg, framework, "unused", launcher=launcher)
    _, got, rank, world = engine.join_job(run)
    assert (got, rank, world) == (device, 1, 2)
    assert seen == {"device": device, "visible": visible}
