"""Local node processes: start `ratelimiter serve` children, wait until ready, stop them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from service.errors import RateLimiterError
from service.local.process import LOOPBACK, pid_alive, require_port_free, tail


class NodeFailed(RateLimiterError):
    """A node process exited or did not become ready in time."""

    exit_code = 1


@dataclass
class NodeProcess:
    """One `ratelimiter serve` child process on 127.0.0.1."""

    node_id: str
    port: int
    kafka: str = "none"
    args: Sequence[str] = ()
    log_dir: Path = field(default_factory=lambda: Path("."))
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the node."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        """Where the node's output goes."""
        return self.log_dir / f"{self.node_id}.log"

    def start(self) -> NodeProcess:
        """Spawn the process (returns at once; see wait_ready)."""
        require_port_free(self.port)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "service", "serve",
            "--node-id", self.node_id, "--port", str(self.port), "--kafka", self.kafka,
            *self.args,
        ]  # fmt: skip
        env = {**os.environ, **(self.env or {})}
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        return self

    def ready(self) -> bool:
        """GET /readyz answers 200."""
        return self._readiness()[0]

    def _readiness(self) -> tuple[bool, str | None]:
        """(/readyz answers 200, the error of a node that will never be ready by waiting)."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as response:  # noqa: S310
                return bool(response.status == 200), None
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read())
            except (ValueError, OSError):
                return False, None
            fatal = isinstance(body, dict) and body.get("fatal") is True
            return False, str(body.get("error")) if fatal else None
        except (urllib.error.URLError, OSError):
            return False, None

    def wait_ready(self, timeout_s: float = 60.0) -> NodeProcess:
        """Poll /readyz until 200; NodeFailed with the log tail if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise NodeFailed(
                    f"{self.node_id} exited with {self.process.returncode}:\n"
                    + "\n".join(tail(self.log_path))
                )
            ready, fatal = self._readiness()
            if ready:
                return self
            if fatal is not None:
                raise NodeFailed(f"{self.node_id} cannot start: {fatal}")
            time.sleep(0.05)
        raise NodeFailed(
            f"{self.node_id} not ready after {timeout_s}s:\n" + "\n".join(tail(self.log_path))
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send a signal (SIGKILL by default: a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (graceful: flushes what it admitted), SIGKILL after the timeout."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        return process.returncode

    @property
    def alive(self) -> bool:
        """The process is running."""
        return self.process is not None and pid_alive(self.process.pid)
