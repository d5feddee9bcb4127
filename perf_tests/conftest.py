"""Performance suite set-up: the R50 paper model of each port with identical weights,
hand-built batches in the shared batch format, and the Jittor/PyTorch ratio summary
(terminal and HTML report). See perf_tests/README.md for the workflow."""
import pytest

from perf_tests.measure import benchmark_weights, model_config, paired_rows, paired_table_html, \
    paired_table_text, ratio_rows, ratio_table_html, ratio_table_text, setting_rows, \
    setting_table_html, setting_table_text

_ran_perf = pytest.StashKey[bool]()
_saved_runs = pytest.StashKey[int]()  # saved runs pytest-benchmark loaded to compare with
_timed = pytest.StashKey[list]()  # each timed test's record (its benchmark fixture's stats)


class ModelCache:
    """One detector per (framework, device, speed setting), built once per session; weights
    reset per test."""

    def __init__(self):
        self._models = {}
        self._weights = None

    def get(self, port, device):
        """The model of `port` on `device` (the port's current device: it is built there)."""
        key = (port.FRAMEWORK, device, port.tuning.current_setting())
        if key not in self._models:
            self._models[key] = port.build_detector(model_config())
        model = self._models[key]
        if self._weights is None:
            self._weights = benchmark_weights(port.checkpoint.state_dict_numpy(model))
        port.checkpoint.load_state_dict_numpy(model, self._weights, strict=True)
        return model


def pytest_benchmark_compare_machine_info(config):
    """pytest-benchmark calls it (at configure time) once per saved run it loaded to compare
    with: counted, for pytest_sessionstart."""
    config.stash[_saved_runs] = config.stash.get(_saved_runs, 0) + 1


def pytest_sessionstart(session):
    """--benchmark-compare(-fail) with no saved run to compare with: one line and a usage
    error before anything runs (pytest-benchmark only warns, or fails, after the whole timed
    suite)."""
    config = session.config
    compare = config.getoption("benchmark_compare")
    if not (compare or config.getoption("benchmark_compare_fail")):
        return
    if config.stash.get(_saved_runs, 0):
        return
    if not compare:
        raise pytest.UsageError("--benchmark-compare-fail needs --benchmark-compare (a saved "
                                "run to compare with)")
    which = "" if compare is True else f" matching {compare!r}"
    raise pytest.UsageError(
        f"--benchmark-compare: no saved run{which} in {config.getoption('benchmark_storage')}: "
        "nothing to compare with (save one first: --benchmark-autosave or "
        "--benchmark-save=NAME)")


@pytest.fixture(scope="session")
def model_cache():
    return ModelCache()


@pytest.fixture(autouse=True)
def _mark_perf_session(request):
    """Notes that this suite ran and, after a timed test, its record for the summary tables
    (the same object pytest-benchmark keeps: its fixture's `stats`)."""
    request.config.stash[_ran_perf] = True
    yield
    fixture = request.node.funcargs.get("benchmark")  # a timed test's, after it ran
    if getattr(fixture, "stats", None) is not None:  # None: disabled, or never called
        request.config.stash.setdefault(_timed, []).append(fixture.stats)


def _benchmarks(config):
    return config.stash.get(_timed, [])


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    if not config.stash.get(_ran_perf, False):
        return
    terminalreporter.write_sep("-", "Jittor / PyTorch time ratio (Jittor time / PyTorch time)")
    benchmarks = _benchmarks(config)
    terminalreporter.write_line(ratio_table_text(ratio_rows(benchmarks)))
    paired = paired_rows(benchmarks)
    if paired:
        terminalreporter.write_line("")
        terminalreporter.write_line(paired_table_text(paired))
    settings = setting_rows(benchmarks)
    if settings:
        terminalreporter.write_line("")
        terminalreporter.write_line(setting_table_text(settings))


def pytest_html_results_summary(prefix, summary, postfix, session):
    if session.config.stash.get(_ran_perf, False):
        benchmarks = _benchmarks(session.config)
        postfix.append(ratio_table_html(ratio_rows(benchmarks)))
        paired = paired_rows(benchmarks)
        if paired:
            postfix.append(paired_table_html(paired))
        settings = setting_rows(benchmarks)
        if settings:
            postfix.append(setting_table_html(settings))
