"""The parity verdict table: its arithmetic on hand-made rows, and the table a real small
parity run puts in its HTML report and terminal output, read back and checked against the
rows that run compared."""
import html.parser
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from parity_tests import judge, rendering
from tests.browser import render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(check, rel=None, tol=1e-5, exact=False, mismatches=0):
    ok = mismatches == 0 if exact else (rel is not None and rel <= tol)
    return {"check": check, "rel": rel, "tolerance": 0.0 if exact else tol, "exact": exact,
            "mismatches": mismatches, "ok": ok}


def test_verdict_lines_on_hand_made_rows():
    records = [record("forward probes", 1e-6), record("forward probes", 3e-6),
               record("forward probes", 2e-5, tol=1e-4),
               record("targets and assignment", exact=True),
               record("targets and assignment", exact=True, mismatches=3),
               record("targets and assignment", 4e-7),
               record("gradients", 2e-3, tol=1e-3), record("gradients", None)]
    lines = {line["check"]: line for line in judge.verdict_lines(records)}
    assert list(lines) == list(judge.CHECKS)
    fwd = lines["forward probes"]
    assert (fwd["tensors"], fwd["max"], fwd["median"], fwd["failed"], fwd["verdict"]) == \
        (3, 2e-5, 3e-6, 0, "PASS")
    assert (fwd["tol_min"], fwd["tol_max"]) == (1e-5, 1e-4)
    tgt = lines["targets and assignment"]
    assert (tgt["tensors"], tgt["exact"], tgt["differing"], tgt["failed"], tgt["verdict"]) == \
        (3, 2, 3, 1, "FAIL")
    grad = lines["gradients"]
    assert (grad["nonfinite"], grad["failed"], grad["verdict"]) == (1, 2, "FAIL")
    assert lines["COCO statistics"]["verdict"] == "not run"
    text = rendering.verdict_text(judge.verdict_tables(records))
    assert "2.00e-05" in text and "1.00e-05 .. 1.00e-04" in text and "2 (3)" in text


class Tables(html.parser.HTMLParser):
    """Every <table> of a page (nested ones too) as lists of cell texts, with its id."""

    def __init__(self):
        super().__init__()
        self.tables, self._open, self._row, self._cell = [], [], None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append((dict(attrs).get("id"), []))
            self._open.append(self.tables[-1][1])
        elif tag == "tr" and self._open:
            self._row = []
            self._open[-1].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table" and self._open:
            self._open.pop()
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


