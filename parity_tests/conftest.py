"""Shared set-up of the parity suite: the reference and the subjects under test (built-in
ports or `--subject pkg.module:factory`, parity_tests/subject.py), built from identical
weights, the input cases, and a session cache of every captured run so each probe test only
compares.

Tests ask for the fixtures `subject`, `case`, `mode`, `forward_probe`, `target_probe`,
`loss_probe`; `pytest_generate_tests` below parametrises them, so there is one test function
per kind of check, never a copied test per layer. A check a subject does not offer is skipped
as "not offered" and reads so in its verdict table (`require`).
"""
import contextlib
import importlib
import os

import numpy as np
import pytest

from gfocal.precision import is_native
from parity_tests import judge, ledger, regimes, rendering
from parity_tests.cases import seeded_state, selected_cases, small_config
from parity_tests.port_subject import PortSubject
from parity_tests.runs import ParityRuns
from parity_tests.subject import HEADS, OFFERS, SubjectError, load_subject, offers

SESSION = pytest.StashKey[dict]()


def pytest_generate_tests(metafunc):
    session = parity_session(metafunc.config)
    head = session["head"]
    params = {"case": selected_cases(metafunc.config), "mode": ["eval", "train"],
              "forward_probe": judge.forward_probes(head),
              "target_probe": judge.TARGET_PROBES, "loss_probe": judge.LOSS_PROBES,
              "subject": list(session["subjects"])}
    for name, values in params.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, values)


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


def builtin_subjects(config):
    """{name: factory} of the ports: torch (the default reference, CPU), jittor (where
    installed: on --device when its CUDA build works, else the CPU) and torch@DEVICE."""
    device = config.getoption("--device")
    found = {"torch": lambda: PortSubject("torch")}
    if jittor_installed():
        found["jittor"] = lambda: PortSubject("jittor", jittor_device(device or "cpu"),
                                              port_checks=True)
    if device:
        found[f"torch@{device}"] = lambda: PortSubject("torch", device, name=f"torch@{device}")
    return found


def default_subjects(config):
    """Jittor (where installed) and, given --device D, the PyTorch port on D (with D = cpu
    the same numbers by the same code path as on a GPU: how the GPU check is tried on a CPU)."""
    device = config.getoption("--device")
    found = (["jittor"] if jittor_installed() else []) + ([f"torch@{device}"] if device else [])
    if not found:
        raise pytest.UsageError("parity_tests: Jittor is not installed and --device is cpu: "
                                "there is nothing to compare (give --device cuda or --subject)")
    return found


def session_head(config, subjects):
    """--head, else the head the subjects that are not our ports implement (one), else gfl_v2;
    our ports are set to it."""
    given = config.getoption("--head")
    if given is not None and given not in HEADS:
        raise pytest.UsageError(f"--head {given!r}: choose {', '.join(HEADS)}")
    declared = {s.head for s in subjects if not isinstance(s, PortSubject)}
    if len(declared) > 1:
        raise pytest.UsageError(f"parity_tests: the subjects implement different models "
                                f"({', '.join(sorted(declared))}): judge them in separate runs")
    head = given or (declared.pop() if declared else "gfl_v2")
    for s in subjects:
        if isinstance(s, PortSubject):
            s.head = head
        elif s.head != head:
            raise pytest.UsageError(f"--subject {s.name}: it implements {s.head}, the session "
                                    f"runs {head} (--head)")
    return head


def user_weights(config):
    """(model config, canonical state) of --weights, or None. The model config is the one
    the file records (our training checkpoints and the converter's output do, checked by the
    config schema), else inferred from the weights' shapes (gn_groups then mmdetection's 32)."""
    path = config.getoption("--weights")
    if path is None:
        return None
    from gfocal.checkpoint_io import meta_of, read_any
    from gfocal.config import from_dict
    from gfocal.errors import USER_ERRORS
    from weights_converter.convert import infer_model_cfg
    try:
        _, state, payload = read_any(path)
        recorded = meta_of(payload).get("model")
        if isinstance(recorded, dict):
            return from_dict({"model": recorded}, source=f"{path} (meta model)")["model"], state
        return infer_model_cfg(state), state
    except USER_ERRORS as exc:
        raise pytest.UsageError(f"--weights: {exc}") from None


def parity_session(config):
    """The session's reference, subjects {name: subject} and head, made once; a subject that
    cannot be made stops the session with one line (pytest's usage error, exit 4)."""
    if SESSION in config.stash:
        return config.stash[SESSION]
    builtins = builtin_subjects(config)
    try:
        subjects = [load_subject(spec, builtins)
                    for spec in config.getoption("--subject") or default_subjects(config)]
        reference = load_subject(config.getoption("--reference") or "torch", builtins,
                                 "--reference")
    except SubjectError as exc:
        raise pytest.UsageError(str(exc)) from None
    names = [s.name for s in subjects]
    if len(set(names)) != len(names) or reference.name in names:
        raise pytest.UsageError(f"parity_tests: subject names must differ from each other and "
                                f"from the reference {reference.name!r}: {', '.join(names)}")
    weights = user_weights(config)
    if weights is not None:
        config.option.head = config.getoption("--head") or weights[0].get("head", "gfl_v2")
    head = session_head(config, [reference, *subjects])
    config.stash[SESSION] = {"reference": reference, "head": head, "weights": weights,
                             "subjects": {s.name: s for s in subjects}}
    return config.stash[SESSION]


# ---------------------------------------------------------------- weights, runs, offers
@pytest.fixture(scope="session")
def parity(request):
    """The session's reference, subjects and head (parity_session)."""
    return parity_session(request.config)


@pytest.fixture(scope="session")
def small_cfg(parity):
    """The small model of the default run, in the session's head."""
    return small_config(**({} if parity["head"] == "gfl_v2" else {"head": parity["head"]}))


