"""The import contracts in pyproject.toml hold for the tree and catch each kind of breach."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("crdt", "service", "stress_test", "tests")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` with the project's contracts over the packages found in `tree`."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's Python sources and pyproject.toml, copied where a test may break them."""
    tree = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        for source in (ROOT / package).rglob("*.py"):
            target = tree / source.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    shutil.copyfile(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_tree_keeps_every_contract(tree_copy: Path) -> None:
    result = lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout
    assert result.stdout.count(" KEPT") == 4


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("crdt/bucket.py", "import service.errors", "crdt/ is the pure core"),
        ("service/node.py", "import stress_test.swarm", "the product never imports"),
        ("service/http/app.py", "import service.cli", "service/ is layered"),
        ("service/rules/model.py", "import service.rules.feed", "no import cycles"),
        ("stress_test/bench_run.py", "import stress_test.bench_http", "no import cycles"),
    ],
)
def test_a_breach_breaks_its_contract(
    tree_copy: Path, tmp_path: Path, module: str, line: str, contract: str
) -> None:
    tree = tmp_path / "broken"
    shutil.copytree(tree_copy, tree)
    with (tree / module).open("a", encoding="utf-8") as source:
        source.write(f"\n{line}  # a breach on purpose\n")

    result = lint_imports(tree)

    assert result.returncode == 1, result.stdout + result.stderr
    broken = [row for row in result.stdout.splitlines() if row.endswith(" BROKEN")]
    assert any(row.startswith(contract) for row in broken), result.stdout
