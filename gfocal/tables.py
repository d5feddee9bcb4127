"""Tables as plain text, Markdown and HTML: one renderer for the reports and scripts.

Standard library only: scripts/mutants.py imports it in cosmic-ray's environment, which has
no numpy. Cells may be anything; each is rendered with str().
"""
import html


def text_table(head, rows, align=None, rule=False, marks=None):
    """Columns padded to their widest cell, two spaces apart, trailing blanks stripped.

    align: one letter per column, "l" (default) or "r"; rule: a dashed line under the head;
    marks: body-row indices flagged with ">> " in a gutter that every line then gets (None:
    no gutter).
    """
    lines = [[str(c) for c in line] for line in [head, *rows]]
    align = align or "l" * len(head)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for i, line in enumerate(lines):
        text = "  ".join(c.rjust(w) if a == "r" else c.ljust(w)
                         for c, w, a in zip(line, widths, align, strict=True))
        if marks is not None:
            text = (">> " if i - 1 in marks else "   ") + text
        out.append(text.rstrip())
    if rule:
        out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def _md_cell(value):
    # A "|" would end the cell and a newline the row; GFM reads "\|" as "|", even in code.
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(head, rows):
    """A GitHub-flavoured Markdown table."""
    lines = [head, *rows]
    out = ["| " + " | ".join(_md_cell(c) for c in line) + " |" for line in lines]
    out.insert(1, "|" + "---|" * len(head))
    return "\n".join(out)


def html_table(head, rows, attrs="", row_attrs=None, cell_attrs=None, sep="", sections=False):
    """An HTML <table>; every cell escaped here, so callers pass plain text.

    attrs: the <table> tag's attributes (" id='x' border='1'"); row_attrs / cell_attrs: per
    body row, the attributes of its <tr> / of each of its <td>; sep: between the rows (and
    the <table> tags); sections: the head in <thead>, the body in <tbody>.
    """
    rows = list(rows)
    row_attrs = row_attrs or [""] * len(rows)
    cell_attrs = cell_attrs or [""] * len(rows)
    top = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>"
    body = [f"<tr{tr}>" + "".join(f"<td{td}>{html.escape(str(c))}</td>" for c in row) + "</tr>"
            for row, tr, td in zip(rows, row_attrs, cell_attrs, strict=True)]
    if sections:
        top, body = f"<thead>{top}</thead>", [f"<tbody>{sep.join(body)}</tbody>"]
    return sep.join([f"<table{attrs}>", top, *body, "</table>"])
