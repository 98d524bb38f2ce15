"""deploy/partition.js in a real nginx (njs): $rl_partition is the partition the nodes
compute for X-User-ID (Kafka's murmur2 partitioner, service/replication/codec.py), for
keys of every length and of multi-byte UTF-8."""

from __future__ import annotations

import random
from pathlib import Path

import httpx

from service.local.process import LOOPBACK, free_port
from service.replication.codec import partition_for_user
from tests.nginx import DEPLOY, JS_MODULE, running

ALPHABET = "abcXYZ019-_.:@ é߷€用户😀🚀"  # 1- to 4-byte UTF-8


def conf(port: int) -> str:
    # The partition count comes with each request here (?p=), to try several at once.
    return f"""
load_module {JS_MODULE};
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log off;
    js_path {DEPLOY};
    js_import partition.js;
    js_var $rl_partitions $arg_p;
    js_set $rl_partition partition.partition;
    server {{
        listen {LOOPBACK}:{port};
        location / {{ return 200 "$rl_partition"; }}
    }}
}}
"""


def test_nginx_computes_the_partition_the_nodes_compute(tmp_path: Path) -> None:
    rng = random.Random(15)
    users = [f"user-{i}" for i in range(200)] + [
        "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 40))).strip() or "x"
        for _ in range(1500)
    ]
    port = free_port()
    # 2^31 - 1 partitions keep all but the top bit of the hash: murmur2 itself is compared.
    counts = (1, 12, 48, 1000, 2**31 - 1)
    with (
        running(conf(port), tmp_path, port, js=True),
        httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=5) as client,
    ):
        got = {
            (user, p): client.get("/", params={"p": p}, headers={b"X-User-ID": user.encode()}).text
            for user in users
            for p in counts
            if p in (12, 2**31 - 1) or user.startswith("user-")
        }
        no_user = client.get("/", params={"p": 12}).text
        bad_count = client.get("/", params={"p": "0"}, headers={b"X-User-ID": b"alice"}).text
    assert got == {key: str(partition_for_user(*key)) for key in got}
    assert len({v for (_, p), v in got.items() if p == 12}) == 12
    assert no_user == ""  # nginx hashes "" and the node answers 400
    assert bad_count == ""  # and says why in its error log
    assert "$rl_partitions must be a positive integer" in (tmp_path / "error.log").read_text()
