"""gfocal/tables.py: the one text / Markdown / HTML table renderer (stdlib only)."""
import ast
import sys

import pytest

from gfocal import tables

HEAD = ["case", "ms"]
ROWS = [["a", 1.5], ["longer", 10]]


@pytest.mark.parametrize("kwargs, expected", [
    ({}, ["case    ms", "a       1.5", "longer  10"]),
    ({"align": "lr"}, ["case     ms", "a       1.5", "longer   10"]),
    ({"align": "rl", "rule": True},
     ["  case  ms", "----------", "     a  1.5", "longer  10"]),
    ({"marks": ()}, ["   case    ms", "   a       1.5", "   longer  10"]),
    ({"marks": (1,)}, ["   case    ms", "   a       1.5", ">> longer  10"]),
    ({"marks": (0,), "rule": True},
     ["   case    ms", "-------------", ">> a       1.5", "   longer  10"]),
])
def test_text_table_alignment_rule_and_marks(kwargs, expected):
    assert tables.text_table(HEAD, ROWS, **kwargs).splitlines() == expected


def test_text_table_strips_trailing_blanks_of_empty_last_cells():
    text = tables.text_table(["name", "note"], [["x", ""], ["yy", "n"]])
    assert text.splitlines() == ["name  note", "x", "yy    n"]


@pytest.mark.parametrize("render, expected", [
    (tables.text_table, "case  ms"),
    (tables.markdown_table, "| case | ms |\n|---|---|"),
    (tables.html_table, "<table><tr><th>case</th><th>ms</th></tr></table>"),
])
def test_an_empty_body_keeps_the_head(render, expected):
    assert render(HEAD, []) == expected


def test_markdown_table_escapes_pipes_and_newlines():
    text = tables.markdown_table(["a|b", "c"], [["`x | y`", "one\ntwo"], [None, 3]])
    assert text.splitlines() == ["| a\\|b | c |", "|---|---|", "| `x \\| y` | one two |",
                                 "| None | 3 |"]


def test_html_table_escapes_every_cell_and_head():
    text = tables.html_table(["<h>"], [["a & b"], ["'q' \"d\""]])
    assert "<th>&lt;h&gt;</th>" in text and "<td>a &amp; b</td>" in text
    assert "<td>&#x27;q&#x27; &quot;d&quot;</td>" in text


def test_html_table_attributes_per_table_row_and_cell():
    text = tables.html_table(HEAD, ROWS, attrs=" id='t'", row_attrs=["", " class='r'"],
                             cell_attrs=[" style='s'", ""], sep="\n")
    assert text.splitlines() == [
        "<table id='t'>", "<tr><th>case</th><th>ms</th></tr>",
        "<tr><td style='s'>a</td><td style='s'>1.5</td></tr>",
        "<tr class='r'><td>longer</td><td>10</td></tr>", "</table>"]


def test_html_table_sections():
    assert tables.html_table(HEAD, ROWS[:1], sections=True) == (
        "<table><thead><tr><th>case</th><th>ms</th></tr></thead>"
        "<tbody><tr><td>a</td><td>1.5</td></tr></tbody></table>")


@pytest.mark.parametrize("kwargs", [{"row_attrs": [""]}, {"cell_attrs": ["", "", ""]}])
def test_html_table_refuses_attributes_that_do_not_match_the_rows(kwargs):
    with pytest.raises(ValueError):
        tables.html_table(HEAD, ROWS, **kwargs)


def test_tables_imports_the_standard_library_only():
    """scripts/mutants.py imports it in cosmic-ray's environment, which has no numpy."""
    tree = ast.parse(open(tables.__file__).read())
    names = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for a in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom)}
    assert names <= sys.stdlib_module_names, names - sys.stdlib_module_names
