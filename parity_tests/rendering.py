"""How the parity suite shows what parity_tests/judge.py decided: the per-probe table of a
comparison (text for the terminal, HTML for the report), the failure message naming the
first divergent probe, the run's verdict tables and the tolerance summary of TOLERANCES.md.
Nothing here decides a pass or a fail.
"""
import html
import math

import numpy as np

from gfocal.tables import html_table as render_html_table, markdown_table, text_table


def _fmt(x):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return f"{x:.2e}"


def _row_cells(row):
    status = "ok" if row.ok else "FAIL"
    if row.exact:
        err = f"{row.mismatches} differ"
        tol = "exact"
    else:
        err = _fmt(row.rel)
        tol = _fmt(row.tolerance)
    return [row.name, "x".join(map(str, row.shape)) or "scalar", err, _fmt(1.0 - row.cosine),
            _fmt(row.noise), tol, status, row.note]


HEADER = ["probe", "shape", "max rel err", "1 - cosine", "f32-vs-f64 noise", "tolerance",
          "status", "note"]


def format_table(rows, mark=None):
    """Plain-text table of every probe; the row at index `mark` is flagged with '>>'."""
    # the gutter is there even without a mark, so that tables with and without one align
    return text_table(HEADER, [_row_cells(r) for r in rows],
                      marks=() if mark is None else (mark,))


TABLE_ATTRS = " border='1' style='border-collapse:collapse;font-family:monospace'"


def html_table(rows, title, mark=None):
    """The same table for the pytest-html report."""
    styles = [" style='background:#f88;font-weight:bold'" if i == mark
              else "" if row.ok else " style='background:#fcc'" for i, row in enumerate(rows)]
    return (f"<h4>{html.escape(title)}</h4>\n"
            + render_html_table(HEADER, [_row_cells(r) for r in rows], attrs=TABLE_ATTRS,
                                row_attrs=styles, sep="\n"))


def divergence_message(rows, context, idx):
    """The failure text: which probe diverged first (row `idx`, None where none did), and
    every probe's statistics."""
    if idx is None:
        return f"{context}: all {len(rows)} probes within tolerance"
    first = rows[idx]
    failing = sum(not r.ok for r in rows)
    what = (f"{first.mismatches} elements differ" if first.exact
            else f"max rel err {_fmt(first.rel)} > tolerance {_fmt(first.tolerance)}")
    return (f"{context}: first divergent probe (forward order) is '{first.name}' "
            f"({what}{'; ' + first.note if first.note else ''}); "
            f"{failing} of {len(rows)} probes fail.\n" + format_table(rows, mark=idx))


VERDICT_HEADER = ["check", "tensors", "exact (elements differing)", "max err", "median err",
                  "tolerance in force", "failed", "verdict"]


def _verdict_cells(line):
    if not line["tensors"]:
        return [line["check"], "0", "-", "-", "-", "-", "-", line["verdict"]]
    if line["tol_min"] is None:
        tol = "exact"
    elif line["tol_min"] == line["tol_max"]:
        tol = _fmt(line["tol_min"])
    else:
        tol = f"{_fmt(line['tol_min'])} .. {_fmt(line['tol_max'])}"
    exact = f"{line['exact']} ({line['differing']})" if line["exact"] else "0"
    worst = "inf" if line["nonfinite"] else (_fmt(line["max"]) if line["max"] is not None
                                             else "-")
    median = _fmt(line["median"]) if line["median"] is not None else "-"
    return [line["check"], str(line["tensors"]), exact, worst, median, tol,
            str(line["failed"]), line["verdict"]]


REFERENCE = "the PyTorch port on the CPU"


def subject_title(subject, reference="torch"):
    """jittor, torch@cuda: against float32; jittor/bf16: both in that mixed precision;
    jittor/tuned: the port's tuned inference against its default (parity_tests/test_tuned.py)."""
    against = REFERENCE if reference == "torch" else reference
    port, _, amp = subject.partition("/")
    if amp == "tuned":
        return f"{port} tuned against the {port} port in its default setting (float32)"
    if amp:
        return f"{port} in {amp} against {against} in {amp}"
    return f"{subject} against {against} (float32)"