@pytest.fixture(scope="session")
def converted_weights(small_cfg, tmp_path_factory):
    """The torch port's initial weights written as a .pth and converted by the converter
    files to a Jittor checkpoint; returns the state dict read back from the .pkl (the seeded
    state itself where Jittor is not installed)."""
    state = seeded_state(small_cfg["model"])
    if not jittor_installed():
        return state
    from gfocal.checkpoint_io import read, write
    from weights_converter.convert import convert
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
def runs(parity, small_cfg, request):
    """Every subject and the reference, from --weights or the converted initial weights."""
    if parity["weights"] is not None:
        model_cfg, state = parity["weights"]
    else:
        model_cfg, state = small_cfg["model"], request.getfixturevalue("converted_weights")
    try:
        return ParityRuns(model_cfg, state, parity["reference"], parity["subjects"])
    except SubjectError as exc:  # e.g. a key map that leaves weights unassigned: one line
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def require(parity):
    """require(subject, what, check): skip as "not offered" (and say so in the subject's
    verdict table, line `check` of judge.CHECKS) unless the subject offers `what`."""
    def check_offer(subject, what, check=None):
        if not offers(parity["subjects"][subject], what):
            judge.record_not_offered(subject, check or judge.CHECK_OF_OFFER.get(what, what))
            pytest.skip(f"not offered: {subject} does not offer {what!r} "
                        f"({OFFERS.get(what, what)})")
    return check_offer


@pytest.fixture(scope="session")
def port_subject(parity, request):
    """The name of the subject whose gfocal port module the function-level checks drive
    (offer "port": our Jittor port); the other subjects' verdicts read "not offered"."""
    not_offered = ledger.of(request.config).not_offered
    for name, subject in parity["subjects"].items():
        if not offers(subject, "port"):
            not_offered.setdefault(name, set()).add(judge.CHECK_OF_OFFER["port"])
    for name, subject in parity["subjects"].items():
        if offers(subject, "port"):
            return name
    pytest.skip("not offered: no subject offers 'port' (the function-level checks drive a "
                "gfocal port module)")


@pytest.fixture(scope="session")
def subject_port(parity, port_subject):
    return parity["subjects"][port_subject].port


@pytest.fixture(scope="session")
def reference_port(parity):
    """The reference's gfocal port module (our PyTorch port unless --reference names another
    port)."""
    port = getattr(parity["reference"], "port", None)
    if port is None:
        pytest.skip(f"not offered: the reference {parity['reference'].name} is not a gfocal port")
    return port


@pytest.fixture(scope="session")
def pair_builder(parity, port_subject, reference_port):
    """build(model_cfg, seed=0) -> (reference model, subject model, state) from the seeded
    weights, for the checks that drive the ports' training functions themselves; `.ports`
    holds (reference port, subject port), `.subject` the subject's name."""
    subject_port = parity["subjects"][port_subject].port

    def build(model_cfg, seed=0):
        state = seeded_state(model_cfg, seed)
        models = []
        for port in (reference_port, subject_port):
            model = port.build_detector(model_cfg)
            port.checkpoint.load_state_dict_numpy(model, state)
            models.append(model)
        return models[0], models[1], state
    build.ports = (reference_port, subject_port)
    build.subject = port_subject
    return build


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
            extras.append(pytest_html.extras.html(rendering.html_table(rows, title, mark)))
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
    session = parity_session(config)
    weights = config.getoption("--weights")
    start = f"weights of {weights}" if weights else "the seeded initialisation"
    return (f"parity: {session['head']} from {start}; reference {session['reference'].name} "
            f"(float32, float64 for the noise); subjects: {', '.join(session['subjects'])} "
            f"(Jittor {jittor}){tuned}")


def pytest_terminal_summary(terminalreporter):
    measured = ledger.of(terminalreporter.config)
    if measured.verdict or measured.not_offered:
        setting = parity_setting(terminalreporter.config)
        terminalreporter.write_sep("=", "parity verdict" + (
            "" if setting == "default" else f" (--tuning {setting}: both ports {setting})"))
        terminalreporter.write_line(rendering.verdict_text(
            judge.verdict_tables(measured.verdict.values(), measured.not_offered),
            parity_session(terminalreporter.config)["reference"].name))
        terminalreporter.write_line(rendering.VERDICT_NOTE)
    if measured.hits:
        terminalreporter.write_sep("=", "parity regime coverage")
        terminalreporter.write_line(regimes.text(measured.hits))


def pytest_html_results_summary(prefix, summary, postfix, session):
    measured = ledger.of(session.config)
    if measured.verdict or measured.not_offered:
        prefix.append(rendering.verdict_html(
            judge.verdict_tables(measured.verdict.values(), measured.not_offered),
            parity_session(session.config)["reference"].name))
    if measured.hits:
        prefix.append(regimes.html_table(measured.hits))


@pytest.hookimpl(trylast=True)  # after the root conftest has parsed --tuning into a list
def pytest_configure(config):
    selected_cases(config)  # a bad --parity-cases stops the session with one line
    parity_setting(config)
    parity_precisions(config)
    parity_session(config)  # so does a subject that cannot be made
    ledger.install(config)


def parity_precisions(config):
    """--amp names policy precisions only: native mixed precision lets each framework pick
    its own types and kernels, so it is judged by accuracy (gfocal compare) and timed
    (perf_tests), never held to the policy's tolerances."""
    native = [a for a in config.getoption("--amp") or () if is_native(a)]
    if native:
        raise pytest.UsageError(f"parity_tests: --amp {','.join(native)}: the parity suite "
                                f"judges the policy (off, bf16, fp16); native mixed precision "
                                f"is judged by gfocal compare --amp and timed by perf_tests")


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
