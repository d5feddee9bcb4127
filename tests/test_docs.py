"""The repository is self-contained: no file cites a document or an issue tracker entry that
a reader of the repository cannot open, and every `docs/MODEL.md section N` exists."""
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = ROOT / "docs" / "MODEL.md"
SELF = pathlib.Path(__file__).resolve()

OUTSIDE_SPEC = re.compile(r"SPEC\.md")
# "issue 17", "issue #6", "issue 7's": a numbered issue; "GitHub issue 666" names its tracker.
NUMBERED_ISSUE = re.compile(r"(?<!GitHub )\bissues? #?\d+", re.IGNORECASE)
SECTION_CITE = re.compile(r"MODEL\.md\)?,? sections? (\d+)")
SECTION_HEADING = re.compile(r"^## (\d+)\. ", re.MULTILINE)


def tracked_text_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = {}
    for name in out.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file() or path.resolve() == SELF:
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        try:
            files[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    # docs/MODEL.md is checked even before it is committed
    if MODEL.is_file():
        files.setdefault("docs/MODEL.md", MODEL.read_text(encoding="utf-8"))
    return files


def hits(pattern):
    found = []
    for name, text in sorted(tracked_text_files().items()):
        for lineno, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                found.append(f"{name}:{lineno}: {line.strip()}")
    return found


def test_no_file_cites_spec_md():
    assert hits(OUTSIDE_SPEC) == [], "cite docs/MODEL.md instead"


def test_no_file_cites_an_issue_by_number():
    assert hits(NUMBERED_ISSUE) == [], "say what the issue asked for, in words"


def test_cited_model_sections_exist():
    sections = set(SECTION_HEADING.findall(MODEL.read_text(encoding="utf-8")))
    assert sections, "docs/MODEL.md has no numbered '## N. ' sections"
    missing = []
    for name, text in sorted(tracked_text_files().items()):
        for number in SECTION_CITE.findall(text.replace("\n", " ").replace("#", " ")):
            if number not in sections:
                missing.append(f"{name}: section {number}")
    assert missing == [], f"docs/MODEL.md has sections {sorted(sections, key=int)}"


@pytest.mark.parametrize("text, bad", [
    ("see issue 17", True), ("issue 7's acceptance", True), ("Issue #6", True),
    ("Jittor's GitHub issue 666", False), ("an issue with ties", False),
])
def test_issue_pattern(text, bad):
    assert bool(NUMBERED_ISSUE.search(text)) is bad
