"""Shared set-up of the parity suite: one small model in both ports with identical weights,
the input cases, and a session cache of every captured run so each probe test only compares.

Tests ask for the fixtures `case`, `mode`, `forward_probe`, `target_probe`, `loss_probe`;
`pytest_generate_tests` below parametrises them, so there is one test function per kind of
check, never a copied test per layer.
"""
import contextlib
import copy
import importlib
import os

import numpy as np
import pytest

from gfocal.config import from_dict
from gfocal.precision import INIT_SCALE, uses_loss_scale
from parity_tests import judge, kinks, ledger, regimes
from parity_tests.judge import FORWARD_PROBES, LOSS_PROBES, TARGET_PROBES

# The small model of the default run (ResNet-18, 32-64 channels, GN 8, 2 convs).
SMALL_MODEL = dict(depth=18, num_classes=6, feat_channels=32, fpn_channels=32,
                   stacked_convs=2, gn_groups=8)
MODES = ("eval", "train")
# name -> how the batch is made; at least two image sizes, one not a multiple of 32 (the
# random cases are raw tensors, not padded), batch sizes 1 and 2.
CASES = {
    "coco_b2": dict(kind="coco", img_scale=[128, 96], batch_size=2, first=0),
    "coco_b1": dict(kind="coco", img_scale=[100, 75], batch_size=1, first=8),  # a crowd box
    "random_b1": dict(kind="random", shape=(1, 3, 75, 100), seed=1),
    "random_b2": dict(kind="random", shape=(2, 3, 83, 61), seed=2),
    # a batch whose second image has no boxes (its targets are all background)
    "random_b2_empty": dict(kind="random", shape=(2, 3, 64, 80), seed=3, empty=(1,)),
    # one image without boxes: the loss normaliser num_total_pos is at its floor of 1
    "random_b1_empty": dict(kind="random", shape=(1, 3, 64, 80), seed=4, empty=(0,)),
}


def selected_cases(config):
    """CASES, or the ones --parity-cases names (a comma-separated list)."""
    names = config.getoption("--parity-cases")
    if not names:
        return list(CASES)
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in CASES]
    if unknown:
        raise pytest.UsageError(f"--parity-cases: unknown {', '.join(unknown)} "
                                f"(known: {', '.join(CASES)})")
    return chosen


def small_config(img_scale=(128, 96), batch_size=2, **model):
    return from_dict({"model": dict(SMALL_MODEL, **model),
                      "data": dict(img_scale=list(img_scale), batch_size=batch_size,
                                   val_batch_size=batch_size),
                      "optim": dict(warmup_iters=500)},
                     source="parity small model")


def pytest_generate_tests(metafunc):
    params = {"case": selected_cases(metafunc.config), "mode": list(MODES), "forward_probe": FORWARD_PROBES,
              "target_probe": TARGET_PROBES, "loss_probe": LOSS_PROBES,
              "subject": subjects(metafunc.config)}
    for name, values in params.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, values)


# ---------------------------------------------------------------- input cases
def coco_batch(spec):
    """The first `batch_size` val images with boxes from index `first` on, through the
    shared pipeline (resize, normalise, pad to 32, no flip)."""
    from gfocal.data.loader import build_dataloader, collate
    loader = build_dataloader(small_config(spec["img_scale"], spec["batch_size"]), "val")
    samples, idx = [], spec["first"]
    while len(samples) < spec["batch_size"]:
        sample = loader.prepare(idx, False)
        if len(sample["gt_bboxes"]):
            samples.append(sample)
        idx += 1
    return collate(samples)


def random_boxes(rng, img_h, img_w, n):
    """n boxes inside the image, sizes from 2 px up to most of the image."""
    x1 = rng.uniform(0, img_w - 3, n)
    y1 = rng.uniform(0, img_h - 3, n)
    w = rng.uniform(2, img_w - x1)
    h = rng.uniform(2, img_h - y1)
    return np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)


