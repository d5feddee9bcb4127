"""README.md and the documents it leads to hold no dead ends: every relative link (and its
`#anchor`) points to an existing file and heading, and every command they show exists, with
every option they give it: make targets in the Makefile, `gfocal ...` / `gfocal-convert` /
`gfocal-subset` options in the command's own `--help`, pytest options in `pytest --help`,
scripts on disk (a Python argparse script's options in its `--help`, a shell script's in its
text). The checking functions take the text, so the tests below also show each one failing
on a broken copy."""
import functools
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# documents whose links are checked; those whose commands are checked too
LINKED_DOCS = [README, *sorted((ROOT / "docs").glob("*.md")),
               ROOT / "parity_tests" / "mutation" / "README.md"]
COMMAND_DOCS = [README] + [ROOT / "docs" / f"{name}.md" for name in
                           ("SETUP", "RUNNING", "CHECKPOINTS", "GPU", "DISTRIBUTED")]
HELP_TIMEOUT_S = 120  # `pytest --help` imports the root conftest (the frameworks' set-up)

LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.M)
CODE_SPAN = re.compile(r"`([^`]+?)`")  # may wrap onto the next line
INDENTED_CODE = re.compile(r"^(?: {4}|\t)(.+)$", re.M)
# where a command starts inside a code snippet; group 1 is the program (a script: its path)
COMMAND = re.compile(r"(?<![\w/.-])(?:\.venv/bin/)?(?:python3? -m )?"
                     r"(gfocal-convert|gfocal-subset|gfocal|pytest|make"
                     r"|(?:python3? |bash )scripts/[\w.-]+)(?![\w/.-])")
OPTION = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")
# an option a --help defines: at the start of a help line, after an optional short form
DEFINED_OPTION = re.compile(r"^\s*(?:-\w[^,\n]*,\s*)?(--[a-z][\w-]*)", re.M)


# -- links ----------------------------------------------------------------------------------

def heading_anchor(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text):
    """Every heading's anchor; a repeated heading gets GitHub's -1, -2, ... suffix."""
    seen, found = {}, set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        anchor = heading_anchor(heading)
        found.add(anchor if anchor not in seen else f"{anchor}-{seen[anchor]}")
        seen[anchor] = seen.get(anchor, 0) + 1
    return found


def broken_links(text, base):
    """'target: why' for every relative link of `text` (a document in folder `base`) that
    names a missing file or a heading its Markdown target lacks."""
    broken = []
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto: lead outside the repository
        path, _, anchor = target.partition("#")
        file = (base / path).resolve() if path else None
        if file is not None and not file.exists():
            broken.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor:
            linked = text if file is None else file.read_text(encoding="utf-8")
            if anchor not in anchors(linked):
                broken.append(f"{target}: no heading with anchor #{anchor}")
    return broken


# -- commands -------------------------------------------------------------------------------

def code_snippets(text):
    """Inline code spans and the lines of code blocks (trailing `# comments` cut)."""
    blocks = FENCE.findall(text)
    prose = FENCE.sub("", text)
    lines = [line for block in blocks for line in block.splitlines()[1:-1]]
    lines += INDENTED_CODE.findall(prose)
    spans = CODE_SPAN.findall(INDENTED_CODE.sub("", prose))
    return [re.sub(r"\s+#.*$", "", snippet) for snippet in lines + spans]


def command_claims(snippet):
    """[(command, options)] the snippet shows: command is ('make', target),
    ('gfocal', subcommand), (console script,), ('pytest',) or ('script', path[, subcommand])."""
    claims = []
    starts = list(COMMAND.finditer(snippet))
    for start, following in zip(starts, starts[1:] + [None]):
        rest = snippet[start.end():following.start() if following else None]
        program, words = start.group(1), rest.split()
        if program == "make":
            if words and re.fullmatch(r"[a-z][\w-]*", words[0]):
                claims.append((("make", words[0]), []))  # its MUTANTS_ARGS='...' are a script's
            continue
        options = OPTION.findall(rest)
        if program == "gfocal":
            # `gfocal WORD` names a subcommand, which must exist; `gfocal ...` names none
            if words and re.fullmatch(r"[a-z][\w-]*", words[0]):
                claims.append((("gfocal", words[0]), options))
        elif program.startswith(("python", "bash")):
            # a bare word after the script may name its subcommand (script_problems decides)
            sub = words[:1] if words and re.fullmatch(r"[a-z][\w-]*", words[0]) else []
            claims.append((("script", program.split()[1], *sub), options))
        else:
            claims.append(((program,), options))
    return claims


def options_table_claims(text):
    """[(command, [option])] of the options table (header `| option | on | ...`): each row's
    option, on each command its 'on' cell names (`gfocal train`, `test`; `pytest ...`)."""
    table = re.search(r"^\| option \| on \|.*\n\|[- |]+\n((?:\|.*\n?)+)", text, re.M)
    if not table:
        return []
    claims = []
    for row in table.group(1).splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]]
        option = OPTION.search(cells[0]).group(1)
        for group in cells[1].split(";"):
            spans = CODE_SPAN.findall(group)
            program = spans[0].split()[0] if spans else None
            for span in spans:
                words = span.split()
                sub = words[-1] if program == "gfocal" else None
                claims.append((("gfocal", sub) if sub else (program,), [option]))
    return claims


@functools.cache
def console_scripts():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


