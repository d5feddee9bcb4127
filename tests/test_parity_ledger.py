"""The parity session's records live on that session's ledger (parity_tests/ledger.py), not
in module globals: what a test records reaches the active ledger only, and recording with no
session active is an error instead of a silent loss."""
import pytest

from parity_tests import judge, ledger, regimes


def a_row(name="neck.p3", rel=1e-6):
    return judge.error_stats(name, [1.0 + rel, 2.0], [1.0, 2.0])


@pytest.fixture
def two_ledgers():
    first, second = ledger.Ledger(), ledger.Ledger()
    token = ledger.activate(first)
    yield first, second
    ledger.deactivate(token)


def test_records_go_to_the_active_ledger_only(two_ledgers):
    first, second = two_ledgers
    judge.record_verdict([a_row()], "case/eval")
    judge.record_rows([a_row()], "case/eval")
    regime = next(iter(regimes.MINIMUM))
    regimes.count(regime, 3)
    token = ledger.activate(second)
    try:
        regimes.count(regime, 4)
        assert list(second.hits.values()) == [4] and not second.verdict and not second.measured
    finally:
        ledger.deactivate(token)
    assert list(first.verdict) == [("jittor", "case/eval", "neck.p3")]
    assert [r["name"] for r in first.measured["case/eval"]] == ["neck.p3"]
    assert first.hits == {regime: 3}


def test_a_tensor_asserted_twice_counts_once(two_ledgers):
    first, _ = two_ledgers
    judge.record_verdict([a_row(rel=1e-6)], "case/eval")
    judge.record_verdict([a_row(rel=2e-6)], "case/eval")
    assert len(first.verdict) == 1


def test_the_regime_check_reads_the_active_ledger(two_ledgers):
    regime, (minimum, _) = next(iter(regimes.MINIMUM.items()))
    regimes.count(regime, minimum - 1)
    with pytest.raises(AssertionError, match=f"{minimum - 1} hits, minimum {minimum}"):
        regimes.check([regime])
    regimes.count(regime, 1)
    regimes.check([regime])


@pytest.mark.parametrize("record", [lambda: judge.record_verdict([a_row()], "c"),
                                    lambda: judge.record_rows([a_row()], "c"),
                                    lambda: regimes.count(next(iter(regimes.MINIMUM)), 1)],
                         ids=["verdict", "rows", "regimes"])
def test_recording_outside_a_session_is_an_error(record):
    with pytest.raises(RuntimeError, match="outside a parity_tests session"):
        record()
