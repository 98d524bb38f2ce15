"""Operating-system work for the local broker and mirror: Java, ports, detached processes,
pids and log tails."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from service.errors import BrokerError

MIN_JAVA = 17
LOOPBACK = "127.0.0.1"
POLL_S = 0.2  # how often a stopping process is looked at


def find_java() -> str:
    """`$JAVA_HOME/bin/java` when it exists, else `java` on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise BrokerError(
            f"Java not found (no JAVA_HOME and no `java` on PATH); Kafka needs Java {MIN_JAVA}+"
        )
    return found


def parse_java_major(version_output: str) -> int | None:
    """The major version from `java -version` output (`1.8.0_392` is 8, `17.0.15` is 17)."""
    found = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if found is None:
        return None
    major = int(found.group(1))
    if major == 1 and found.group(2) is not None:
        return int(found.group(2))
    return major


def require_java() -> str:
    """The java executable, checked to be version 17 or newer."""
    java = find_java()
    try:
        done = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"could not run `{java} -version`: {exc}") from exc
    output = done.stderr + done.stdout
    major = parse_java_major(output)
    if done.returncode != 0 or major is None:
        first = output.strip().splitlines()[:1] or ["no output"]
        raise BrokerError(f"could not read the Java version from `{java} -version`: {first[0]}")
    if major < MIN_JAVA:
        raise BrokerError(f"Kafka needs Java {MIN_JAVA} or newer; {java} is Java {major}")
    return java


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """Whether a listener already holds `host:port` (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Kafka binds with SO_REUSEADDR too, so only a live listener blocks it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def require_port_free(port: int, host: str = LOOPBACK) -> None:
    """Raise a BrokerError naming the port when something already listens on it."""
    if port_in_use(port, host):
        raise BrokerError(
            f"port {port} on {host} is already in use (another broker or program listens "
            "there); stop it or choose another port with --port"
        )


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port the kernel considers free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connection to `host:port` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs; reaps it if it is our exited child, zombies count as gone."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: ask the kernel below
    else:
        return reaped != pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) != "Z"


def _proc_state(pid: int) -> str | None:
    """The state letter in /proc/<pid>/stat (Linux), or None where /proc is unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def command_line(pid: int) -> list[str] | None:
    """The arguments of process `pid` from /proc, or None where /proc is unavailable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def runs_command(pid: int, required: Sequence[str]) -> bool:
    """Whether `pid` is alive and its arguments include every `required` string.

    Guards against a stale pid file whose pid now belongs to another program.
    """
    if not pid_alive(pid):
        return False
    args = command_line(pid)
    if args is None:
        return True  # no /proc (macOS): trust the pid file
    return all(item in args for item in required)


def read_pid(path: Path) -> int | None:
    """The pid stored in `path`, or None when missing or unreadable."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def tail(path: Path, lines: int = 20) -> list[str]:
    """The last `lines` lines of a text file (empty when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def spawn_detached(argv: Sequence[str], output: Path) -> int:
    """Start `argv` in its own session (it outlives us), stdout and stderr to `output`."""
    out = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        return os.posix_spawn(
            argv[0],
            list(argv),
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, out, 2),
            ],
            setsid=True,
        )
    except OSError as exc:
        raise BrokerError(f"could not start {argv[0]}: {exc}") from exc
    finally:
        os.close(out)


def terminate_group(pid: int, grace: float, what: str) -> None:
    """SIGTERM the process group of `pid` (`what`, for messages), SIGKILL after `grace`
    seconds; return once it exited."""
    for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError as exc:
            raise BrokerError(f"not allowed to signal {what} (pid {pid}): {exc}") from exc
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(POLL_S)
    raise BrokerError(f"{what} (pid {pid}) survived SIGKILL")
