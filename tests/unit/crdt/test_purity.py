"""crdt/ is a pure core: standard library only, and it never reads a clock."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

CRDT = Path(__file__).resolve().parents[3] / "crdt"
MODULES = sorted(CRDT.glob("*.py"))

# Reading any of these would make a decision depend on when it ran, not on `now`.
CLOCK_CALLS = {
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "monotonic"),
    ("time", "monotonic_ns"),
    ("time", "perf_counter"),
    ("time", "perf_counter_ns"),
    ("time", "process_time"),
    ("time", "sleep"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("loop", "time"),
}
FORBIDDEN_MODULES = {"asyncio", "threading", "socket", "datetime", "time", "os", "subprocess"}


def _imports(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add("crdt")  # relative import stays inside the package
            elif node.module:
                names.add(node.module)
    return names


def test_the_core_has_modules() -> None:
    assert {p.name for p in MODULES} >= {"bucket.py", "store.py", "counters.py", "policy.py"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_crdt_imports_only_the_standard_library_and_itself(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for name in _imports(tree):
        top = name.split(".")[0]
        assert top == "crdt" or top in sys.stdlib_module_names, f"{path.name} imports {name}"
        assert top not in FORBIDDEN_MODULES, f"{path.name} imports {name}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_crdt_never_reads_a_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            call = (owner_name, node.func.attr)
            assert call not in CLOCK_CALLS, f"{path.name}:{node.lineno} calls {call}"
        if isinstance(node, ast.Name):
            assert node.id not in {"monotonic", "perf_counter", "time_ns"}, (
                f"{path.name}:{node.lineno} uses {node.id}"
            )


def test_the_checks_catch_what_they_forbid() -> None:
    bad = ast.parse("import time\nfrom aiokafka import X\nt = time.monotonic()\n")
    assert _imports(bad) == {"time", "aiokafka"}
    calls = [
        (n.func.value.id, n.func.attr)
        for n in ast.walk(bad)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Name)
    ]
    assert calls == [("time", "monotonic")]
