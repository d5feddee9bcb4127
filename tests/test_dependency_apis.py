"""The private parts of our dependencies that the product still uses, each because no public
API does the job (the reason stands beside the use): a test per part that fails with a
message naming the dependency, the part and what to change, when an upgrade removes it."""
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from gfocal.data.loader import _pool_processes


def test_process_pool_executor_keeps_its_workers_in_processes():
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        pid = pool.submit(os.getpid).result(timeout=60)
        assert isinstance(getattr(pool, "_processes", None), dict), (
            "concurrent.futures.ProcessPoolExecutor no longer keeps its worker processes in "
            "the private `_processes` dict: gfocal/data/loader.py `_pool_processes` must find "
            "them another way (it finds a dead worker and stops them within a bound)")
        workers = _pool_processes(pool)
        assert [w.pid for w in workers] == [pid] and all(
            isinstance(w, multiprocessing.process.BaseProcess) for w in workers), (
            "ProcessPoolExecutor._processes no longer maps pid -> multiprocessing.Process: "
            f"got {pool._processes!r}; change gfocal/data/loader.py `_pool_processes`")
    finally:
        pool.shutdown()
    assert pool._processes is None or isinstance(pool._processes, dict), (
        "ProcessPoolExecutor._processes after shutdown is neither None nor a dict: change "
        "gfocal/data/loader.py `_pool_processes`")


def test_grad_scaler_state_dict_carries_the_good_steps_as_growth_tracker(torch_port):
    import torch
    scaler = torch.amp.GradScaler("cpu")
    state = scaler.state_dict()
    assert "_growth_tracker" in state, (
        "torch.amp.GradScaler.state_dict() has no '_growth_tracker' entry any more (its "
        f"entries: {sorted(state)}): gfocal/pytorch/precision.py LossScaler saves and "
        "restores the loss scale's good steps through it; find their new name")
    restored = torch.amp.GradScaler("cpu")
    restored.load_state_dict({**state, "_growth_tracker": 3})
    assert restored.state_dict()["_growth_tracker"] == 3, (
        "torch.amp.GradScaler.load_state_dict() no longer takes the good steps from "
        "'_growth_tracker': gfocal/pytorch/precision.py LossScaler cannot resume them")
