"""The device option: spelling, resolution, each port's refusals, and that the PyTorch port
computes everything on the device it was given (cpu here, cuda on a GPU machine: the same
code path)."""
import os
import sys

import numpy as np
import pytest

from gfocal import device as device_mod
from gfocal.cli import main
from gfocal.device import DeviceError, parse_device, resolve_device
from gfocal.device import cuda_available
from tests.factories import pipeline_batch, tiny_model_cfg

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_good_spellings_parse(spec):
    assert parse_device(spec) == spec


@pytest.mark.parametrize("spec", ["gpu", "CUDA", "cuda:", "cuda:x", "cpu:0", "", None, 0])
def test_bad_spellings_name_the_value(spec):
    with pytest.raises(DeviceError, match="is not one of auto, cpu, cuda, cuda:N"):
        parse_device(spec)


def test_auto_follows_the_machine(monkeypatch):
    monkeypatch.setattr(device_mod, "cuda_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(device_mod, "cuda_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"


def test_cuda_without_a_gpu_says_what_to_do(monkeypatch):
    monkeypatch.setattr(device_mod, "cuda_available", lambda: False)
    with pytest.raises(DeviceError, match=r"'cuda:0'.*no CUDA GPU.*use --device cpu"):
        resolve_device("cuda:0")


def test_torch_refuses_a_gpu_it_does_not_see(torch_port, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="PyTorch .* sees no CUDA GPU"):
        torch_port.use_device("cuda")
    assert str(torch_port.current_device()) == "cpu"  # unchanged by the refusal


def test_torch_refuses_an_index_past_the_last_gpu(torch_port, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match=r"'cuda:3'.*1 GPU\(s\), cuda:0\.\.cuda:0"):
        torch_port.use_device("cuda:3")


@pytest.mark.skipif(cuda_available(), reason="checks the refusal of a Jittor without CUDA")
def test_jittor_without_its_cuda_build_refuses_cuda(jittor_port):
    import jittor as jt
    assert not jt.has_cuda
    with pytest.raises(DeviceError, match="Jittor .* no working CUDA build.*--device cpu"):
        jittor_port.use_device("cuda")
    assert jittor_port.current_device() == "cpu" and not jt.flags.use_cuda


def test_on_device_restores_the_previous_device(port):
    before = str(port.current_device())
    with port.on_device("cpu"):
        assert str(port.current_device()) == "cpu"
    assert str(port.current_device()) == before


def _tiny_batch():
    rng = np.random.default_rng(0)
    return pipeline_batch(rng.standard_normal((1, 3, 64, 96)).astype(np.float32),
                          [[[8, 8, 40, 48], [30, 20, 90, 60]]], [[1, 4]])


# Functions whose job is to leave the device: copies for numpy, probes and results.
TRANSFERS = {"cpu", "numpy", "to", "tolist", "item"}
# Factories put their tensor on the default device (the CPU) unless given one: on the CPU
# the only sign of a future GPU fallback is a port's factory call without `device=`.
FACTORIES = {"arange", "zeros", "ones", "full", "empty", "tensor", "as_tensor", "linspace",
             "eye", "rand", "randn", "randint"}


@pytest.mark.parametrize("device", DEVICES)
def test_every_torch_tensor_lives_on_the_chosen_device(torch_port, device):
    """Every tensor the PyTorch port makes in loss, backward and predict (anchors, targets,
    post-processing included) is on the device given, outside explicit copies to the host."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_leaves
    PORT = os.path.dirname(torch_port.__file__)

    seen = {}

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = getattr(func, "__name__", repr(func))
            caller = sys._getframe(1).f_code.co_filename
            if name in FACTORIES and "device" not in (kwargs or {}) and caller.startswith(PORT):
                seen.setdefault("factory without device=", set()).add(f"{name} in {caller}")
            elif name not in TRANSFERS:
                for leaf in tree_leaves(out):
                    if isinstance(leaf, torch.Tensor):
                        seen.setdefault(leaf.device.type, set()).add(name)
            return out

    batch = _tiny_batch()
    with torch_port.on_device(device):
        model = torch_port.build_detector(tiny_model_cfg(score_thr=0.0))
        assert {p.device.type for p in model.parameters()} == {device}
        with Recorder():
            model.train()
            losses = model.loss(batch)
            losses["loss"].backward()
            model.eval()
            detections = model.predict(batch)
    assert {v.device.type for v in losses.values()} == {device}
    assert {p.grad.device.type for p in model.parameters() if p.grad is not None} == {device}
    assert set(seen) == {device}, f"made off the device: { {k: sorted(v) for k, v in seen.items() if k != device} }"
    assert len(seen[device]) > 20  # the recorder saw the computation, not a handful of ops
    assert isinstance(detections[0]["boxes"], np.ndarray)


def test_train_and_test_run_on_an_explicit_cpu(tiny_config, tmp_path, capsys):
    work = tmp_path / "work"
    assert main(["train", tiny_config, "--framework", "torch", "--work-dir", str(work),
                 "--max-iters", "1", "--device", "cpu"]) == 0
    assert main(["test", tiny_config, str(work / "latest.pth"), "--framework", "torch",
                 "--device", "cpu"]) == 0
    assert "AP " in capsys.readouterr().out


def refusal(command, framework, device, config, tmp_path, capsys):
    """(stderr, work folder) of `gfocal COMMAND ... --device DEVICE`, asserted refused in one
    line (exit 2, no traceback) before anything was written."""
    work = tmp_path / "work"
    argv = {"train": ["train", config, "--framework", framework, "--work-dir", str(work)],
            "test": ["test", config, str(tmp_path / "x.pth"), "--framework", framework],
            "compare": ["compare", config, "--out-dir", str(work)]}[command]
    code = main(argv + ["--device", device])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not work.exists() or not any(work.iterdir())
    return err


@pytest.mark.skipif(cuda_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("command", ["train", "test", "compare"])
def test_cuda_on_a_machine_without_a_gpu_is_one_line(command, tiny_config, tmp_path, capsys):
    """Refused before anything is written; the message names the device."""
    err = refusal(command, "torch", "cuda:3", tiny_config, tmp_path, capsys)
    assert "'cuda:3'" in err and "--device cpu" in err


@pytest.mark.parametrize("command", ["train", "compare"])
def test_jittor_cuda_before_its_build_works_is_one_line(command, tiny_config, tmp_path, capsys,
                                                        monkeypatch, torch_port):
    """On a GPU machine (simulated here: PyTorch accepts any device) asking Jittor for CUDA
    stops, naming Jittor."""
    import jittor as jt
    if jt.has_cuda:
        pytest.skip("this Jittor has a CUDA build")
    monkeypatch.setattr(device_mod, "cuda_available", lambda: True)
    monkeypatch.setattr(torch_port, "use_device", lambda *args, **kwargs: None)
    err = refusal(command, "jittor", "cuda", tiny_config, tmp_path, capsys)
    assert "Jittor" in err and "--device cpu" in err


def test_out_of_memory_is_one_line_and_keeps_the_log(tiny_config, tmp_path, capsys,
                                                            monkeypatch):
    """An OOM at iteration 2 stops with the device and the cure; iteration 1's log stays."""
    import torch

    from gfocal.pytorch import train as torch_train
    real_step, calls = torch_train.train_step, []

    def step(model, optimizer, batch, scaler=None):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(model, optimizer, batch, scaler)

    monkeypatch.setattr(torch_train, "train_step", step)
    work = tmp_path / "work"
    code = main(["train", tiny_config, "--framework", "torch", "--work-dir", str(work),
                 "--max-iters", "3", "--device", "cpu"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("gfocal")]  # not tqdm's
    assert code == 2 and "Traceback" not in err and len(errors) == 1
    assert "out of memory on cpu" in err and "iteration 2" in err and "batch_size" in err
    assert len((work / "log_torch.jsonl").read_text().splitlines()) == 1