def random_batch(spec):
    """Raw random images (not padded to 32) with random boxes plus deliberate ties.

    Tie makers: a box centred half-way between anchor centres (equal distances), two
    identical boxes (equal IoUs, the smaller gt index must win) and a box touching the
    image border.
    """
    rng = np.random.default_rng(spec["seed"])
    n_img, _, height, width = spec["shape"]
    imgs = rng.standard_normal(spec["shape"]).astype(np.float32)
    gt_bboxes, gt_labels, metas = [], [], []
    for i in range(n_img):
        # the second image of a batch is smaller than the tensor: its padding is invalid
        img_h, img_w = (height, width) if i == 0 else (height - 19, width - 13)
        imgs[i, :, img_h:, :] = 0
        imgs[i, :, :, img_w:] = 0
        boxes = [random_boxes(rng, img_h, img_w, 4),
                 np.array([[4, 4, 20, 20], [30, 10, 54, 40], [30, 10, 54, 40],
                           [img_w - 25, img_h - 30, img_w, img_h]], dtype=np.float32)]
        boxes = np.concatenate(boxes)
        if i in spec.get("empty", ()):
            boxes = boxes[:0]
        gt_bboxes.append(boxes)
        gt_labels.append(rng.integers(0, SMALL_MODEL["num_classes"], len(boxes)).astype(np.int64))
        metas.append({"img_id": i, "file_name": f"random_{i}.png", "ori_shape": (img_h, img_w),
                      "img_shape": (img_h, img_w), "pad_shape": (img_h, img_w),
                      "scale_factor": np.ones(4, dtype=np.float32), "flip": False})
    return {"imgs": imgs, "gt_bboxes": gt_bboxes, "gt_labels": gt_labels,
            "gt_bboxes_ignore": [np.zeros((0, 4), np.float32) for _ in range(n_img)],
            "img_metas": metas}


def make_case(name):
    spec = CASES[name]
    return coco_batch(spec) if spec["kind"] == "coco" else random_batch(spec)


def as_float64(batch):
    out = dict(batch)
    out["imgs"] = batch["imgs"].astype(np.float64)
    out["gt_bboxes"] = [b.astype(np.float64) for b in batch["gt_bboxes"]]
    return out


# ---------------------------------------------------------------- models and runs
def build_pair(model_cfg, seed=0):
    """(torch model, jittor model or None where Jittor is not installed, state) with the
    torch port's seeded weights in both."""
    import torch

    from gfocal.ports import load_port
    tp = load_port("torch")
    torch.manual_seed(seed)
    tmodel = tp.build_detector(model_cfg)
    state = tp.checkpoint.state_dict_numpy(tmodel)
    jmodel = None
    if jittor_installed():
        jp = load_port("jittor")
        jmodel = jp.build_detector(model_cfg)
        jp.checkpoint.load_state_dict_numpy(jmodel, state)
    return tmodel, jmodel, state


def run_loss(port, model, batch, mode, grads, device="cpu", relu_masks=None, amp="off"):
    """Captured probes (+ loss totals, + gradients by name and the input of every ReLU call)
    of one loss evaluation on `device` (the model is already there) in precision `amp`
    (gfocal/precision.py; fp16's gradients through the loss scale, as training takes
    them); `relu_masks`: see parity_tests/kinks.py."""
    model.train() if mode == "train" else model.eval()
    scale = INIT_SCALE if uses_loss_scale(amp) else 1.0
    with port.on_device(device), port.precision.mixed_precision(amp, device):
        with port.probes.capture() as probes, \
                port.probes.relu_calls(model, relu_masks) as relus:
            losses = model.loss(batch)
        out = {"probes": dict(probes), "losses": {k: port.numpy(v) for k, v in losses.items()}}
        if grads:
            scaled = port.train.gradients_numpy(model, losses["loss"] * scale)
            out["grads"] = {n: g / np.float32(scale) for n, g in scaled.items()}
            out["relu_inputs"] = [(name, port.numpy(x)) for name, x in relus]
    return out


def jittor_installed():
    try:
        importlib.import_module("jittor")
    except ImportError:
        return False
    return True


def jittor_device(device):
    """Where Jittor runs in a parity run on `device`: there when its CUDA build works, else
    on the CPU (still an independent check against the PyTorch CPU run)."""
    from gfocal.ports import load_port
    from gfocal.device import DeviceError
    try:
        with load_port("jittor").on_device(device):
            return device
    except DeviceError:
        return "cpu"


def subjects(config):
    """The ports under test, each compared with the PyTorch port on the CPU (float32):
    Jittor (where installed) and, given --device D, the PyTorch port on D (with D = cpu the
    same numbers by the same code path as on a GPU: how the GPU check is tried on a CPU)."""
    device = config.getoption("--device")
    found = (["jittor"] if jittor_installed() else []) + ([f"torch@{device}"] if device else [])
    if not found:
        raise pytest.UsageError("parity_tests: Jittor is not installed and --device is cpu: "
                                "there is nothing to compare (give --device cuda)")
    return found


