"""`ratelimiter`: subcommands load lazily, plugins come through an entry point."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.cli import ENTRY_POINT_GROUP, main, subcommands

LOADED_BY_SERVE_HELP = """
import contextlib, io, sys
from service.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(["serve", "--help"])
print("\\n".join(sorted(sys.modules)))
"""


def test_serve_loads_neither_the_load_test_harness_nor_plotting() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LOADED_BY_SERVE_HELP],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = set(result.stdout.split())
    assert {"service.cli.serve", "service.http.app", "uvicorn"} <= loaded
    assert not {m for m in loaded if m.split(".")[0] in ("locust", "matplotlib", "stress_test")}
    assert not {m for m in loaded if m.startswith("service.cli.") and m != "service.cli.serve"}


def test_swarm_is_a_plugin_of_the_commands_entry_point() -> None:
    assert ENTRY_POINT_GROUP == "ratelimiter.commands"
    module, _ = subcommands()["swarm"]
    assert module == "stress_test.swarm_cli"


def test_a_missing_plugin_module_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("service.cli.SUBCOMMANDS", {"ghost": ("no_such_module.cli", "a ghost")})

    assert main(["ghost"]) == 2
    assert "the 'ghost' subcommand needs 'no_such_module'" in capsys.readouterr().err