@functools.cache
def help_text(command):
    """The --help output of a command (run once per command and test session)."""
    if command[0] == "pytest":
        argv = [sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"]
    elif command[0] == "script":
        argv = [sys.executable, str(ROOT / command[1]), *command[2:], "--help"]
    else:
        module, func = console_scripts()[command[0]].split(":")
        argv = [sys.executable, "-c", f"import sys; from {module} import {func}; "
                f"sys.argv[0] = {command[0]!r}; sys.exit({func}())", *command[1:], "--help"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                          timeout=HELP_TIMEOUT_S)
    return done.returncode, done.stdout + done.stderr


@functools.cache
def make_targets():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][\w-]*):(?!=)", makefile, re.M))


def unknown_commands(text):
    """'command: why' for every command (or option of one) the text shows that does not
    exist."""
    claims = [claim for snippet in code_snippets(text) for claim in command_claims(snippet)]
    problems = []
    for command, options in claims + options_table_claims(text):
        name = " ".join(command)
        if command[0] == "make":
            if command[1] not in make_targets():
                problems.append(f"make {command[1]}: no such Makefile target")
            continue
        if command[0] == "script":
            problems += script_problems(command, options)
            continue
        status, text_ = help_text(command)
        if status != 0:
            problems.append(f"{name}: `--help` exits {status}")
            continue
        defined = set(DEFINED_OPTION.findall(text_))
        problems += [f"{name}: no option {option}" for option in options
                     if option not in defined]
    return sorted(set(problems))


def script_problems(command, options):
    path = ROOT / command[1]
    if not path.is_file():
        return [f"{command[1]}: no such script"]
    source = path.read_text(encoding="utf-8")
    if "add_subparsers" not in source:
        command = command[:2]  # no subcommands: the word is an argument
    if path.suffix == ".py" and "argparse" in source:
        status, text = help_text(command)
        if status != 0:
            return [f"{command[1]}: `--help` exits {status}"]
        defined = set(DEFINED_OPTION.findall(text))
    else:  # a shell script (or one without argparse): its options are spelled in its text
        defined = set(OPTION.findall(source))
    return [f"{command[1]}: no option {option}" for option in options if option not in defined]


# -- the documents as they are ----------------------------------------------------------------

@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(doc):
    assert broken_links(doc.read_text(encoding="utf-8"), doc.parent) == []


@pytest.mark.parametrize("doc", COMMAND_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_exist(doc):
    assert unknown_commands(doc.read_text(encoding="utf-8")) == []


def test_readme_shows_the_commands_users_run():
    """The commands and options a newcomer needs are in README itself, not only behind links."""
    text = README.read_text(encoding="utf-8")
    claims = {command for snippet in code_snippets(text)
              for command, _ in command_claims(snippet)}
    for target in ("setup", "test", "compare", "parity", "perf"):
        assert ("make", target) in claims
    assert "--benchmark-compare" in text
    table = {option for _, options in options_table_claims(text) for option in options}
    assert {"--seed", "--amp", "--tuning", "--device", "--launcher", "--subject"} <= table


def test_readme_stays_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 140, f"README.md has {lines} lines; put the depth in docs/"


# -- the checks catch what they guard ---------------------------------------------------------

@pytest.mark.parametrize("text, problem", [
    ("see [setup](docs/NO_SUCH.md)", "no file"),
    ("see [seeds](docs/RUNNING.md#no-such-heading)", "no heading"),
    ("## Here\nsee [above](#not-here)", "no heading"),
])
def test_broken_links_are_found(text, problem):
    found = broken_links(text, ROOT)
    assert len(found) == 1 and problem in found[0]


@pytest.mark.parametrize("text", [
    "## Here\nsee [above](#here), [seeds](docs/RUNNING.md#seeds), [web](https://example.org)",
])
def test_good_links_pass(text):
    assert broken_links(text, ROOT) == []


@pytest.mark.parametrize("text, problem", [
    ("run `make no-such-target`", "make no-such-target: no such Makefile target"),
    ("run `gfocal train CONFIG --framework torch --no-such-option`",
     "gfocal train: no option --no-such-option"),
    ("run `gfocal frobnicate`", "gfocal frobnicate: `--help` exits 2"),
    ("    .venv/bin/gfocal-convert A B --from mmdet --into jittor   # a comment --ignored",
     "gfocal-convert: no option --into"),
    ("run `pytest parity_tests --no-such-pytest-option`", "pytest: no option --no-such-pytest-option"),
    ("run `python scripts/no_such.py`", "scripts/no_such.py: no such script"),
    ("run `python scripts/verdict_power.py --no-such`", "scripts/verdict_power.py: no option --no-such"),
    ("run `bash scripts/setup.sh --no-such`", "scripts/setup.sh: no option --no-such"),
    ("| option | on | what |\n| --- | --- | --- |\n| `--seed N` | `gfocal train`, `test` | x |\n",
     "gfocal test: no option --seed"),
])
def test_unknown_commands_are_found(text, problem):
    assert unknown_commands(text) == [problem]


def test_known_commands_pass():
    text = ("`make test`, `gfocal compare --seeds 2 --data-root D`, `pytest perf_tests "
            "--benchmark-compare`, `python scripts/verdict_power.py --epochs 2`, "
            "`bash scripts/setup.sh --env-path`, `gfocal-subset --num-images 3`")
    assert unknown_commands(text) == []


def test_anchor_follows_github():
    assert heading_anchor("13. Mixed precision (`train.amp`, `--amp`)") == \
        "13-mixed-precision-trainamp---amp"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}
