"""What one run of `python -m stress_test.bench_http` shares with its sections (bench_half,
bench_memory, bench_bootstrap): the options, the tools, a work dir, the lazily started
Kafka broker and the results."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import BrokerError
from service.local.broker import LocalBroker
from service.local.jars import HOME_ENV, default_jars_dir, kafka_version, repo_root
from service.local.process import free_port
from stress_test.bench_processes import BenchError


@dataclass
class Bench:
    """What a run shares: options, tools, a work dir, the (lazy) broker, the results."""

    args: argparse.Namespace
    work_dir: Path
    stack: contextlib.ExitStack
    wrk: str | None
    results: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    _kafka: str | None = None
    _kafka_error: str = ""
    _broker: LocalBroker | None = None

    def say(self, message: str) -> None:
        """Progress on stderr (stdout holds only the report)."""
        print(f"[bench_http {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def require_wrk(self) -> str:
        """The wrk binary, or a BenchError saying how to install it."""
        if self.wrk is None:
            raise BenchError("wrk not found on PATH (Debian/Ubuntu: apt-get install wrk)")
        return self.wrk

    def kafka(self) -> str:
        """The broker address: --kafka, else a LocalBroker started now (stopped at the end)."""
        if self._kafka is None and not self._kafka_error:
            if self.args.kafka:
                self._kafka = str(self.args.kafka)
            else:
                jars = (
                    default_jars_dir()
                    if os.environ.get(HOME_ENV)
                    else repo_root(Path(__file__).parent) / ".kafka" / "libs" / kafka_version()
                )
                broker = self._broker = LocalBroker(
                    free_port(), self.work_dir / "kafka", jars_dir=jars
                )
                self.say(f"starting a Kafka broker on port {broker.port} ...")
                self.stack.callback(broker.down)
                try:
                    self._kafka = broker.up()
                except BrokerError as exc:
                    self._kafka_error = f"no Kafka broker (or pass --kafka HOST:PORT): {exc}"
        if self._kafka is None:
            raise BenchError(self._kafka_error)
        return self._kafka

    @property
    def users(self) -> list[str]:
        """The arguments of wrk/users.lua: how many users, their id prefix."""
        return [str(self.args.users), "user-"]

    def broker_pids(self) -> tuple[int, ...]:
        """The pid of the broker started here (none with --kafka)."""
        return () if self._broker is None else tuple(filter(None, [self._broker.status().pid]))

    def fresh_topic(self, what: str) -> str:
        """A new state topic name, so no run sees another's users."""
        return f"bench.{what}.{uuid.uuid4().hex[:10]}"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def bench_main(
    prog: str,
    argv: Sequence[str] | None,
    parse: Callable[[Sequence[str]], argparse.Namespace],
    run: Callable[[argparse.Namespace, Sequence[str]], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
) -> int:
    """A benchmark's entry point: parse the options, run (SIGTERM and Ctrl-C stop it after
    what it started is stopped: 130), print the report as JSON (`--json`) or text."""
    given = list(sys.argv[1:] if argv is None else argv)
    args = parse(given)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run(args, given)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    print(json.dumps(report) if args.json else render(report))
    return 0
