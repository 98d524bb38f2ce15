"""A real nginx for tests (from the distribution, installed by `make system` with its njs
module): a config of the test's own or deploy/nginx-replicated.conf pointed at the test's
servers, run in the foreground under the test's folder."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from service.local.jars import repo_root
from service.local.process import LOOPBACK
from tests.e2e.http import wait_until

DEPLOY = repo_root(Path(__file__).parent) / "deploy"
JS_MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")  # libnginx-mod-http-js


def nginx_binary(js: bool = False) -> str:
    """The nginx binary; fails (never skips) saying what to install when it is missing."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        pytest.fail("nginx is not installed: run `make system` (Debian package nginx)")
    if js and not JS_MODULE.exists():
        pytest.fail(f"no {JS_MODULE}: run `make system` (Debian package libnginx-mod-http-js)")
    return found


def replicated_conf(servers: Sequence[str], port: int, partitions: int) -> str:
    """deploy/nginx-replicated.conf with the test's servers, listening on `port`, with the
    state topic's partition count and the njs module and script from this machine."""
    conf = (DEPLOY / "nginx-replicated.conf").read_text()
    lines = "".join(f"        server {s};\n" for s in servers)
    for pattern, replacement in (
        (r"load_module modules/ngx_http_js_module\.so;", f"load_module {JS_MODULE};"),
        (r"worker_processes auto;", "worker_processes 1;"),
        (r"js_path \S+;", f"js_path {DEPLOY};"),
        (r"js_var \$rl_partitions \d+;", f"js_var $rl_partitions {partitions};"),
        (r"(?:^ *server \S+;\n)+", lines),
        (r"listen 8080;", f"listen {LOOPBACK}:{port};"),
    ):
        conf, found = re.subn(pattern, replacement.replace("\\", r"\\"), conf, flags=re.M)
        assert found == 1, f"deploy/nginx-replicated.conf has no single {pattern!r}"
    return conf


@contextmanager
def running(conf: str, folder: Path, port: int, *, js: bool = False) -> Iterator[None]:
    """nginx with `conf` (a whole config listening on `port`), its pid, logs and temporary
    files in `folder`, until the block ends."""
    binary = nginx_binary(js)
    paths = " ".join(
        f"{kind}_temp_path {folder};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = f"daemon off;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log;\n"
    conf = main + re.sub(r"^http \{", lambda _: f"http {{\n    {paths}", conf, count=1, flags=re.M)
    (folder / "nginx.conf").write_text(conf)
    process = subprocess.Popen(
        [binary, "-p", str(folder), "-c", str(folder / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def listening() -> bool:
            if process.poll() is not None:
                log = (folder / "error.log").read_text() if (folder / "error.log").exists() else ""
                raise AssertionError(f"nginx exited ({process.returncode}): {log}")
            try:
                socket.create_connection((LOOPBACK, port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_until(listening, 20, "nginx listens")
        yield
    finally:
        process.terminate()
        process.wait(10)
