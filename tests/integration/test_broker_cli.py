"""`ratelimiter kafka up|status|down` as a user runs it, on its own port and data dir."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.errors import BrokerError
from service.local.broker import LocalBroker
from service.local.process import command_line, free_port, pid_alive, read_pid
from tests.kafka_fixture import REPO_ROOT, shared_jars_dir

pytestmark = pytest.mark.integration

CONSOLE_SCRIPT = Path(sys.executable).with_name("ratelimiter")


def ratelimiter(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `ratelimiter` command (or `python -m service`), sharing the jar cache."""
    command = (
        [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "service"]
    )
    env = {**os.environ, "RATELIMITER_KAFKA_HOME": str(shared_jars_dir().parent)}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=240
    )


def processes_using(path: Path) -> list[int]:
    """Pids whose command line mentions `path` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            args = command_line(int(entry.name)) or []
            if any(str(path) in arg for arg in args) and pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data dir whose broker is stopped at the end, whatever the test did."""
    folder = tmp_path / "kafka"
    yield folder
    ratelimiter("kafka", "down", "--data-dir", str(folder))


def test_up_twice_status_and_down(data_dir: Path) -> None:
    port = str(free_port())
    where = ["--port", port, "--data-dir", str(data_dir)]

    started = time.monotonic()
    first = ratelimiter("kafka", "up", *where)
    first_s = time.monotonic() - started
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"127.0.0.1:{port}\n"
    pid = read_pid(data_dir / "broker.pid")
    assert pid is not None
    assert "kafka.Kafka" in (command_line(pid) or [])

    started = time.monotonic()
    second = ratelimiter("kafka", "up", *where)
    second_s = time.monotonic() - started
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert "starting" not in second.stderr
    assert read_pid(data_dir / "broker.pid") == pid
    assert second_s < first_s

    status = ratelimiter("kafka", "status", *where)
    assert status.returncode == 0
    assert f"running at 127.0.0.1:{port} (pid {pid}," in status.stdout

    down = ratelimiter("kafka", "down", *where)
    assert down.returncode == 0, down.stderr
    assert down.stdout == f"stopped (pid {pid})\n"
    assert not pid_alive(pid)
    assert not (data_dir / "broker.pid").exists()
    assert processes_using(data_dir) == []

    after = ratelimiter("kafka", "status", *where)
    assert after.returncode == 3
    assert "not running" in after.stdout


def test_up_on_a_taken_port_fails_clearly_and_leaves_no_process(data_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = ratelimiter("kafka", "up", "--port", str(port), "--data-dir", str(data_dir))

    assert result.returncode != 0
    assert result.stdout == ""
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert not (data_dir / "broker.pid").exists()
    assert processes_using(data_dir) == []


def test_broker_dying_at_startup_reports_its_log_and_leaves_no_process(tmp_path: Path) -> None:
    broker = LocalBroker(
        port=free_port(), data_dir=tmp_path / "kafka", jars_dir=shared_jars_dir(), start_timeout=60
    )
    # A storage "formatted" with nonsense: format is skipped and the broker refuses it.
    (broker.data_dir / "kraft").mkdir(parents=True)
    (broker.data_dir / "kraft" / "meta.properties").write_text("version=7\nnode.id=oops\n")

    with pytest.raises(BrokerError, match="exited during startup; its log ends:") as caught:
        broker.up()

    assert "meta.properties" in str(caught.value)
    assert not broker.pid_file.exists()
    assert processes_using(broker.data_dir) == []
