"""What the local broker and MirrorMaker share: a detached Java process owning a data dir
(its pid file, output and log), started with the project's JVM flags and stopped from
any process."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from service.local import jars, process
from service.local.jars import Progress

LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")


class JavaDaemon(ABC):
    """One Java process per data dir: `<stem>.pid`, `<stem>.out` and `logs/server.log`.

    Subclasses say which pid runs (`running_pid`, checked against its command line) and
    how to start it; `down()` and the JVM flags are the same for all.
    """

    what = "the process"  # for messages: "the broker", "MirrorMaker"

    def __init__(
        self,
        data_dir: Path,
        jars_dir: Path,
        stem: str,
        *,
        heap: str,
        stop_timeout: float,
        progress: Progress | None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.jars_dir = jars_dir.resolve()
        self.heap = heap
        self.stop_timeout = stop_timeout
        self._progress = progress
        self.pid_file = self.data_dir / f"{stem}.pid"
        self.output_log = self.data_dir / f"{stem}.out"
        self.server_log = self.data_dir / "logs" / "server.log"

    @abstractmethod
    def running_pid(self) -> int | None:
        """The pid of this data dir's process while it runs (by its pid file), else None."""

    def down(self) -> int | None:
        """Stop it (SIGTERM, SIGKILL after `stop_timeout`); return its pid if it ran."""
        if not self.data_dir.is_dir():
            return None
        with jars.file_lock(self.data_dir / ".lock"):
            pid = self.running_pid()
            if pid is None:
                self.pid_file.unlink(missing_ok=True)
                return None
            self._say(f"stopping {self.what} (pid {pid}) ...")
            process.terminate_group(pid, self.stop_timeout, self.what)
            self.pid_file.unlink(missing_ok=True)
            return pid

    def java_args(self, java: str) -> list[str]:
        """`java` with the heap, GC and logging flags and the jars on the classpath."""
        return [
            java,
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.server_log.parent}",
            "-cp",
            str(self.jars_dir / "*"),
        ]

    def spawn(self, argv: list[str]) -> int:
        """Start `argv` detached, output to `<stem>.out`; write the pid file."""
        self.server_log.parent.mkdir(parents=True, exist_ok=True)
        pid = process.spawn_detached(argv, self.output_log)
        self.pid_file.write_text(f"{pid}\n")
        return pid

    def log_tail(self) -> str:
        """The last lines of its log and output, for error messages."""
        lines = process.tail(self.server_log) + process.tail(self.output_log)
        return "\n".join(lines[-20:]) or f"(nothing logged in {self.server_log})"

    def _say(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)
