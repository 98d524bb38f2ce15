"""`ratelimiter kafka up|down|status`: manage the local single-node KRaft broker;
`ratelimiter kafka mirror up|down|status`: the MirrorMaker 2 process between regions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.errors import BrokerError
from service.local.broker import DEFAULT_PORT, LocalBroker, default_data_dir
from service.local.mirror import LocalMirror, parse_clusters

NOT_RUNNING = 3  # LSB init-script convention for "program is not running"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `kafka` subcommand's arguments."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "up      fetch the jars on first use (Maven), format the storage once, start the\n"
        "        broker in the background and print its bootstrap address once it answers\n"
        "down    stop the broker (SIGTERM, SIGKILL after --stop-timeout)\n"
        f"status  print whether it runs; exit 0 when running, {NOT_RUNNING} when not\n"
        "mirror up|down|status --clusters a=HOST:PORT,b=HOST:PORT\n"
        "        MirrorMaker 2 mirroring the state and rules topics of every cluster to\n"
        "        every other one (as <region>.ratelimiter.state); `up` returns once it runs\n\n"
        "The jars are cached in .kafka/libs/<version> (MirrorMaker's in <version>-mirror) at\n"
        "the repository root, or under $RATELIMITER_KAFKA_HOME when set."
    )
    parser.add_argument("action", choices=["up", "down", "status", "mirror"], help="what to do")
    parser.add_argument(
        "mirror_action",
        nargs="?",
        choices=["up", "down", "status"],
        help="with `mirror`: what to do with MirrorMaker",
    )
    parser.add_argument(
        "--clusters",
        default="",
        help="with `mirror up`: REGION=HOST:PORT of every region's cluster, comma-separated",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"client port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="broker data, logs and pid file (default: .kafka/ at the repository root; "
        "for `mirror`: .kafka/mirror)",
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
    if args.action == "mirror":
        return _mirror(args)
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


def _mirror(args: argparse.Namespace) -> int:
    action = args.mirror_action
    if action is None:
        raise BrokerError("say what to do: `ratelimiter kafka mirror up|down|status`")
    if action == "up" and not args.clusters:
        raise BrokerError("`mirror up` needs --clusters REGION=HOST:PORT,REGION=HOST:PORT")
    mirror = LocalMirror(
        parse_clusters(args.clusters) if args.clusters else {},
        args.data_dir or default_data_dir() / "mirror",
        start_timeout=max(args.timeout, 120.0),
        stop_timeout=args.stop_timeout,
        progress=_progress,
    )
    if action == "up":
        print(f"mirroring {mirror.up()}", flush=True)
        return 0
    if action == "down":
        pid = mirror.down()
        print(f"stopped (pid {pid})" if pid is not None else "not running", flush=True)
        return 0
    status = mirror.status()
    if status.running:
        clusters = ", ".join(f"{alias}={address}" for alias, address in status.clusters.items())
        print(f"running (pid {status.pid}) mirroring {clusters} (data dir {status.data_dir})")
        return 0
    print(f"not running (data dir {status.data_dir})")
    return NOT_RUNNING


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
