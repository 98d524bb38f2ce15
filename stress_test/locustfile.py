"""Locust swarms against a rate-limiter cluster: 429 is a correct answer, not a failure.

Pick a scenario by user class (`locust -f stress_test/locustfile.py SteadyUser ...`):

- SteadyUser    one id per simulated user, always over the limit (2x the rate)
- BurstyUser    one id per simulated user, bursts of 0.5-2x the capacity, then quiet
- ManyUsersUser ids drawn from 100,000 distinct users (most requests are admitted)
- HotKeyUser    every simulated user hits one key
- MixedUser     /protected and /v1/check with costs 1-5 on the same keys

Environment:
- SWARM_HOSTS: comma-separated node base URLs (default: Locust's --host); requests are
  spread round-robin across them from a random start per user, as a load balancer would.
- SWARM_HOSTS_FILE: a file of base URLs, one per line, re-read when it changes (the swarm
  runner appends a node there when it scales out). A line `REGION URL` puts the node in a
  region: with two regions or more, each user's requests alternate between regions and go
  round-robin over a region's nodes (`ratelimiter swarm --regions` / `--region-nodes`).
- SWARM_RATE, SWARM_BURST: the configured limit (default 10/s, 20), to size the load.
- SWARM_RECORD_DIR: when set, every request is written there at exit as
  `requests-<pid>.csv` (t, key, cost, outcome, node): the swarm runner replays them
  through an ideal token bucket to measure accuracy.
"""

from __future__ import annotations

import csv
import itertools
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from locust import between, constant_throughput, events, task
from locust.contrib.fasthttp import FastHttpUser

RATE = float(os.environ.get("SWARM_RATE", "10"))
BURST = int(os.environ.get("SWARM_BURST", "20"))
DISTINCT_USERS = 100_000
ADMITTED, DENIED, ERROR = 1, 0, -1
# Keys are unique per Locust process and run, so runs never share buckets.
RUN = uuid.uuid4().hex[:6]
_ids = itertools.count()


class Hosts:
    """The node base URLs, from SWARM_HOSTS_FILE (re-read when it changes) or SWARM_HOSTS."""

    def __init__(self) -> None:
        self.path = os.environ.get("SWARM_HOSTS_FILE")
        fixed = os.environ.get("SWARM_HOSTS", "")
        self.urls = [u.strip().rstrip("/") for u in fixed.split(",") if u.strip()]
        self.groups: list[list[int]] = []  # node indexes per region, in order of appearance
        self._mtime = -1.0
        self._checked = 0.0
        self.get()

    def get(self) -> list[str]:
        """The current list (checks the file at most twice a second)."""
        if self.path is None:
            return self.urls
        now = time.monotonic()
        if now - self._checked >= 0.5:
            self._checked = now
            mtime = os.stat(self.path).st_mtime
            if mtime != self._mtime:
                self._mtime = mtime
                self.urls, self.groups = parse_hosts(Path(self.path).read_text())
        return self.urls


def parse_hosts(text: str) -> tuple[list[str], list[list[int]]]:
    """Lines `URL` or `REGION URL` -> (URLs, node indexes per region when any are named)."""
    urls: list[str] = []
    regions: dict[str, list[int]] = {}
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if len(words) > 1:
            regions.setdefault(words[0], []).append(len(urls))
        urls.append(words[-1].rstrip("/"))
    return urls, list(regions.values())


def pick_node(turn: int, count: int, groups: list[list[int]]) -> int:
    """The node of a user's `turn`-th request: with two regions or more, alternate regions
    and go round-robin inside each; else round-robin over all `count` nodes."""
    if len(groups) > 1:
        group = groups[turn % len(groups)]
        return group[(turn // len(groups)) % len(group)]
    return turn % count


HOSTS = Hosts()
# Every request: (unix time sent, key, cost, outcome, node index); written at exit.
RECORDS: list[tuple[float, str, int, int, int]] = []


def _write_records(environment: Any, **kwargs: Any) -> None:
    folder = os.environ.get("SWARM_RECORD_DIR")
    if not folder or not RECORDS:
        return
    path = Path(folder) / f"requests-{os.getpid()}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t", "key", "cost", "outcome", "node"])
        writer.writerows((f"{t:.6f}", k, c, o, n) for t, k, c, o, n in RECORDS)


