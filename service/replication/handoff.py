"""A live peer's state handed to a new node: the peer streams every key's state with the
offsets it covers (GET /v1/state), the new node loads it and reads the topic only from
those offsets, as a restarted node does from its snapshot file (`snapshot.py`).

Why a fuzzy copy is safe: the offsets are taken before any key is exported, so the state
covers at least every record before them; whatever it holds beyond them (later records,
the peer's own admissions not yet published) is real consumption, and merges are
idempotent and monotone, so reading those records again changes nothing.

The stream is newline-delimited JSON (orjson): a header line (version, topic, partitions,
offsets, the peer's replica id and the limits of each limiter), then lines of at most
`CHUNK_KEYS` rows (`Limiter.export_keys`), then an end line with the row count, so a cut
stream is told from a whole one. The peer yields to its event loop between lines. The
receiver checks every row's shape and types before loading it (a peer of another version,
or a broken one, is refused, not trusted); on any problem it keeps what it loaded (real
consumption) and reads the whole topic instead, so nothing is lost either way.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, NamedTuple

import httpx
import orjson

from crdt.bucket import NEG_INF
from crdt.limiter import Limiter
from crdt.windows import WindowStore
from service.engine import MAX_KEY_BYTES, Engine
from service.replication.snapshot import limits_of

log = logging.getLogger("ratelimiter.handoff")

VERSION = 1
PATH = "/v1/state"
MEDIA_TYPE = "application/x-ndjson"
CHUNK_KEYS = 1000  # rows per line: about 1 ms of exporting and encoding on the peer
_NUM = (int, float)


class HandoffError(Exception):
    """The peer's stream cannot be used (unreachable, refused, another topic, cut, bad).
    `loaded` keys were loaded before the problem showed (they stay: real consumption)."""

    loaded = 0


class Handoff(NamedTuple):
    """What a new node took from a peer."""

    writer: str  # the peer's replica: its own cells are loaded as that peer's
    offsets: dict[int, int]  # per partition: every record before it is in the state loaded
    keys: int  # keys loaded


# -- the peer --------------------------------------------------------------------------


async def state_lines(
    engine: Engine, topic: str, partitions: int, offsets: Mapping[int, int]
) -> AsyncIterator[bytes]:
    """The stream a peer serves: header, row chunks, end. Take `offsets` (what the state
    has merged) before the first key is exported; the caller passes a copy made then."""
    limiters = dict(engine.limiters)
    header = {
        "v": VERSION,
        "topic": topic,
        "partitions": partitions,
        "offsets": {str(p): o for p, o in offsets.items()},
        "writer": engine.replica,
        "limiters": {name: limits_of(limiter) for name, limiter in limiters.items()},
    }
    yield orjson.dumps(header) + b"\n"
    rows = 0
    for name, limiter in limiters.items():
        keys = limiter.keys()  # the keys held now; those deleted meanwhile are left out
        for first in range(0, len(keys), CHUNK_KEYS):
            await asyncio.sleep(0)  # requests are answered between chunks
            chunk = limiter.export_keys(keys[first : first + CHUNK_KEYS])
            rows += len(chunk)
            yield orjson.dumps({"l": name, "rows": chunk}) + b"\n"
    yield orjson.dumps({"end": rows}) + b"\n"


# -- the new node ----------------------------------------------------------------------


async def load_from_peer(
    url: str, token: str, engine: Engine, topic: str, partitions: int, timeout_s: float
) -> Handoff:
    """Load the state `url` (a peer's base URL) streams into `engine`'s limiters; raises
    HandoffError when the stream is refused or unusable (what was loaded stays loaded)."""
    loader = _Loader(engine, topic, partitions)
    try:
        await _read(url, token, loader, timeout_s)
    except HandoffError as exc:
        exc.loaded = loader.keys
        raise
    return Handoff(loader.writer, loader.offsets, loader.keys)


async def _read(url: str, token: str, loader: _Loader, timeout_s: float) -> None:
    headers = {"Authorization": f"Bearer {token}", "Accept": MEDIA_TYPE}
    try:
        async with (
            asyncio.timeout(timeout_s),
            httpx.AsyncClient(timeout=timeout_s) as client,
            client.stream("GET", url.rstrip("/") + PATH, headers=headers) as response,
        ):
            if response.status_code != 200:
                body = (await response.aread())[:300].decode("utf-8", "replace")
                raise HandoffError(f"answered {response.status_code}: {body}")
            pending = b""
            async for data in response.aiter_bytes():
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    try:
                        loader.line(_parse(line))
                    except (TypeError, ValueError, KeyError, AttributeError) as exc:
                        # Whatever the checks did not name: still the peer's bad line.
                        raise HandoffError(f"a malformed line: {exc!r}") from exc
    except (httpx.HTTPError, OSError) as exc:
        raise HandoffError(f"reading the stream failed: {exc!r}") from exc
    except TimeoutError as exc:
        raise HandoffError(f"not read within {timeout_s}s") from exc
    if pending or not loader.ended:
        raise HandoffError("the stream was cut before its end line")


def _parse(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise HandoffError(f"a line is not JSON: {exc}") from exc


class _Loader:
    """Checks the header line, then loads each chunk of rows as it arrives."""

    def __init__(self, engine: Engine, topic: str, partitions: int) -> None:
        self.engine, self.topic, self.partitions = engine, topic, partitions
        self.writer = ""
        self.offsets: dict[int, int] = {}
        self.targets: dict[str, Limiter] = {}
        self.started = self.ended = False
        self.rows = self.keys = 0

    def header(self, header: Any) -> None:
        topic, partitions = self.topic, self.partitions
        if not isinstance(header, dict) or header.get("v") != VERSION:
            raise HandoffError(f"not a version {VERSION} state stream")
        if header.get("topic") != topic or header.get("partitions") != partitions:
            raise HandoffError(
                f"the peer reads topic {header.get('topic')!r} with "
                f"{header.get('partitions')!r} partitions, not {topic!r} with {partitions}"
            )
        writer, offsets, limits = (
            header.get("writer"),
            header.get("offsets"),
            header.get("limiters"),
        )
        if not isinstance(writer, str) or not writer or writer == self.engine.replica:
            raise HandoffError("the header names no other replica as its writer")
        if not isinstance(limits, dict) or not isinstance(offsets, dict):
            raise HandoffError("the header has no limiters or offsets")
        for p, offset in offsets.items():
            if not (p.isascii() and p.isdigit() and int(p) < partitions) or not (
                type(offset) is int and offset >= 0
            ):
                raise HandoffError(f"bad offset {offset!r} for partition {p!r}")
            self.offsets[int(p)] = offset
        # A limiter kept under other limits here (its rule changed) is skipped: its keys
        # start full, as in any change of a rule's limits (and as with the snapshot file).
        for name, kept in limits.items():
            limiter = self.engine.limiters.get(name)
            if limiter is not None and limits_of(limiter) == kept:
                self.targets[name] = limiter
            else:
                log.info("handoff: limiter %r skipped (not here, or other limits)", name)
        self.writer = writer
        self.started = True

    def line(self, doc: Any) -> None:
        if not self.started:
            self.header(doc)
            return
        if self.ended:
            raise HandoffError("lines after the end line")
        if not isinstance(doc, dict):
            raise HandoffError("a line is not an object")
        if "end" in doc:
            if doc["end"] != self.rows:
                raise HandoffError(f"{self.rows} rows read, the peer sent {doc['end']!r}")
            self.ended = True
            return
        rows = doc.get("rows")
        if not isinstance(rows, list):
            raise HandoffError("a chunk line has no rows")
        self.rows += len(rows)
        limiter = self.targets.get(doc.get("l"))  # type: ignore[arg-type]
        if limiter is None:
            return
        check = window_row if _is_window(limiter) else bucket_row
        try:
            checked = [check(row) for row in rows]
        except (TypeError, ValueError) as exc:
            raise HandoffError(f"a row of limiter {doc.get('l')!r} is malformed: {exc}") from exc
        collecting = gc.isenabled()
        gc.disable()  # long-lived objects without cycles: see snapshot.load_snapshot
        try:
            self.keys += limiter.import_keys(checked, self.writer)
        finally:
            if collecting:
                gc.enable()


def _is_window(limiter: Limiter) -> bool:
    return isinstance(limiter, WindowStore)


# Row checks: the shapes `export_keys` writes, with every number a number and every dict
# one of replica -> number; JSON turned tuples into lists and -inf into null.


def _key(value: Any) -> str:
    if type(value) is not str or not value or len(value.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"bad key {value!r}")
    return value


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"{value!r} is not an integer")
    return value


def _num(value: Any) -> int | float:
    if type(value) not in _NUM:
        raise TypeError(f"{value!r} is not a number")
    return value  # type: ignore[no-any-return]


def _time(value: Any) -> float:
    return NEG_INF if value is None else float(_num(value))


def _cells(value: Any) -> dict[str, int]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise TypeError(f"{value!r} is not an object of cells")
    for replica, cell in value.items():
        if type(cell) not in _NUM or not replica:
            raise ValueError(f"bad cell {replica!r}: {cell!r}")
    return value


def _pairs(value: Any) -> dict[str, tuple[int, int]]:
    if type(value) is not dict:
        raise TypeError(f"{value!r} is not an object of pairs")
    pairs = {}
    for replica, pair in value.items():
        if type(pair) is not list or len(pair) != 2 or not replica:
            raise ValueError(f"bad pair {replica!r}: {pair!r}")
        pairs[replica] = (_num(pair[0]), _num(pair[1]))
    return pairs  # type: ignore[return-value]


def bucket_row(row: Any) -> Any:
    """The row checked, as `import_keys` takes it (raises TypeError or ValueError)."""
    if type(row) is list and 5 <= len(row) <= 6:
        # The common shapes (the newest epoch only), checked inline: a million of them
        # are loaded at a time. The list is returned as it is, a null floor made -inf.
        key, e, floor, used, own = row[0], row[1], row[2], row[3], row[4]
        if (
            type(key) is str
            and key
            and (len(key) <= MAX_KEY_BYTES // 4 or len(key.encode()) <= MAX_KEY_BYTES)
            and type(e) is int
            and type(used) in _NUM
            and type(own) in _NUM
        ):
            if floor is None:
                row[2] = NEG_INF
            elif type(floor) not in _NUM:
                raise TypeError(f"{floor!r} is not a number")
            if len(row) == 6:
                _cells(row[5])
            return row
    return _bucket_row(row)


def _bucket_row(row: Any) -> tuple[Any, ...]:
    if type(row) is not list or len(row) not in (5, 6, 12):
        raise ValueError(f"a bucket row has 5, 6 or 12 fields, got {row!r:.80}")
    head = (_key(row[0]), _int(row[1]), _time(row[2]), _num(row[3]), _num(row[4]))
    if len(row) == 5:
        return head
    remote = _cells(row[5])
    if len(row) == 6:
        return (*head, remote)
    own_n, remote_n, older, sealed, base, late = row[6:]
    if type(older) is not list:
        raise TypeError("older epochs are not a list")
    epochs = []
    for epoch in older:
        if type(epoch) is not list or len(epoch) != 5:
            raise ValueError(f"bad older epoch {epoch!r:.80}")
        e, floor, cells, refunds, used = epoch
        epochs.append((_int(e), _time(floor), _cells(cells), _cells(refunds) or None, _num(used)))
    return (
        *head,
        remote,
        _num(own_n),
        _cells(remote_n),
        epochs,
        _cells(sealed),
        _time(base),
        _pairs(late),
    )


def window_row(row: Any) -> tuple[Any, ...]:
    if type(row) is not list or len(row) != 6:
        raise ValueError(f"a window row has 6 fields, got {row!r:.80}")
    key, cur, cur_cells, cur_used, prev_cells, prev_used = row
    return (
        _key(key),
        _int(cur),
        _pairs(cur_cells),
        _num(cur_used),
        _pairs(prev_cells),
        _num(prev_used),
    )