class ParityRuns:
    """Runs every (case, mode) once per subject and once for the reference, the PyTorch port
    in float32 (or in the mixed precision `amp`) on the CPU, plus its float64 run (the live
    noise). Subjects: "jittor" (on `device` when its CUDA build works, else the CPU) and,
    given a `device`, "torch@<device>"."""

    def __init__(self, model_cfg, weights_from_converter=None, device=None, amp="off"):
        self.amp = amp
        from gfocal.ports import load_port
        self.torch = load_port("torch")
        self.cfg = model_cfg
        self.tmodel, self.jmodel, self.state = build_pair(model_cfg)
        self.jittor = load_port("jittor") if self.jmodel is not None else None
        if weights_from_converter is not None and self.jittor is not None:
            self.jittor.checkpoint.load_state_dict_numpy(self.jmodel, weights_from_converter)
        self.tmodel64 = copy.deepcopy(self.tmodel).double()
        self.subjects = {}  # name -> (port, model, device)
        if self.jittor is not None:
            self.subjects["jittor"] = (self.jittor, self.jmodel, jittor_device(device or "cpu"))
        if device is not None:
            with self.torch.on_device(device):
                self.subjects[f"torch@{device}"] = (
                    self.torch, copy.deepcopy(self.tmodel).to(device), device)
        self.batches, self._runs = {}, {}
        self.float64_error = None

    def batch(self, case):
        if case not in self.batches:
            self.batches[case] = make_case(case)
        return self.batches[case]

    def get(self, case, mode):
        key = (case, mode)
        if key not in self._runs:
            batch = self.batch(case)
            grads = mode == "train"
            # train first: its float64 reference serves both modes (they compute the same
            # numbers: BN frozen, GN per sample)
            train = None if grads else self.get(case, "train")
            run = {"torch": run_loss(self.torch, self.tmodel, batch, mode, grads, amp=self.amp)}
            for name, (port, model, device) in self.subjects.items():
                run[name] = run_loss(port, model, batch, mode, grads, device, amp=self.amp)
            if grads:
                run["float64"], run["noise"] = self.float64_reference(batch, run["torch"])
                run["kinks"] = {name: self.kink_resolved(batch, run, name)
                                for name in self.subjects}
                for part in run.values():  # every ReLU input is kept only as long as needed
                    if isinstance(part, dict):
                        part.pop("relu_inputs", None)
            else:
                run["float64"], run["noise"] = train["float64"], train["noise"]
            self._runs[key] = run
        return self._runs[key]

    def kink_resolved(self, batch, run, subject):
        """Where the subject takes the other side of a ReLU kink than the PyTorch port
        (parity_tests/kinks.py): the rows holding those ReLU inputs to the forward tolerance
        and the PyTorch port's float32 run, with its float64 noise, recomputed on the
        subject's side of each kink; None where there is none."""
        found = kinks.kinks(run["torch"]["relu_inputs"], run[subject]["relu_inputs"])
        if not found:
            return None
        rows = kinks.rows(found, run["torch"]["relu_inputs"], run[subject]["relu_inputs"],
                          run["float64"].get("relu_inputs") or run["torch"]["relu_inputs"])
        masks = kinks.masks(run[subject]["relu_inputs"], found)
        resolved = run_loss(self.torch, self.tmodel, batch, "train", True, relu_masks=masks,
                            amp=self.amp)
        _, noise = self.float64_reference(batch, resolved, masks)
        return {"rows": rows, "torch": resolved, "noise": noise}

    def float64_reference(self, batch, run32, relu_masks=None):
        """The PyTorch port in float64 (train mode, with gradients) and the float32-vs-float64
        noise per probe, loss and gradient."""
        try:
            run64 = run_loss(self.torch, self.tmodel64, as_float64(batch), "train", True,
                             relu_masks=relu_masks)
        except Exception as exc:  # a port that cannot run in float64: forward noise only
            self.float64_error = f"{type(exc).__name__}: {exc}"
            self.tmodel64.train()
            with self.torch.probes.capture() as probes:
                self.tmodel64(self.torch.tensor(batch["imgs"].astype(np.float64)))
            run64 = {"probes": dict(probes), "losses": {}, "grads": {}}
        return run64, judge.noise_of(run32, run64)


@pytest.fixture(scope="session")
def pair_builder():
    """build_pair(model_cfg, seed=0) -> (torch model, jittor model, state); `.ports` holds
    (torch port, jittor port). Skips where Jittor is not installed."""
    if not jittor_installed():
        pytest.skip("Jittor is not installed (a PyTorch-only parity run)")
    from gfocal.ports import load_port

    def build(model_cfg, seed=0):
        return build_pair(model_cfg, seed)
    build.ports = (load_port("torch"), load_port("jittor"))
    return build


@pytest.fixture(scope="session")
def small_cfg():
    return small_config()


