"""The regional swarm's lag probe: admit on one node, time until every other node counts it.

Once per interval the probe admits cost 1 for a fresh key on the next node in turn
(`POST /v1/check`), then polls every other node's `GET /v1/keys/{key}` until its merged
`consumed` includes it. Each (source, target) pair gives one lag, measured from before
the admission was sent (so it errs long by up to one request's round trip, and by up to
one poll interval): same-region pairs measure the local sync delay d, other-region pairs
d + D. The report takes the largest of each as the bound's inputs.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from stress_test.swarm_data import LagSample


class Target(Protocol):
    """A node the swarm talks to: an id for the report and a base URL."""

    @property
    def node_id(self) -> str: ...

    @property
    def url(self) -> str: ...


def _request(url: str, body: dict[str, Any] | None = None, timeout: float = 2.0) -> Any:
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(  # noqa: S310 (http URLs the swarm was given)
        url, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return orjson.loads(response.read())


def consumed(target: Target, key: str) -> int | None:
    """What `target` counts as admitted for `key` (None: it did not answer)."""
    try:
        return int(_request(f"{target.url}/v1/keys/{key}")["consumed"])
    except (urllib.error.URLError, OSError, KeyError, TypeError, ValueError):
        return None


def node_identity(url: str) -> tuple[str, int] | None:
    """(node id, default rule capacity) of the node at `url`, from GET /v1/keys."""
    try:
        view = _request(f"{url.rstrip('/')}/v1/keys/swarm-identity")
        return str(view["node"]), int(view["capacity"])
    except (urllib.error.URLError, OSError, KeyError, TypeError, ValueError):
        return None


@dataclass
class LagProbe:
    """Probes every `interval_s` in a background thread until stop()."""

    targets: list[Target]
    interval_s: float = 1.0
    poll_s: float = 0.005
    give_up_s: float = 15.0
    samples: list[LagSample] = field(default_factory=list)
    admissions: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def start(self) -> None:
        """Probe from now on."""
        self._thread = threading.Thread(target=self._loop, name="lag-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the probe in flight."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.give_up_s + 5)

    def _loop(self) -> None:
        turn = 0
        while not self._stop.is_set():
            started = time.monotonic()
            self.probe_once(self.targets[turn % len(self.targets)], turn)
            turn += 1
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def probe_once(self, source: Target, turn: int) -> None:
        """Admit once on `source`; record when each other node first counts it."""
        key = f"lagprobe-{self._run}-{turn}"
        sent = time.time()
        try:
            answer = _request(f"{source.url}/v1/check", {"key": key, "cost": 1})
        except (urllib.error.URLError, OSError, ValueError):
            return
        if not answer.get("allowed"):
            return
        self.admissions += 1
        waiting = {t.node_id: t for t in self.targets if t.node_id != source.node_id}
        deadline = time.monotonic() + self.give_up_s
        while waiting and time.monotonic() < deadline:
            for node_id, target in list(waiting.items()):
                seen = consumed(target, key)
                if seen is not None and seen >= 1:
                    self.samples.append(
                        LagSample(sent, source.node_id, node_id, time.time() - sent)
                    )
                    del waiting[node_id]
            if waiting and self._stop.wait(self.poll_s):
                return
