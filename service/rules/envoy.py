"""Envoy ratelimit's configuration format (`domain`, nested `descriptors`) read as rules.

Every configured descriptor becomes one named rule carrying its place in the tree
(`Rule.envoy`), so a `--rules` file and the rules topic hold Envoy configuration as they
hold our own rules:

- `rate_limit {unit, requests_per_unit}`: a fixed window of `requests_per_unit` per UTC
  second, minute, hour or day (Envoy ratelimit's own semantics: the count resets at the
  boundary of the unit), or a calendar quota per ISO week (from Monday 00:00 UTC) or
  calendar month. `requests_per_unit: 0` denies every request.
- `rate_limit {unlimited: true}` and descriptors without `rate_limit` answer OK without
  counting (the latter also hold nested descriptors, or allow a value explicitly).
- `shadow_mode: true`: counted, never denied. `rate_limit.name` and `replaces: [{name}]`:
  a matching rule that replaces another named one drops it from the decision.
- `detailed_metric` is accepted and ignored. The unit `year` is refused. Any other field,
  or a bad value, is refused with its path, e.g.
  `descriptors[0].descriptors[1].rate_limit.unit: unknown unit 'fortnight'`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from service.errors import ConfigError
from service.rules.descriptor import MAX_DEPTH, MAX_NAME, MAX_VALUE, EnvoyDescriptor
from service.rules.model import RULE_NAME_MAX, Rule
from service.rules.override import (
    MAX_REQUESTS_PER_UNIT,
    REFUSED_UNITS,
    UNIT_SECONDS,
    window_rule,
)

_TOP = frozenset({"domain", "descriptors"})
_DESCRIPTOR = frozenset(
    {"key", "value", "rate_limit", "shadow_mode", "detailed_metric", "descriptors"}
)
_RATE_LIMIT = frozenset({"unit", "requests_per_unit", "unlimited", "name", "replaces"})
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
NO_LIMIT = 10**12  # the window of rules that never count (unlimited, no rate_limit)
_UNITS = ", ".join(UNIT_SECONDS)


def is_envoy_document(data: Any) -> bool:
    """True for a document in Envoy ratelimit's format (it has a top-level `domain`)."""
    return isinstance(data, Mapping) and "domain" in data


def parse_envoy(documents: Sequence[Any], source: str = "envoy config") -> list[Rule]:
    """The rules of one or more Envoy ratelimit documents (one domain each).

    ConfigError names the document (when several), the field's path and the problem.
    """
    found: list[tuple[EnvoyDescriptor, bool]] = []
    domains: set[str] = set()
    for index, data in enumerate(documents):
        where = f"{source} (document {index + 1})" if len(documents) > 1 else source
        try:
            domain = _document(data, found)
        except _Invalid as exc:
            raise ConfigError(f"{where}: {exc.path}: {exc}") from None
        if domain in domains:
            raise ConfigError(f"{where}: domain: {domain!r} is configured twice")
        domains.add(domain)
    return _rules(found)


