"""`ratelimiter kafka up|down|status`: manage the local single-node KRaft broker."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.local.broker import DEFAULT_PORT, LocalBroker

NOT_RUNNING = 3  # LSB init-script convention for "program is not running"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `kafka` subcommand's arguments."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "up      fetch the jars on first use (Maven), format the storage once, start the\n"
        "        broker in the background and print its bootstrap address once it answers\n"
        "down    stop the broker (SIGTERM, SIGKILL after --stop-timeout)\n"
        f"status  print whether it runs; exit 0 when running, {NOT_RUNNING} when not\n\n"
        "The jars are cached in .kafka/libs/<version> at the repository root, or under\n"
        "$RATELIMITER_KAFKA_HOME when set."
    )
    parser.add_argument("action", choices=["up", "down", "status"], help="what to do")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"client port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="broker data, logs and pid file (default: .kafka/ at the repository root)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        help="seconds `up` waits for the broker to answer (default 90)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=30.0,
        help="seconds `down` waits after SIGTERM before SIGKILL (default 30)",
    )


def run(args: argparse.Namespace) -> int:
    """Run one action; broker errors propagate to the dispatcher as BrokerError."""
    broker = LocalBroker(
        port=args.port,
        data_dir=args.data_dir,
        start_timeout=args.timeout,
        stop_timeout=args.stop_timeout,
        progress=_progress,
    )
    if args.action == "up":
        print(broker.up(), flush=True)
        return 0
    if args.action == "down":
        pid = broker.down()
        print(f"stopped (pid {pid})" if pid is not None else "not running", flush=True)
        return 0
    status = broker.status()
    if status.running:
        print(f"running at {status.address} (pid {status.pid}, data dir {status.data_dir})")
        return 0
    print(f"not running (data dir {status.data_dir})")
    return NOT_RUNNING


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