events.quitting.add_listener(_write_records)  # type: ignore[no-untyped-call]


class SwarmUser(FastHttpUser):
    """Sends /protected and /v1/check round-robin over the nodes and records each answer."""

    abstract = True
    host = HOSTS.urls[0] if HOSTS.urls else None
    connection_timeout = 5.0
    network_timeout = 10.0

    def on_start(self) -> None:
        self.user_id = f"{type(self).__name__.removesuffix('User').lower()}-{RUN}-{next(_ids)}"
        self._turn = random.randrange(1 << 16)

    def _node(self) -> tuple[int, str]:
        urls = HOSTS.get() or [str(self.host)]
        self._turn += 1
        index = pick_node(self._turn, len(urls), HOSTS.groups)
        return index, urls[index]

    def protected(self, key: str) -> None:
        """POST /protected as `key`: 200 and 429 are both successes."""
        index, base = self._node()
        sent = time.time()
        with self.client.post(
            base + "/protected",
            headers={"X-User-ID": key},
            name="/protected",
            catch_response=True,
        ) as response:
            if response.status_code == 200:
                outcome = ADMITTED
                response.success()
            elif response.status_code == 429:
                outcome = DENIED
                response.success()
            else:
                outcome = ERROR
                response.failure(f"unexpected status {response.status_code}")
        RECORDS.append((sent, key, 1, outcome, index))

    def check(self, key: str, cost: int) -> None:
        """POST /v1/check for `key` and `cost`: allowed and denied are both successes."""
        index, base = self._node()
        sent = time.time()
        with self.client.post(
            base + "/v1/check",
            json={"key": key, "cost": cost},
            name="/v1/check",
            catch_response=True,
        ) as response:
            outcome = ERROR
            if response.status_code == 200:
                try:
                    outcome = ADMITTED if orjson.loads(response.content or b"")["allowed"] else 0
                    response.success()
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    response.failure("unreadable /v1/check body")
            else:
                response.failure(f"unexpected status {response.status_code}")
        RECORDS.append((sent, key, cost, outcome, index))


class SteadyUser(SwarmUser):
    """One id per simulated user, steadily over the limit (twice the rate)."""

    wait_time = constant_throughput(2 * RATE)

    @task
    def steady(self) -> None:
        self.protected(self.user_id)


class BurstyUser(SwarmUser):
    """One id per simulated user: a burst of 0.5-2x the capacity back to back, then quiet."""

    wait_time = between(1.0, 3.0)

    @task
    def burst(self) -> None:
        for _ in range(random.randint(max(1, BURST // 2), 2 * BURST)):
            self.protected(self.user_id)


class ManyUsersUser(SwarmUser):
    """Each request as one of 100,000 distinct users: the key store's width, not its depth."""

    wait_time = constant_throughput(2 * RATE)

    @task
    def many(self) -> None:
        self.protected(f"many-{RUN}-{random.randrange(DISTINCT_USERS)}")


class HotKeyUser(SwarmUser):
    """Every simulated user hits one key: the worst case for cross-node over-admission."""

    wait_time = constant_throughput(RATE)

    @task
    def hot(self) -> None:
        self.protected(f"hot-{RUN}")


class MixedUser(SwarmUser):
    """/protected (cost 1) and /v1/check (cost 1-5) on the same key: one shared bucket."""

    wait_time = constant_throughput(RATE)

    @task(3)
    def protected_request(self) -> None:
        self.protected(self.user_id)

    @task(1)
    def check_request(self) -> None:
        self.check(self.user_id, random.randint(1, 5))
