"""What one parity session measured: the rows its verdict counts, every compared row (for
TOLERANCES.md) and the regime hits, kept on that session's pytest config (`config.stash`).

State on the config, not in module globals, belongs to exactly one pytest session: a second
in-process session (pytester, `pytest.main` twice) starts empty, and each pytest-xdist worker
has its own. Tests record through `active()`, which parity_tests/conftest.py points at the
running session's ledger for the duration of each test; the report hooks read `of(config)`.
"""
import contextvars
from dataclasses import dataclass, field

import pytest


@dataclass
class Ledger:
    verdict: dict = field(default_factory=dict)   # (subject, context, name) -> row dict
    measured: dict = field(default_factory=dict)  # context -> rows as dicts
    hits: dict = field(default_factory=dict)      # regime -> elements counted
    not_offered: dict = field(default_factory=dict)  # subject -> {verdict check: offer}


KEY = pytest.StashKey[Ledger]()
_ACTIVE = contextvars.ContextVar("parity_ledger")


def install(config):
    config.stash[KEY] = Ledger()


def of(config):
    """The session's ledger (empty when parity_tests/conftest.py did not install one)."""
    return config.stash.get(KEY, None) or Ledger()


def active():
    """The ledger of the session whose test is running; recording anywhere else is a bug
    (the rows would silently miss the verdict), so it raises."""
    try:
        return _ACTIVE.get()
    except LookupError:
        raise RuntimeError("parity rows recorded outside a parity_tests session test") from None


def activate(ledger):
    """Point active() at `ledger`; returns the token that deactivate() takes."""
    return _ACTIVE.set(ledger)


def deactivate(token):
    _ACTIVE.reset(token)
