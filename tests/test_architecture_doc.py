"""docs/ARCHITECTURE.md agrees with the tree: its layout lists every module (and only existing
ones), its port table lists every port file once, and every class, function, method or path it
names exists. Import-free (files read with `ast`), so it is fast and needs no framework.

What the layout must enumerate, file by file: the Python modules of gfocal/ (the port packages
are the port table's), parity_tests/, perf_tests/, weights_converter/, configs/, fixtures/
and the repository root, and every script (.py, .sh) of scripts/. tests/ and docs/ appear as
directories only: a test file's name says what it tests. A listed file of any kind must exist.
"""
import ast
import fnmatch
import functools
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = "docs/ARCHITECTURE.md"
PORT_DIRS = ("gfocal/pytorch/", "gfocal/jittor/")
# (directory, file pattern) pairs whose files the layout must list one by one; "" is the root
ENUMERATED = [("gfocal/", "*.py"), ("parity_tests/", "*.py"), ("perf_tests/", "*.py"),
              ("weights_converter/", "*.py"), ("configs/", "*.py"), ("fixtures/", "*.py"),
              ("scripts/", "*.py"), ("scripts/", "*.sh"), ("", "*.py")]
DESCRIPTION_COLUMN = 10  # a layout line indented this far or more continues a description
ONLY_IN = {"Jittor only": "jittor", "PyTorch only": "pytorch"}
ALSO_IN = {"Jittor's also": "jittor", "PyTorch's also": "pytorch"}
# the one framework idiom in method names: a Jittor module's forward is its `execute`
METHOD_NAME = {"jittor": {"forward": "execute"}}
BACKTICKED = re.compile(r"`([^`\n]+)`")
SYMBOL = re.compile(r"(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?P<rest>.*)", re.DOTALL)
PATH = r"(?<![\w/.$-])((?:{})/[\w./-]*)"  # {}: the top-level directories
NOT_SYMBOLS = {"None", "True", "False"}


# -- reading the document ------------------------------------------------------------------

def section(doc, heading):
    """The text under `## heading` (a prefix of the heading line) up to the next `## `."""
    match = re.search(rf"^## {re.escape(heading)}.*?$(.*?)(?=^## |\Z)", doc, re.M | re.S)
    assert match, f"{DOC} has no '## {heading}' section"
    return match.group(1)


