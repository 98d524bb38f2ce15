"""The `ratelimiter` command line: one module per subcommand, imported only when it runs.

Other packages add subcommands through the `ratelimiter.commands` entry-point group: the
entry's name is the subcommand, its value a module with `add_arguments(parser)` and
`run(args) -> int`. The project's own `swarm` comes that way from `stress_test`, so a
node never loads the load-testing harness.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from types import ModuleType

from service.errors import RateLimiterError

ENTRY_POINT_GROUP = "ratelimiter.commands"

# subcommand -> (module holding `add_arguments(parser)` and `run(args) -> int`, help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": ("service.cli.up", "the main job: a local broker and a 3-node cluster"),
    "serve": ("service.cli.serve", "run one rate limiter node"),
    "kafka": ("service.cli.kafka", "run a local single-node KRaft Kafka broker"),
    "simulate": ("service.cli.simulate", "simulate a cluster: admitted vs ideal vs bound"),
    "demo": ("service.cli.demo", "the bucket at work: 30 requests on one node or a cluster"),
    "inspect": ("service.cli.inspect", "the state topic: config, partitions, a user's state"),
    "rules": ("service.cli.rules", "put, delete, list or import (Envoy) rules on the rules topic"),
}


def subcommands() -> dict[str, tuple[str, str]]:
    """Built-in subcommands, then those registered under ENTRY_POINT_GROUP."""
    found = dict(SUBCOMMANDS)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, (entry.value, f"{entry.name} (plugin {entry.value})"))
    return found


class PluginMissing(RateLimiterError):
    """A subcommand's module (or what it needs) is not installed."""

    exit_code = 2


def _load(name: str, module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginMissing(
            f"the {name!r} subcommand needs {exc.name or module_name!r}, which is not "
            "installed (for swarm: pip install 'kafka-crdt-ratelimiter[swarm]')"
        ) from exc


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand named; only `command`'s module is imported."""
    parser = argparse.ArgumentParser(prog="ratelimiter", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in subcommands().items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = _load(name, module_name)
            module.add_arguments(child)
            child.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the subcommand, map our errors to a message and exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in args_list if not arg.startswith("-")), None)
    try:
        args = build_parser(command).parse_args(args_list)
        code: int = args._module.run(args)
    except RateLimiterError as exc:
        print(f"ratelimiter {command}: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        return 130
    return code
