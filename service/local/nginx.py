"""A local nginx (the distribution's, with its njs module for the owner-aware config): a
whole config, or deploy/nginx-replicated.conf pointed at local nodes, run in the foreground
with its pid, logs and temporary files in a folder of its own."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from service.errors import RateLimiterError
from service.local.process import LOOPBACK, tcp_open

JS_MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")  # libnginx-mod-http-js
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class NginxFailed(RateLimiterError):
    """nginx is missing, exited, or did not listen in time."""

    exit_code = 1


def find_nginx() -> str | None:
    """The nginx binary, or None."""
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").exists():
        found = "/usr/sbin/nginx"
    return found


def replicated_conf(deploy: Path, servers: Sequence[str], port: int, partitions: int) -> str:
    """`deploy`/nginx-replicated.conf with one `server` line per address of `servers`,
    listening on 127.0.0.1:`port`, with the state topic's partition count and this
    machine's njs module and `deploy`/partition.js."""
    conf = (deploy / "nginx-replicated.conf").read_text()
    lines = "".join(f"        server {s};\n" for s in servers)
    for pattern, replacement in (
        (r"load_module modules/ngx_http_js_module\.so;", f"load_module {JS_MODULE};"),
        (r"worker_processes auto;", "worker_processes 1;"),
        (r"js_path \S+;", f"js_path {deploy};"),
        (r"js_var \$rl_partitions \d+;", f"js_var $rl_partitions {partitions};"),
        (r"(?:^ *server \S+;\n)+", lines),
        (r"listen 8080;", f"listen {LOOPBACK}:{port};"),
    ):
        conf, found = re.subn(pattern, replacement.replace("\\", r"\\"), conf, flags=re.M)
        if found != 1:
            raise NginxFailed(f"nginx-replicated.conf has no single {pattern!r}")
    return conf


@dataclass
class NginxProcess:
    """nginx running `conf` (a whole config that listens on 127.0.0.1:`port`)."""

    conf: str
    folder: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> NginxProcess:
        """Write the config, start nginx and wait until it listens; NginxFailed if not."""
        binary = find_nginx()
        if binary is None:
            raise NginxFailed("nginx is not installed (Debian: apt-get install nginx)")
        if "ngx_http_js_module" in self.conf and not JS_MODULE.exists():
            raise NginxFailed(f"no {JS_MODULE} (Debian: apt-get install libnginx-mod-http-js)")
        folder = self.folder
        folder.mkdir(parents=True, exist_ok=True)
        temp = " ".join(f"{kind}_temp_path {folder};" for kind in TEMP_PATHS)
        main = f"daemon off;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log;\n"
        conf = re.sub(r"^http \{", lambda _: f"http {{\n    {temp}", self.conf, count=1, flags=re.M)
        (folder / "nginx.conf").write_text(main + conf)
        self.process = subprocess.Popen(
            [binary, "-p", str(folder), "-c", str(folder / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while not tcp_open(LOOPBACK, self.port, 0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise NginxFailed(f"nginx did not listen on {self.port}: {self.errors()}")
            time.sleep(0.02)  # poll until nginx listens
        return self

    def errors(self) -> str:
        """nginx's error log (empty before it wrote one)."""
        log = self.folder / "error.log"
        return log.read_text() if log.exists() else ""

    def stop(self) -> None:
        """Stop nginx (TERM: it closes its connections and exits)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def __enter__(self) -> NginxProcess:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()