def layout_entries(doc):
    """The layout tree -> ({path: description}, [problems]); a directory's path ends in '/'."""
    block = re.search(r"```\n(.*?)```", section(doc, "Layout"), re.S)
    assert block, f"{DOC}: the Layout section has no code block"
    entries, problems, parents, last = {}, [], [], None
    for line in block.group(1).splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip():
            continue
        if indent >= DESCRIPTION_COLUMN:
            if last is None:
                problems.append(f"layout line continues no entry: {line.strip()!r}")
            else:
                entries[last] += " " + line.strip()
            continue
        name, _, description = line.strip().partition(" ")
        if indent % 2 or indent // 2 > len(parents):
            problems.append(f"layout line indented {indent} spaces: {line.strip()!r}")
            continue
        parents[indent // 2:] = []
        last = "".join(parents) + name
        if last in entries:
            problems.append(f"layout lists {last} twice")
        entries[last] = description.strip()
        if name.endswith("/"):
            parents.append(name)
    problems += [f"layout entry {path} has no description" for path, text in entries.items()
                 if not text]
    return entries, problems


def port_table(doc):
    """The port table -> [(file, port names it belongs to, symbols cell)]."""
    rows = []
    for line in section(doc, "A port").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("| `") or len(cells) < 2:
            continue
        file_cell, symbols = cells[0], "|".join(cells[1:])
        only = [port for marker, port in ONLY_IN.items() if marker in file_cell]
        rows.append((BACKTICKED.search(file_cell).group(1), only or ["pytorch", "jittor"],
                     symbols))
    return rows


# -- reading the tree ----------------------------------------------------------------------

def repo_files(root):
    """Tracked files and new ones not ignored, as posix paths relative to `root`."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=root, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return {name for name in out.decode().split("\0") if name and (root / name).is_file()}


@functools.lru_cache(maxsize=None)
def module_symbols(path):
    """Top-level names of a module file -> {name: set of method and self.attribute names
    for a class, None otherwise}."""
    tree = ast.parse(pathlib.Path(path).read_text(encoding="utf-8"))
    symbols = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            symbols[node.name] = class_members(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            symbols[node.name] = None
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            symbols.update((t.id, None) for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            symbols.update(((alias.asname or alias.name).split(".")[0], None)
                           for alias in node.names)
    return symbols


def class_members(node):
    methods = {item.name for item in node.body
               if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))}
    attributes = {target.attr for item in ast.walk(node) if isinstance(item, ast.Assign)
                  for target in item.targets if isinstance(target, ast.Attribute)
                  and isinstance(target.value, ast.Name) and target.value.id == "self"}
    return {"methods": methods, "attributes": attributes}


def symbol_problem(symbols, dotted, call, where, port=""):
    """Why `dotted` (a name, or Class.member; `call`: written with parentheses) is not what
    the document says it is in a module with `symbols`, or None."""
    head, _, member = dotted.partition(".")
    if head not in symbols:
        return f"{where}: `{dotted}` is not defined there"
    if not member:
        return None
    members = symbols[head]
    if members is None:
        return f"{where}: `{head}` is not a class, so `{dotted}` is not one of its methods"
    member = METHOD_NAME.get(port, {}).get(member, member)
    if member in members["methods"]:
        return None
    if not call and member in members["attributes"]:
        return None
    kind = "method" if call else "method or attribute"
    return f"{where}: `{dotted}` is not a {kind} of class {head}"


# -- the checks ----------------------------------------------------------------------------

def layout_drift(doc, files):
    """Layout entries against the tree: [problem naming the path]."""
    entries, problems = layout_entries(doc)
    listed_dirs = {path for path in entries if path.endswith("/")}
    for path in sorted(entries):
        exists = (any(f.startswith(path) for f in files) if path.endswith("/")
                  else path in files)
        if not exists:
            problems.append(f"layout lists {path}, which does not exist")
    for path in sorted(files):
        top = path.split("/")[0] + "/"
        if "/" in path and not top.startswith(".") and top not in listed_dirs:
            problems.append(f"layout lacks the directory {top}")
            listed_dirs.add(top)
        if path not in entries and must_be_listed(path):
            problems.append(f"layout lacks {path}")
    return problems


def must_be_listed(path):
    if path.startswith(PORT_DIRS):
        return False  # the port table's
    for directory, pattern in ENUMERATED:
        inside = path.startswith(directory) if directory else "/" not in path
        if inside and fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern):
            return True
    return False


def port_table_drift(doc, root, files):
    """The port table against both ports' files and symbols: [problem]."""
    problems, seen = [], {}
    for name, ports, cell in port_table(doc):
        seen[name] = seen.get(name, 0) + 1
        for port_dir in PORT_DIRS:
            port = port_dir.split("/")[1]
            path = port_dir + name
            if (port in ports) != (path in files):
                problems.append(f"port table: {path} " + ("does not exist" if port in ports
                                                          else "exists, not marked"))
            elif port in ports:
                problems += cell_drift(cell, port, root / path, path)
    problems += [f"port table lists {name} {count} times" for name, count in seen.items()
                 if count > 1]
    port_files = {f.split("/", 2)[2] for f in files
                  if f.startswith(PORT_DIRS) and f.endswith(".py") and f.count("/") == 2}
    problems += [f"port table lacks {name}" for name in sorted(port_files - set(seen))]
    return problems


def cell_drift(cell, port, path, where):
    """The symbols a port-table cell names for `port`'s module: every call-shaped name, every
    capitalised name and every Class.member must exist (a member written as a call must be a
    method). Lower-case bare words are attributes, values or config keys; `gfocal.` names and
    paths are checked document-wide; text after "Jittor's also" is for Jittor only."""
    for marker, only in ALSO_IN.items():
        common, _, extra = cell.partition(marker)
        cell = common + (extra if only == port else "")
    symbols = module_symbols(str(path))
    problems = []
    for token in BACKTICKED.findall(cell):
        match = SYMBOL.match(token)
        if not match or "/" in token or token.startswith("gfocal."):
            continue
        name, call = match.group("name"), match.group("rest").startswith("(")
        if name in NOT_SYMBOLS or not (call or name[0].isupper()):
            continue
        problem = symbol_problem(symbols, name, call, where, port)
        if problem:
            problems.append(problem)
    return problems


def reference_drift(doc, root, files):
    """Every repository path the document names exists, and every `gfocal.x.y` dotted name
    resolves to a module and a name in it (or a class and its member)."""
    tops = sorted({f.split("/")[0] for f in files if "/" in f and not f.startswith(".")})
    problems = []
    paths = re.findall(PATH.format("|".join(map(re.escape, tops))), doc)
    for path in sorted({path.rstrip(".") for path in paths}):
        if not (path in files or any(f.startswith(path.rstrip("/") + "/") for f in files)):
            problems.append(f"{DOC} names {path}, which does not exist")
    for token in BACKTICKED.findall(doc):
        match = SYMBOL.match(token)
        if match and match.group("name").startswith("gfocal."):
            problem = dotted_problem(match.group("name"), match.group("rest").startswith("("),
                                     root, files)
            if problem:
                problems.append(problem)
    return problems


def dotted_problem(dotted, call, root, files):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = "/".join(parts[:cut])
        for module in (base + ".py", base + "/__init__.py"):
            if module in files:
                rest = ".".join(parts[cut:])
                return rest and symbol_problem(module_symbols(str(root / module)), rest, call,
                                               f"`{dotted}` ({module})")
    return f"{DOC} names `{dotted}`, which is no module"


def doc_drift(doc, root, files):
    return (layout_drift(doc, files) + port_table_drift(doc, root, files)
            + reference_drift(doc, root, files))


# -- tests ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree():
    return repo_files(ROOT)


@pytest.fixture(scope="module")
def doc():
    return (ROOT / DOC).read_text(encoding="utf-8")


def test_architecture_doc_matches_the_tree(doc, tree):
    problems = doc_drift(doc, ROOT, tree)
    assert problems == [], f"{DOC} has drifted from the tree:\n" + "\n".join(problems)


def drift_after(doc, tree, old, new, add=(), remove=()):
    assert old in doc, f"the mutation's anchor {old!r} is not in {DOC}"
    return doc_drift(doc.replace(old, new, 1), ROOT, (tree | set(add)) - set(remove))


@pytest.mark.parametrize("old, new, add, remove, expected", [
    ("", "", ["gfocal/new_module.py"], [], "layout lacks gfocal/new_module.py"),
    ("", "", ["scripts/new_step.sh"], [], "layout lacks scripts/new_step.sh"),
    ("", "", ["gfocal/data/new_module.py"], [], "layout lacks gfocal/data/new_module.py"),
    ("", "", ["newdir/thing.txt"], [], "layout lacks the directory newdir/"),
    ("", "", ["gfocal/pytorch/new_port_file.py", "gfocal/jittor/new_port_file.py"], [],
     "port table lacks new_port_file.py"),
    ("", "", [], ["gfocal/schedule.py"], "layout lists gfocal/schedule.py, which does not exist"),
    ("", "", [], ["gfocal/pytorch/fpn.py"], "port table: gfocal/pytorch/fpn.py does not exist"),
    ("`GFLPostProcess.get_bboxes_single(", "`get_bboxes_single(", [], [],
     "`get_bboxes_single` is not defined there"),
    ("`ATSSAssigner.assign(", "`ATSSAssigner.assignment(", [], [],
     "`ATSSAssigner.assignment` is not a method of class ATSSAssigner"),
    ("`set_lr(", "`set_learning_rate(", [], [], "`set_learning_rate` is not defined there"),
    ("`HALF_TYPES`", "`HALF_TYPE`", [], [], "`HALF_TYPE` is not defined there"),
    ("`gfocal.device.resolve_device`", "`gfocal.device.resolve`", [], [],
     "`gfocal.device.resolve` (gfocal/device.py): `resolve` is not defined there"),
    ("| `probes.py` |", "| `probe.py` |", [], [], "gfocal/pytorch/probe.py does not exist"),
    ("| `kernels.py` (Jittor only) |", "| `kernels.py` |", [], [],
     "gfocal/pytorch/kernels.py does not exist"),
    ("  schedule.py  ", "  schedules.py ", [], [], "layout lacks gfocal/schedule.py"),
    ("docs/SUBJECTS.md", "docs/SUBJECT.md", [], [], "names docs/SUBJECT.md, which does not"),
])
def test_drift_is_found(doc, tree, old, new, add, remove, expected):
    problems = drift_after(doc, tree, old, new, add, remove)
    assert any(expected in problem for problem in problems), problems


def test_jittor_only_symbols_are_not_looked_up_in_pytorch(doc, tree):
    problems = drift_after(doc, tree, "Jittor's also `round_to_half(",
                           "also `round_to_half(")
    assert problems == [f"gfocal/pytorch/precision.py: `{name}` is not defined there"
                        for name in ("round_to_half", "HalfRounding")]
