"""Two regions for real: two brokers, MirrorMaker 2 between them, a node in each."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.cli import main
from service.local.broker import LocalBroker
from service.local.mirror import LocalMirror
from service.local.nodes import NodeProcess
from service.local.process import free_port
from tests.e2e.conftest import Spawn
from tests.e2e.http import key_view, protected, wait_until
from tests.kafka_fixture import shared_jars_dir, shared_mirror_jars_dir

pytestmark = pytest.mark.e2e

# Slow refill: nothing consumed in the test is refilled (or forgotten as idle) before the end.
RATE, BURST = 0.05, 10
STALE_S = 5.0  # well above the heartbeats (0.5 s): no flapping on a busy machine
CUT_S = 10.0


@pytest.fixture
def regions(tmp_path: Path) -> Iterator[tuple[dict[str, LocalBroker], LocalMirror]]:
    """Brokers of regions a and b, and a (not yet started) MirrorMaker between them."""
    brokers = {
        r: LocalBroker(port=free_port(), data_dir=tmp_path / r, jars_dir=shared_jars_dir())
        for r in ("a", "b")
    }
    mirror = LocalMirror(
        {r: b.address for r, b in brokers.items()},
        tmp_path / "mirror",
        jars_dir=shared_mirror_jars_dir(),
        refresh_s=1,
    )
    try:
        with ThreadPoolExecutor(2) as pool:  # side by side: distinct ports and data dirs
            list(pool.map(LocalBroker.up, brokers.values()))
        yield brokers, mirror
    finally:
        mirror.down()
        for broker in brokers.values():
            broker.down()


def regions_of(client: httpx.Client, node: NodeProcess) -> dict[str, Any]:
    data: dict[str, Any] = client.get(f"{node.url}/v1/regions").json()
    return data


def remote_state(client: httpx.Client, node: NodeProcess) -> str | None:
    views = regions_of(client, node)["regions"]
    return views[0]["state"] if views else None


def normal(client: httpx.Client, node: NodeProcess) -> bool:
    """The remote region is fresh and the node decides on the shared limits."""
    data = regions_of(client, node)
    return data["mode"] == "normal" and [r["state"] for r in data["regions"]] == ["fresh"]


def test_two_regions_share_one_budget_through_a_cut_of_the_mirror(
    spawn: Spawn, regions: tuple[dict[str, LocalBroker], LocalMirror]
) -> None:
    brokers, mirror = regions
    flags = ["--rate", str(RATE), "--burst", str(BURST), "--region-stale-s", str(STALE_S)]
    flags += ["--region-fail-mode", "share", "--region-heartbeat-s", "0.5"]
    a = spawn("a-1", brokers["a"].address, "--region", "a", *flags, wait=False)
    # Global rules: region a is their home; region b follows its mirrored copy.
    b_rules = ["--rules-topic", "a.ratelimiter.rules"]
    b = spawn("b-1", brokers["b"].address, "--region", "b", *flags, *b_rules, wait=False)
    mirror.up()
    for node in (a, b):
        node.wait_ready(90)
    with httpx.Client(timeout=10) as client:
        for node in (a, b):
            wait_until(partial(normal, client, node), 120, "regions fresh")

        # A user exhausted in region A is denied in region B once A's records arrive.
        admitted: Counter[str] = Counter()
        while protected(client, a, "alice") == 200:
            admitted["alice"] += 1
        exhausted_at = time.monotonic()
        assert admitted["alice"] == BURST
        wait_until(
            lambda: key_view(client, b, "alice")["consumed"] >= BURST, 10, "B sees A's admissions"
        )
        lag_s = time.monotonic() - exhausted_at
        assert protected(client, b, "alice") == 429
        print(f"\ncross-region lag (exhausted in A -> visible in B): {lag_s * 1000:.0f} ms")

        # Cut the mirror: both regions keep answering (never 5xx) and go to their share.
        mirror.down()
        statuses: Counter[int] = Counter()
        users = ["u1", "u2", "u3"]
        deadline = time.monotonic() + CUT_S
        i = 0
        while time.monotonic() < deadline:  # the cut lasts CUT_S, under traffic
            user = users[i % len(users)]
            for node in (a, b):
                status = protected(client, node, user)
                statuses[status] += 1
                admitted[user] += status == 200
            i += 1
        assert set(statuses) <= {200, 429}, statuses
        for node in (a, b):
            assert remote_state(client, node) == "stale"
            assert regions_of(client, node)["mode"] == "region_share"

        # The mirror returns: every admission of the cut reaches the other region.
        mirror.up()
        for node in (a, b):
            wait_until(partial(normal, client, node), 120, "fresh again, shared limits")
        mismatch: list[str] = []

        def agreed() -> bool:
            mismatch.clear()
            for user, count in admitted.items():
                views = [key_view(client, n, user)["contributions"] for n in (a, b)]
                if views[0] != views[1] or sum(views[0].values()) != count:
                    mismatch.append(f"{user}: clients saw {count}, regions hold {views}")
            return not mismatch

        wait_until(agreed, 30, f"both regions agree with the clients: {mismatch}")
        print(f"admitted per user: {dict(admitted)}; answers during the cut: {dict(statuses)}")

        # A rule put in region a (its home) is in force in region b through the mirror.
        put = ["rules", "put", "default", "--rate", "1", "--burst", "3"]
        assert main([*put, "--kafka", brokers["a"].address, "--topic", "ratelimiter.rules"]) == 0
        probes = iter(range(10**6))

        def b_policy() -> str:
            headers = {"X-User-ID": f"probe-{next(probes)}"}
            return client.post(f"{b.url}/protected", headers=headers).headers["ratelimit-policy"]

        took = wait_until(lambda: b_policy() == '"default";q=3;w=3', 10, "the rule in b")
        print(f"rule put in region a, in force in region b after {took:.3f}s")