def _verdict_table_text(lines):
    return text_table(VERDICT_HEADER, [_verdict_cells(line) for line in lines])


def verdict_text(tables, reference="torch", titled=False):
    """The verdict table(s) of judge.verdict_tables() as text: one, untitled, for Jittor
    alone against the PyTorch port (unless `titled`); else one per subject, titled."""
    if list(tables) == ["jittor"] and reference == "torch" and not titled:
        return _verdict_table_text(tables["jittor"])
    return "\n\n".join(f"{subject_title(s, reference)}:\n{_verdict_table_text(lines)}"
                        for s, lines in tables.items())


VERDICT_NOTE = ("Errors are relative (max |subject - reference| / max |reference| per tensor; "
                "COCO statistics: absolute difference). Tolerances: parity_tests/TOLERANCES.md. "
                "\"not offered\": a check the subject does not offer (docs/SUBJECTS.md). "
                "\"noted\": anchors (elements differing) a subject assigns differently at ATSS "
                "ties, the reference taking its side (parity_tests/ties.py).")


def verdict_html(tables, reference="torch"):
    """The verdict table(s) of judge.verdict_tables(): id parity-verdict for Jittor,
    parity-verdict-<subject> else."""
    colour = {"PASS": "#cfc", "FAIL": "#f88", "not run": "#eee", "not offered": "#ffd",
              "noted": "#ffd"}
    out = ["<h2>Parity verdict</h2>"]
    for subject, lines in tables.items():
        suffix = "" if subject == "jittor" else "-" + "".join(
            c if c.isalnum() else "-" for c in subject)
        out += [f"<h3>{html.escape(subject_title(subject, reference))}</h3>",
                render_html_table(VERDICT_HEADER, [_verdict_cells(line) for line in lines],
                                  attrs=f" id='parity-verdict{suffix}'{TABLE_ATTRS}",
                                  row_attrs=[f" style='background:{colour[line['verdict']]}'"
                                             for line in lines], sep="\n")]
    out.append(f"<p>{html.escape(VERDICT_NOTE)}</p>")
    return "\n".join(out)


def family(name):
    """A probe's family for the summary: `head.cls_tower.3` -> `head.cls_tower`."""
    parts = name.split(".")
    if parts[0] in ("grad", "delta", "momentum"):
        return parts[0]
    if parts[-1].isdigit():
        parts = parts[:-1]
    if parts[0] == "backbone" and parts[1].startswith("layer"):
        return "backbone.layer1-4"
    if parts[0] == "neck" and parts[1].startswith("p"):
        return "neck.p3-p7"
    return ".".join(parts)


def summary_markdown(measured):
    """Markdown table: per context kind and probe family, max / median error and noise."""
    groups = {}
    for context, rows in measured.items():
        if "every probe" in context:
            scope = "R18 cases x modes"
        elif context.startswith("R50"):
            scope = "R50 forward"
        elif "gradients" in context:
            scope = "gradients"
        elif "SGD" in context:
            scope = context
        else:
            continue
        for row in rows:
            if row["exact"] or row["rel"] is None:
                continue
            groups.setdefault((scope, family(row["name"])), []).append(row)
    head = ["scope", "probe family", "n", "max rel err", "median rel err",
            "max f32-vs-f64 noise", "min tolerance", "max tolerance"]
    body = []
    for (scope, fam), rows in groups.items():
        rel = [r["rel"] for r in rows]
        noise = [r["noise"] for r in rows if r["noise"] is not None]
        tol = [r["tolerance"] for r in rows]
        body.append([scope, fam, len(rows), f"{max(rel):.1e}", f"{float(np.median(rel)):.1e}",
                     f"{(max(noise) if noise else float('nan')):.1e}", f"{min(tol):.0e}",
                     f"{max(tol):.0e}"])
    return markdown_table(head, body)


if __name__ == "__main__":  # python -m parity_tests.rendering summary.json
    import json
    import sys
    if len(sys.argv) != 2:
        sys.exit("usage: python -m parity_tests.rendering LEDGER.json (a parity run's "
                 "measured rows, see parity_tests/TOLERANCES.md)")
    with open(sys.argv[1]) as f:
        print(summary_markdown(json.load(f)))
