"""The port interface (gfocal/ports.py): both ports offer it, and the framework list is
written once."""
import ast
import os
import types

from gfocal.ports import FRAMEWORKS, INTERFACE, missing_members

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("gfocal", "weights_converter", "scripts", "tests", "parity_tests", "perf_tests")
ALLOWED = {os.path.join("gfocal", "ports.py"), os.path.relpath(__file__, ROOT)}


def test_each_port_offers_the_whole_interface(port):
    assert missing_members(port) == []


def test_an_incomplete_port_is_reported():
    fake = types.ModuleType("fake_port")
    fake.FRAMEWORK, fake.tensor = "fake", lambda array: array
    missing = missing_members(fake)
    assert "FRAMEWORK" not in missing and "tensor" not in missing
    assert "sync" in missing and "train" in missing
    assert len(missing) == len(INTERFACE) - 2


def framework_literals(tree):
    """Line numbers of tuple/list literals holding exactly the two framework names."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List)) and len(node.elts) == 2 and all(
                isinstance(e, ast.Constant) for e in node.elts):
            if {e.value for e in node.elts} == set(FRAMEWORKS):
                yield node.lineno


def test_the_framework_list_is_written_only_in_ports():
    found = []
    for top in SCANNED:
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in sorted(files):
                path = os.path.relpath(os.path.join(folder, name), ROOT)
                if not name.endswith(".py") or path in ALLOWED:
                    continue
                with open(os.path.join(ROOT, path)) as f:
                    tree = ast.parse(f.read(), path)
                found += [f"{path}:{line}" for line in framework_literals(tree)]
    assert not found, "framework list written outside gfocal/ports.py: " + ", ".join(found)