class _Invalid(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


def _document(data: Any, found: list[tuple[EnvoyDescriptor, bool]]) -> str:
    """Collect the document's descriptors into `found`; returns its domain."""
    if not isinstance(data, Mapping):
        raise _Invalid("document", "expected a mapping with 'domain' and 'descriptors'")
    _fields(data, _TOP, "")
    domain = _text(data.get("domain"), "domain", MAX_NAME, required=True)
    assert domain is not None
    descriptors = data.get("descriptors", [])
    _walk(domain, descriptors, "descriptors", (), found)
    return domain


def _walk(
    domain: str,
    items: Any,
    where: str,
    parent: tuple[tuple[str, str | None], ...],
    found: list[tuple[EnvoyDescriptor, bool]],
) -> None:
    if items is None:
        return
    if not isinstance(items, list):
        raise _Invalid(where, f"expected a list of descriptors, got {type(items).__name__}")
    if len(parent) >= MAX_DEPTH and items:
        raise _Invalid(where, f"descriptors nest at most {MAX_DEPTH} levels")
    seen: set[tuple[str, str | None]] = set()
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise _Invalid(at, f"expected a mapping, got {type(item).__name__}")
        _fields(item, _DESCRIPTOR, at + ".")
        key = _text(item.get("key"), f"{at}.key", MAX_NAME, required=True)
        value = _text(item.get("value"), f"{at}.value", MAX_VALUE, required=False)
        assert key is not None
        if (key, value) in seen:
            shown = key if value is None else f"{key}={value}"
            raise _Invalid(at, f"descriptor {shown!r} appears twice at this level")
        seen.add((key, value))
        shadow = _flag(item.get("shadow_mode"), f"{at}.shadow_mode")
        _flag(item.get("detailed_metric"), f"{at}.detailed_metric")
        path = (*parent, (key, value))
        limits = _rate_limit(item.get("rate_limit"), f"{at}.rate_limit")
        found.append((EnvoyDescriptor(domain=domain, path=path, **limits), shadow))
        _walk(domain, item.get("descriptors"), f"{at}.descriptors", path, found)


def _rate_limit(data: Any, where: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise _Invalid(where, f"expected a mapping, got {type(data).__name__}")
    _fields(data, _RATE_LIMIT, where + ".")
    out: dict[str, Any] = {}
    name = _text(data.get("name"), f"{where}.name", MAX_NAME, required=False)
    if name is not None:
        out["name"] = name
    replaces = data.get("replaces")
    if replaces is not None:
        if not isinstance(replaces, list):
            raise _Invalid(f"{where}.replaces", "expected a list of {name: ...}")
        names = []
        for i, item in enumerate(replaces):
            at = f"{where}.replaces[{i}]"
            if not isinstance(item, Mapping) or set(item) != {"name"}:
                raise _Invalid(at, "expected {name: <the rate_limit name replaced>}")
            names.append(_text(item["name"], f"{at}.name", MAX_NAME, required=True))
        out["replaces"] = tuple(names)
    if _flag(data.get("unlimited"), f"{where}.unlimited"):
        for field in ("unit", "requests_per_unit"):
            if data.get(field) is not None:
                raise _Invalid(f"{where}.{field}", "an unlimited rate_limit takes no limit")
        out["unlimited"] = True
        return out
    out["unit"] = _unit(data.get("unit"), f"{where}.unit")
    out["requests_per_unit"] = _count(data.get("requests_per_unit"), f"{where}.requests_per_unit")
    return out


def _unit(value: Any, where: str) -> str:
    if value is None:
        raise _Invalid(where, f"required ({_UNITS})")
    if not isinstance(value, str):
        raise _Invalid(where, f"expected a unit name, got {value!r}")
    unit = value.lower()
    if unit in REFUSED_UNITS:
        raise _Invalid(where, f"unit {value!r} is not supported ({_UNITS})")
    if unit not in UNIT_SECONDS:
        raise _Invalid(where, f"unknown unit {value!r} ({_UNITS})")
    return unit


def _count(value: Any, where: str) -> int:
    if value is None:
        raise _Invalid(where, "required (an integer >= 0)")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(where, f"expected an integer, got {value!r}")
    if not 0 <= value <= MAX_REQUESTS_PER_UNIT:
        raise _Invalid(where, f"from 0 to {MAX_REQUESTS_PER_UNIT}, got {value}")
    return value


def _fields(data: Mapping[Any, Any], allowed: frozenset[str], prefix: str) -> None:
    for name in data:
        if name not in allowed:
            raise _Invalid(
                f"{prefix}{name}", f"unknown field (allowed: {', '.join(sorted(allowed))})"
            )


def _text(value: Any, where: str, longest: int, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise _Invalid(where, "required")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Invalid(where, f"expected a string, got {value!r}")
    text = str(value)
    if not text or len(text) > longest:
        raise _Invalid(where, f"1 to {longest} characters, got {len(text)}")
    return text


def _flag(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _Invalid(where, f"expected true or false, got {value!r}")
    return value


def _rules(found: list[tuple[EnvoyDescriptor, bool]]) -> list[Rule]:
    readable = [_readable(descriptor) for descriptor, _ in found]
    rules = []
    for (descriptor, shadow), name in zip(found, readable, strict=True):
        if readable.count(name) > 1 or not _valid_name(name):
            name = _digested(name, descriptor)
        extra = {"envoy": descriptor}
        if descriptor.unit is None or descriptor.requests_per_unit is None:
            rules.append(window_rule(name, "second", NO_LIMIT, shadow=shadow, **extra))
        else:
            limit = max(descriptor.requests_per_unit, 1)  # 0 is enforced by the gRPC service
            rules.append(window_rule(name, descriptor.unit, limit, shadow=shadow, **extra))
    return rules


def _readable(descriptor: EnvoyDescriptor) -> str:
    # As Envoy ratelimit names its keys: domain.key_value.key
    parts = [descriptor.domain]
    parts.extend(key if value is None else f"{key}_{value}" for key, value in descriptor.path)
    return ".".join(parts)


def _valid_name(name: str) -> bool:
    return len(name) <= RULE_NAME_MAX and all(c in _NAME_CHARS for c in name)


def _digested(name: str, descriptor: EnvoyDescriptor) -> str:
    # Of the place alone: the same descriptor keeps its name when its limits change.
    place = [descriptor.domain, *descriptor.path]
    digest = hashlib.sha256(repr(place).encode()).hexdigest()[:10]
    kept = "".join(c if c in _NAME_CHARS else "_" for c in name)[: RULE_NAME_MAX - 11]
    return f"{kept}-{digest}"
