"""A real nginx for tests (the distribution's, installed by `make system` with its njs
module): missing, the test fails saying what to install; it never skips."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from service.local import nginx
from service.local.jars import repo_root

DEPLOY = repo_root(Path(__file__).parent) / "deploy"
JS_MODULE = nginx.JS_MODULE


def replicated_conf(servers: Sequence[str], port: int, partitions: int) -> str:
    """deploy/nginx-replicated.conf in front of `servers`, listening on `port`."""
    return nginx.replicated_conf(DEPLOY, servers, port, partitions)


@contextmanager
def running(conf: str, folder: Path, port: int, *, js: bool = False) -> Iterator[None]:
    """nginx with `conf` (a whole config listening on `port`) until the block ends."""
    if nginx.find_nginx() is None:
        pytest.fail("nginx is not installed: run `make system` (Debian package nginx)")
    if js and not JS_MODULE.exists():
        pytest.fail(f"no {JS_MODULE}: run `make system` (Debian package libnginx-mod-http-js)")
    with nginx.NginxProcess(conf, folder, port):
        yield