# A small selection: forward probes, targets, losses and gradients of one case.
SMALL_RUN = ["parity_tests/test_forward.py::test_first_divergence",
             "parity_tests/test_targets_losses.py::test_target_probe",
             "parity_tests/test_targets_losses.py::test_loss_totals",
             "parity_tests/test_backward_optim.py::test_gradients", "-k", "coco_b1"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("parity_report")
    report, verdict = out / "tests.html", out / "verdict.json"
    env = dict(os.environ, GFOCAL_PARITY_VERDICT=str(verdict))
    run = subprocess.run([sys.executable, "-m", "pytest", *SMALL_RUN, "-p", "no:cacheprovider",
                          f"--html={report}", "--self-contained-html", "-q"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with open(verdict) as f:
        records = json.load(f)
    with open(report, encoding="utf-8") as f:
        page = f.read()
    return {"records": records, "html": page, "path": str(report), "stdout": run.stdout,
            "out": out}


def verdict_table(page):
    parser = Tables()
    parser.feed(page)
    found = [rows for table_id, rows in parser.tables if table_id == "parity-verdict"]
    assert len(found) == 1, "the report has no parity verdict table"
    header, *rows = found[0]
    assert header == rendering.VERDICT_HEADER
    return {row[0]: dict(zip(header, row)) for row in rows}


@pytest.mark.ci  # a parity run in a subprocess
def test_html_report_opens_with_the_verdict_of_the_run(small_run):
    page = small_run["html"]
    # in the summary, above the list of tests
    assert page.index("<table id='parity-verdict'") < page.index('<table id="results-table"')
    table = verdict_table(page)
    records = small_run["records"]
    for check in judge.CHECKS:
        rows = [r for r in records if r["check"] == check]
        line = table[check]
        assert int(line["tensors"]) == len(rows), check
        if not rows:
            assert line["verdict"] == "not run"
            continue
        rels = [r["rel"] for r in rows if not r["exact"]]
        assert line["max err"] == f"{max(rels):.2e}", check
        assert line["median err"] == f"{float(np.median(rels)):.2e}", check
        tols = [r["tolerance"] for r in rows if not r["exact"]]
        assert line["tolerance in force"] in (f"{min(tols):.2e}",
                                              f"{min(tols):.2e} .. {max(tols):.2e}"), check
        assert line["failed"] == "0" and line["verdict"] == "PASS", check
    for check in ("forward probes", "targets and assignment", "losses", "gradients"):
        assert table[check]["verdict"] == "PASS", f"the small run covers {check}"
    # the per-tensor counts add up to what the run compared: one case x two modes of every
    # forward probe, and one gradient per trainable parameter
    assert int(table["forward probes"]["tensors"]) == 2 * len(judge.FORWARD_PROBES)
    assert int(table["gradients"]["tensors"]) > 50


@pytest.mark.ci  # a parity run in a subprocess
def test_terminal_output_ends_with_the_same_table(small_run):
    stdout = small_run["stdout"]
    assert "parity verdict" in stdout
    section = stdout.split("parity verdict", 1)[1]
    tables = judge.verdict_tables(small_run["records"])
    for line in rendering.verdict_text(tables).splitlines():
        assert line in section


@pytest.mark.ci  # a parity run in a subprocess
def test_report_renders_in_a_browser(small_run):
    dom, check = render(small_run["path"], small_run["out"] / "profile")
    assert check["broken"] == [] and check["missing"] == [], check
    table = verdict_table(dom)
    # pytest-html draws one row per test with its scripts: they ran, and drew every test
    passed = int(re.search(r"(\d+) passed", small_run["stdout"]).group(1))
    assert dom.count('<td class="col-testId">') == passed
    # the per-probe tables those scripts unfold hold the worst forward probe of the verdict
    parser = Tables()
    parser.feed(dom)
    forward = [float(row[2]) for _, rows in parser.tables if rows and rows[0][:1] == ["probe"]
               for row in rows[1:] if row[0].startswith(("backbone.", "neck.", "head."))]
    assert forward and f"{max(forward):.2e}" == table["forward probes"]["max err"]


@pytest.mark.ci  # a parity run in a subprocess
def test_verdict_json_matches_the_assertion_counts(small_run):
    """Sanity of the raw rows: none failed, each with a finite error or an exact count."""
    for r in small_run["records"]:
        assert r["ok"] and (r["exact"] or (r["rel"] is not None and math.isfinite(r["rel"])))


REGIME_TEST = "parity_tests/test_targets_losses.py::test_the_cases_reach_their_regimes"


def run_regimes(tmp_path, cases):
    report = tmp_path / "regimes.html"
    args = [sys.executable, "-m", "pytest", REGIME_TEST, "-p", "no:cacheprovider", "-q",
            f"--html={report}", "--self-contained-html"]
    if cases:
        args.append(f"--parity-cases={','.join(cases)}")
    run = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    with open(report, encoding="utf-8") as f:
        parser = Tables()
        parser.feed(f.read())
    tables = [rows for table_id, rows in parser.tables if table_id == "parity-regimes"]
    return run, tables


@pytest.mark.ci  # a parity run in a subprocess
def test_removing_the_case_of_a_regime_fails_the_suite_and_the_report_says_so(tmp_path):
    """Without random_b2_empty no image of a batch lacks boxes: the regime check fails,
    and the coverage table (terminal and HTML summary) marks that regime BELOW."""
    from parity_tests.cases import CASES
    cases = [name for name in CASES if name != "random_b2_empty"]
    run, tables = run_regimes(tmp_path, cases)
    assert run.returncode == 1, run.stdout[-3000:]
    assert "no longer reach: image without boxes in a batch (0 hits, minimum 1)" in run.stdout
    assert "parity regime coverage" in run.stdout
    assert len(tables) == 1
    rows = {row[0]: row for row in tables[0][1:]}
    assert rows["image without boxes in a batch"][1:4] == ["0", "1", "BELOW"]
    assert rows["anchor outside the valid (padded) area"][3] == "ok"
