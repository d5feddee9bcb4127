"""Root test configuration: frameworks set up before import, markers, seeds, report metadata."""
import os
import random
import sys

import numpy as np
import pytest
from hypothesis import settings

from gfocal.ports import PORT_MODULES, load_port
from gfocal.device import cuda_available
from gfocal.runtime import DEFAULT_SEED, configure_frameworks

configure_frameworks()  # Jittor reads its env at import: this must run before any import of it

# Every run draws the same hypothesis examples (a red run can be re-run as it was);
# GFOCAL_HYPOTHESIS=random draws new ones, for a search beyond the fixed examples.
settings.register_profile("reproducible", derandomize=True)
settings.register_profile("random", derandomize=False)
settings.load_profile(os.environ.get("GFOCAL_HYPOTHESIS", "reproducible"))
ENVIRONMENT = pytest.StashKey[dict]()  # describe_environment() of this run, taken once


def pytest_addoption(parser):
    parser.addoption("--device", default=None,
                     help="parity_tests: where the PyTorch port runs in float32 (default cpu; "
                          "the float64 reference stays on the CPU). perf_tests: which cases run "
                          "(cpu: the CPU cases, cuda or cuda:N: the GPU cases on it; default: "
                          "both, the GPU ones where a GPU is present). auto | cpu | cuda | cuda:N")


    parser.addoption("--amp", default=None,
                     help="parity_tests: the half precisions of the mixed-precision cases "
                          "(comma-separated, of bf16, fp16; default both). perf_tests: the "
                          "precisions timed (of off, bf16, fp16; default off)")
    parser.addoption("--tuning", default=None,
                     help="parity_tests: the speed setting of the ports under test (default or "
                          "tuned; default: default). perf_tests: the settings timed "
                          "(comma-separated, of default, tuned; default: default)")
    parser.addoption("--subject", action="append", default=None,
                     help="parity_tests: an implementation to judge, repeatable: a built-in "
                          "name (torch, jittor, torch@DEVICE) or pkg.module:factory "
                          "(docs/SUBJECTS.md); default: jittor (and torch@DEVICE with --device)")
    parser.addoption("--reference", default=None,
                     help="parity_tests: what the subjects are judged against (a --subject "
                          "form that runs in float64; default torch: our PyTorch port, CPU)")
    parser.addoption("--weights", default=None,
                     help="parity_tests: start every subject from this checkpoint (any format "
                          "the converter reads) instead of the built-in initialisation")
    parser.addoption("--head", default=None,
                     help="parity_tests: the model, gfl_v2 or gfl_v1 (default: the one the "
                          "subjects implement, else gfl_v2)")
    parser.addoption("--parity-cases", default=None,
                     help="parity_tests: run only these input cases (comma-separated names of "
                          "parity_tests/conftest.py's CASES)")


def pytest_configure(config):
    from gfocal.device import DeviceError, resolve_device
    spec = config.getoption("--device")
    try:  # resolved once, here; a device this machine lacks stops with one line
        config.option.device = None if spec is None else resolve_device(spec)
    except DeviceError as exc:
        raise pytest.UsageError(f"--device: {exc}") from None
    from gfocal.precision import PrecisionError, amp_list
    amps = config.getoption("--amp")
    try:  # a list, or None where not given (each suite has its default)
        config.option.amp = None if amps is None else amp_list(amps)
    except PrecisionError as exc:
        raise pytest.UsageError(str(exc)) from None
    from gfocal.tuning import TuningError, setting_list
    settings = config.getoption("--tuning")
    try:  # a list, or None where not given
        config.option.tuning = None if settings is None else setting_list(settings)
    except TuningError as exc:
        raise pytest.UsageError(str(exc)) from None
    from gfocal.runtime import describe_environment
    env = config.stash[ENVIRONMENT] = describe_environment()  # once: it imports both frameworks
    if config.pluginmanager.hasplugin("metadata"):
        from pytest_metadata.plugin import metadata_key
        meta = config.stash[metadata_key]
        for key, value in env.items():
            meta[key] = str(value)
        if jittor_without_onednn(env):
            meta["WARNING"] = "Jittor runs WITHOUT oneDNN: CPU convolutions ~60x slower"


def jittor_without_onednn(env):
    """Jittor installed but on its slow fallback convolution (no warning where it is absent,
    as on the GPU machine's PyTorch-only check)."""
    return env.get("jittor", "not installed") != "not installed" and not env.get("jittor_onednn")


def pytest_report_header(config):
    env = config.stash[ENVIRONMENT]
    onednn = (" (oneDNN OFF (slow fallback!))" if jittor_without_onednn(env)
              else " (oneDNN on)" if env.get("jittor_onednn") else "")
    return (f"gfocal: torch {env.get('torch')}, jittor {env.get('jittor')}{onednn}, "
            f"numpy {env['numpy']}, threads {env['omp_threads']}, gpu {env.get('gpu', 'none')}")


def pytest_html_results_summary(prefix, summary, postfix, session):
    if jittor_without_onednn(session.config.stash[ENVIRONMENT]):
        prefix.append("<p style='color:#b00;font-weight:bold'>WARNING: Jittor ran without "
                      "oneDNN; its CPU timings use the ~60x slower fallback convolution.</p>")


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu"):  # the marker, not a parameter id "gpu"
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Same seeds before every test, in every framework already imported."""
    random.seed(DEFAULT_SEED)
    np.random.seed(DEFAULT_SEED)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(DEFAULT_SEED)
    if "jittor" in sys.modules:
        sys.modules["jittor"].set_global_seed(DEFAULT_SEED)
    yield


@pytest.fixture(autouse=True)
def _float32_after_each_test():
    """A test that sets a port's precision (gfocal/precision.py) leaves it at off."""
    yield
    for module in PORT_MODULES.values():
        precision = sys.modules.get(f"{module}.precision")
        if precision is not None and precision.current_precision() != "off":
            precision.use_precision("off")


@pytest.fixture(scope="session")
def device_option(request):
    """--device resolved (cpu, cuda, cuda:N), or None when not given."""
    return request.config.getoption("--device")


def installed_port(framework):
    """The port, or a skip where its framework is not installed (a GPU machine's check
    carries no Jittor)."""
    try:
        return load_port(framework)
    except ImportError as exc:  # not importorskip: it lets a broken install error out
        pytest.skip(f"{framework} is not installed ({exc})")


@pytest.fixture(params=sorted(PORT_MODULES), ids=lambda name: name)
def port(request):
    """Runs a test once per port: `port.gfl_head.GFLHead`, `port.tensor(arr)`, ..."""
    return installed_port(request.param)


@pytest.fixture(scope="session")
def torch_port():
    return installed_port("torch")


@pytest.fixture(scope="session")
def jittor_port():
    return installed_port("jittor")
