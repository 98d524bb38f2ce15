"""The ring of service.membership.ketama against a real nginx with `hash ... consistent`:
nginx sends each user to the upstream server the ring picks (nginx from the distribution;
skipped where it is not installed)."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from service.local.process import LOOPBACK, free_port
from service.membership.ketama import Ring
from tests.e2e.http import wait_until

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


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
def backends() -> Iterator[list[str]]:
    servers = [ThreadingHTTPServer((LOOPBACK, 0), _Echo) for _ in range(4)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    yield [f"{LOOPBACK}:{s.server_port}" for s in servers]
    for s in servers:
        s.shutdown()
        s.server_close()


def test_nginx_sends_each_user_where_the_ring_says(backends: list[str], tmp_path: Path) -> None:
    assert NGINX is not None
    port = free_port()
    servers = "\n".join(f"        server {b};" for b in backends)
    (tmp_path / "nginx.conf").write_text(
        f"""
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}; proxy_temp_path {tmp_path};
    fastcgi_temp_path {tmp_path}; uwsgi_temp_path {tmp_path}; scgi_temp_path {tmp_path};
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
    )
    nginx = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=5) as client:

            def up() -> bool:
                try:
                    return client.get("/").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(up, 20, "nginx answers")
            ring = Ring(backends)
            users = [f"user-{i}" for i in range(300)]
            landed = {
                u: f"{LOOPBACK}:{client.get('/', headers={'X-User-ID': u}).text}" for u in users
            }
        assert {u: ring.pick(u) for u in users} == landed
        assert len(set(landed.values())) == len(backends)
    finally:
        nginx.terminate()
        nginx.wait(10)