@pytest.fixture(scope="session")
def converted_weights(small_cfg, tmp_path_factory):
    """The torch port's initial weights written as a .pth and converted by the converter
    files to a Jittor checkpoint; returns the state dict read back from the .pkl (None
    where Jittor is not installed)."""
    import torch

    if not jittor_installed():
        return None

    from gfocal.ports import load_port
    from gfocal.checkpoint_io import read, write
    from weights_converter.convert import convert
    tp, jp = load_port("torch"), load_port("jittor")
    torch.manual_seed(0)
    state = tp.checkpoint.state_dict_numpy(tp.build_detector(small_cfg["model"]))
    folder = tmp_path_factory.mktemp("weights")
    src, dst = str(folder / "init.pth"), str(folder / "init.pkl")
    write(src, state, "torch")
    convert(src, dst, "torch", "jittor", small_cfg["model"])
    read_back = read(dst, "jittor")
    assert set(read_back) == set(state)
    for name, value in state.items():
        assert np.array_equal(read_back[name], value) and read_back[name].dtype == value.dtype, \
            f"converter changed {name}"
    return read_back


@pytest.fixture(scope="session")
def runs(small_cfg, converted_weights, device_option):
    return ParityRuns(small_cfg["model"], weights_from_converter=converted_weights,
                      device=device_option)


@pytest.fixture
def report_table(request):
    """Append an HTML table to this test's pytest-html entry (a no-op without the plugin)."""
    extras = None
    if request.config.pluginmanager.hasplugin("html"):
        extras = request.getfixturevalue("extras")

    def add(rows, title, mark=None):
        judge.record_rows(rows, title)
        if extras is not None:
            import pytest_html
            extras.append(pytest_html.extras.html(judge.html_table(rows, title, mark)))
    return add


def pytest_sessionfinish(session, exitstatus):
    """GFOCAL_PARITY_SUMMARY=path.json writes every compared row (for TOLERANCES.md);
    GFOCAL_PARITY_VERDICT=path.json every row the verdict table counts."""
    import json
    measured = ledger.of(session.config)
    for variable, data in (("GFOCAL_PARITY_SUMMARY", measured.measured),
                           ("GFOCAL_PARITY_VERDICT", list(measured.verdict.values()))):
        path = os.environ.get(variable)
        if path and data:
            with open(path, "w") as f:
                json.dump(data, f, indent=1)


def pytest_report_header(config):
    device = config.getoption("--device") or "cpu"
    jittor = f"on {jittor_device(device)}" if jittor_installed() else "not installed"
    setting = parity_setting(config)
    tuned = "" if setting == "default" else f"; every port in the {setting} speed setting"
    return (f"parity: reference the PyTorch port on cpu (float32, float64 for the noise); "
            f"subjects: {', '.join(subjects(config))} (Jittor {jittor}){tuned}")


def pytest_terminal_summary(terminalreporter):
    measured = ledger.of(terminalreporter.config)
    if measured.verdict:
        setting = parity_setting(terminalreporter.config)
        terminalreporter.write_sep("=", "parity verdict" + (
            "" if setting == "default" else f" (--tuning {setting}: both ports {setting})"))
        terminalreporter.write_line(judge.verdict_text(measured.verdict.values()))
        terminalreporter.write_line(judge.VERDICT_NOTE)
    if measured.hits:
        terminalreporter.write_sep("=", "parity regime coverage")
        terminalreporter.write_line(regimes.text(measured.hits))


def pytest_html_results_summary(prefix, summary, postfix, session):
    measured = ledger.of(session.config)
    if measured.verdict:
        prefix.append(judge.verdict_html(measured.verdict.values()))
    if measured.hits:
        prefix.append(regimes.html_table(measured.hits))


@pytest.hookimpl(trylast=True)  # after the root conftest has parsed --tuning into a list
def pytest_configure(config):
    selected_cases(config)  # a bad --parity-cases stops the session with one line
    parity_setting(config)
    ledger.install(config)


def parity_setting(config):
    """The speed setting of --tuning (one of default, tuned; default: default)."""
    settings = config.getoption("--tuning") or ["default"]
    if len(settings) != 1:
        raise pytest.UsageError(f"parity_tests: --tuning takes one setting, not "
                                f"{','.join(settings)}")
    return settings[0]


@pytest.fixture(scope="session", autouse=True)
def _speed_setting(request):
    """Both ports in --tuning's speed setting for the whole session (the PyTorch port's
    features those of --device, where given: its CPU reference runs compiled alike)."""
    setting = parity_setting(request.config)
    if setting == "default":
        yield setting
        return
    from gfocal.ports import load_port
    device = request.config.getoption("--device") or "cpu"
    with contextlib.ExitStack() as scope:
        torch_port = load_port("torch")
        scope.enter_context(torch_port.tuning.speed_setting(setting, device))
        if jittor_installed():
            scope.enter_context(load_port("jittor").tuning.speed_setting(setting, "cpu"))
        yield setting


@pytest.fixture(autouse=True)
def _parity_ledger(request):
    """What this test records goes to its own session's ledger."""
    token = ledger.activate(request.config.stash[ledger.KEY])
    yield
    ledger.deactivate(token)
