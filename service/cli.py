"""The `ratelimiter` command line: one subcommand per module that implements it."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from service.errors import RateLimiterError

# subcommand -> module holding `add_arguments(parser)` and `run(args) -> int`
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": ("service.up_cli", "the main job: a local broker and a 3-node cluster"),
    "serve": ("service.serve_cli", "run one rate limiter node"),
    "kafka": ("service.broker.cli", "run a local single-node KRaft Kafka broker"),
    "simulate": ("service.simulate_cli", "simulate a cluster: admitted vs ideal vs bound"),
    "demo": ("service.demo_cli", "the bucket at work: 30 requests on one node or a cluster"),
    "inspect": ("service.inspect_cli", "the state topic: config, partitions, a user's state"),
    "swarm": ("service.swarm_cli", "a Locust swarm on a local cluster, with an accuracy report"),
    "rules": ("service.rules_cli", "put, delete or list rules on the rules topic (hot reload)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="ratelimiter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        child = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(child)
        child.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the subcommand, map our errors to a message and exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args._module.run(args)
    except RateLimiterError as exc:
        print(f"ratelimiter {args.command}: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        return 130
    return code
