"""The ring of service.membership.ketama against a real nginx with `hash ... consistent`:
nginx sends each user to the upstream server the ring picks, and to the next server the
ring meets when that one is down (nginx from the distribution, `make system`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from service.local.process import LOOPBACK, free_port
from service.membership.ketama import Ring
from tests.nginx import running


class _Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        assert isinstance(self.server, ThreadingHTTPServer)
        body = str(self.server.server_port).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def echoes() -> Iterator[list[ThreadingHTTPServer]]:
    servers = [ThreadingHTTPServer((LOOPBACK, 0), _Echo) for _ in range(4)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    yield servers
    for s in servers:
        s.shutdown()
        s.server_close()


def address(server: ThreadingHTTPServer) -> str:
    return f"{LOOPBACK}:{server.server_port}"


def hash_conf(backends: list[str], port: int) -> str:
    servers = "\n".join(f"        server {b};" for b in backends)
    return f"""
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log off;
    upstream ratelimiter {{
        hash $http_x_user_id consistent;
{servers}
    }}
    server {{
        listen {LOOPBACK}:{port};
        location / {{ proxy_pass http://ratelimiter; }}
    }}
}}
"""


def landings(port: int, users: list[str]) -> dict[str, str]:
    with httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=5) as client:
        return {u: f"{LOOPBACK}:{client.get('/', headers={'X-User-ID': u}).text}" for u in users}


def test_nginx_sends_each_user_where_the_ring_says(
    echoes: list[ThreadingHTTPServer], tmp_path: Path
) -> None:
    backends = [address(s) for s in echoes]
    port = free_port()
    users = [f"user-{i}" for i in range(300)]
    with running(hash_conf(backends, port), tmp_path, port):
        landed = landings(port, users)
    ring = Ring(backends)
    assert {u: ring.pick(u) for u in users} == landed
    assert len(set(landed.values())) == len(backends)


def test_nginx_tries_next_the_server_the_ring_meets_next(
    echoes: list[ThreadingHTTPServer], tmp_path: Path
) -> None:
    backends = [address(s) for s in echoes]
    down = echoes[0]
    down.shutdown()
    down.server_close()  # refuses connections: nginx passes on to the next server
    port = free_port()
    users = [f"user-{i}" for i in range(300)]
    with running(hash_conf(backends, port), tmp_path, port):
        landed = landings(port, users)
    ring = Ring(backends)
    moved = [u for u in users if ring.pick(u) == backends[0]]
    assert moved
    assert {u: ring.walk(u, 2)[1] for u in moved} == {u: landed[u] for u in moved}
    assert {u: ring.pick(u) for u in users if u not in moved} == {
        u: landed[u] for u in users if u not in moved
    }
