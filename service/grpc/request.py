"""A `RateLimitRequest` read and checked: its descriptors as entries, hits and overrides.

`hits_addend` is the cost: a descriptor's own (a `UInt64Value`, so 0 can be told from
unset: 0 looks without consuming) wins over the request's; the request's is a plain
`uint32` where Envoy sends 0 for "not set", so there 0 means 1 as in Envoy ratelimit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.engine import validate_key
from service.errors import BadRequest
from service.http.contract import MAX_COST
from service.rules.descriptor_index import limit_key
from service.rules.override import UNIT_SECONDS

MAX_DESCRIPTORS = 64  # in one request
MAX_ENTRIES = 16  # in one descriptor (configured descriptors nest at most this deep)
# RateLimitResponse.RateLimit.Unit numbers (rls.proto) by name, and back.
UNITS = {"second": 1, "minute": 2, "hour": 3, "day": 4, "week": 7, "month": 5}
UNIT_NAMES = {number: name for name, number in UNITS.items()}
REFUSED_NUMBERS = {6: "year"}


@dataclass(frozen=True, slots=True)
class Override:
    """A descriptor's own limit (honoured with --allow-limit-override)."""

    unit: str
    requests_per_unit: int


@dataclass(frozen=True, slots=True)
class Asked:
    """One descriptor of a request: what it names, its limit key, its cost."""

    entries: tuple[tuple[str, str], ...]
    key: str
    hits: int
    override: Override | None


def read_request(request: Any) -> tuple[str, list[Asked]]:
    """(domain, descriptors) of a RateLimitRequest; BadRequest says what is wrong."""
    domain: str = request.domain
    if not domain:
        raise BadRequest("domain must not be empty")
    if not request.descriptors:
        raise BadRequest("descriptors must not be empty")
    if len(request.descriptors) > MAX_DESCRIPTORS:
        raise BadRequest(f"at most {MAX_DESCRIPTORS} descriptors in one request")
    default_hits = request.hits_addend or 1
    asked = []
    for i, descriptor in enumerate(request.descriptors):
        where = f"descriptors[{i}]"
        if not descriptor.entries:
            raise BadRequest(f"{where}.entries must not be empty")
        if len(descriptor.entries) > MAX_ENTRIES:
            raise BadRequest(f"{where}: at most {MAX_ENTRIES} entries")
        entries = []
        for j, entry in enumerate(descriptor.entries):
            if not entry.key:
                raise BadRequest(f"{where}.entries[{j}].key must not be empty")
            entries.append((entry.key, entry.value))
        key = limit_key(domain, entries)
        try:
            validate_key(key, f"{where}: the limit key (domain and entries)")
        except BadRequest as exc:
            raise BadRequest(f"{exc} ({len(key.encode())} bytes)") from None
        hits = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else default_hits
        if hits > MAX_COST:
            raise BadRequest(f"{where}.hits_addend: at most {MAX_COST}, got {hits}")
        override = _override(descriptor, where) if descriptor.HasField("limit") else None
        asked.append(Asked(tuple(entries), key, hits, override))
    return domain, asked


def _override(descriptor: Any, where: str) -> Override:
    limit = descriptor.limit
    unit = UNIT_NAMES.get(limit.unit)
    if unit is None:
        if limit.unit in REFUSED_NUMBERS:
            raise BadRequest(
                f"{where}.limit.unit: unit {REFUSED_NUMBERS[limit.unit]} is not "
                f"supported ({', '.join(UNIT_SECONDS)})"
            )
        raise BadRequest(f"{where}.limit.unit: give one of {', '.join(UNIT_SECONDS)}")
    return Override(unit, int(limit.requests_per_unit))
