"""Background work under supervision: a task that fails is logged with its traceback,
counted, and restarted with backoff; one that keeps failing makes the node not ready,
with the reason, until it has run a while without failing again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import Counter

from service.metrics import Metrics

log = logging.getLogger("ratelimiter.supervisor")

RESTART_BACKOFF_S = 0.1  # first restart delay, doubled per failure
MAX_BACKOFF_S = 5.0
FAILURES_TO_FAIL = 3  # failures within FAILURE_WINDOW_S that make the node not ready
FAILURE_WINDOW_S = 60.0
RECOVERY_S = 5.0  # running this long without failing clears the failure

Work = Callable[[], Awaitable[None]]
Spawn = Callable[[str, Work], None]


@dataclass
class _Watch:
    backoff: float = RESTART_BACKOFF_S
    recent: deque[float] = field(default_factory=deque)
    generation: int = 0


class Supervisor:
    """Runs named background tasks; `failing` says why the node should not be ready."""

    def __init__(self, metrics: Metrics, on_change: Callable[[], None] = lambda: None) -> None:
        self.failures = Counter(
            "ratelimiter_task_failures",
            "Background tasks that raised unexpectedly and were restarted, by task",
            ["task"],
            registry=metrics.registry,
        )
        self._on_change = on_change
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failing: dict[str, str] = {}

    @property
    def failing(self) -> str | None:
        """Why background work is failing (None while it is not)."""
        return "; ".join(self._failing[name] for name in sorted(self._failing)) or None

    def spawn(self, name: str, work: Work) -> None:
        """Run `work()` as task `name`, restarting it whenever it raises."""
        self._tasks[name] = asyncio.create_task(self._run(name, work), name=name)

    async def stop(self) -> None:
        """Cancel every task and wait for them."""
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, name: str, work: Work) -> None:
        watch = _Watch()
        while True:
            try:
                await work()
                return
            except Exception as exc:
                self._failed(name, watch, exc)
            await asyncio.sleep(watch.backoff)
            watch.backoff = min(MAX_BACKOFF_S, watch.backoff * 2)
            asyncio.get_running_loop().call_later(
                RECOVERY_S, self._recovered, name, watch, watch.generation
            )

    def _failed(self, name: str, watch: _Watch, exc: Exception) -> None:
        log.error("background task %s failed; restarting it", name, exc_info=exc)
        self.failures.labels(name).inc()
        watch.generation += 1
        now = time.monotonic()
        watch.recent.append(now)
        while watch.recent and now - watch.recent[0] > FAILURE_WINDOW_S:
            watch.recent.popleft()
        if len(watch.recent) >= FAILURES_TO_FAIL and name not in self._failing:
            self._failing[name] = (
                f"background task {name!r} failed {len(watch.recent)} times within "
                f"{FAILURE_WINDOW_S:g}s, last: {exc!r}"
            )
            log.error("not ready: %s", self._failing[name])
            self._on_change()

    def _recovered(self, name: str, watch: _Watch, generation: int) -> None:
        if watch.generation != generation or self._tasks.get(name) is None:
            return  # it failed again since, or it was stopped
        watch.backoff = RESTART_BACKOFF_S
        watch.recent.clear()
        if self._failing.pop(name, None) is not None:
            log.info("background task %s runs again without failing", name)
            self._on_change()
