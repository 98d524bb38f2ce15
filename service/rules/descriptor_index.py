"""A request's descriptor to its rule and limit key, as Envoy ratelimit matches them.

Matching walks the configured tree of the request's domain one entry at a time, as Envoy
ratelimit does: at each level the entry `key=value` matches a configured descriptor with
that key and value, else one whose value ends in `*` and prefixes the value (the longest
such prefix), else one with the key and no value; no match at a level, and the descriptor
has no rule. The rule is that of the descriptor reached by the last entry (a rule above
it does not apply: a descriptor with two entries needs a limit two levels down).

The limit key is the domain and every entry, `domain/key1=value1/key2=value2`, with `%`,
`/`, `=`, blanks and control characters percent-encoded (UTF-8), so different descriptors
never share a key; the whole key is at most 256 bytes (`service.engine.MAX_KEY_BYTES`).
Each entry keeps its own value even where the configuration gives none: `to_number` with
no value limits every number on its own, as in Envoy ratelimit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from service.rules.model import Rule, RuleSet

_ESCAPED = frozenset("%/= ")


@dataclass(slots=True)
class _Level:
    rule: Rule | None = None
    exact: dict[tuple[str, str], _Level] = field(default_factory=dict)
    any_value: dict[str, _Level] = field(default_factory=dict)
    prefixed: dict[str, list[tuple[str, _Level]]] = field(default_factory=dict)

    def child(self, key: str, value: str | None) -> _Level:
        if value is None:
            return self.any_value.setdefault(key, _Level())
        if value.endswith("*"):
            prefix = value[:-1]
            options = self.prefixed.setdefault(key, [])
            for held, level in options:
                if held == prefix:
                    return level
            level = _Level()
            options.append((prefix, level))
            options.sort(key=lambda option: -len(option[0]))  # longest prefix first
            return level
        return self.exact.setdefault((key, value), _Level())

    def find(self, key: str, value: str) -> _Level | None:
        found = self.exact.get((key, value))
        if found is not None:
            return found
        for prefix, level in self.prefixed.get(key, ()):
            if value.startswith(prefix):
                return level
        return self.any_value.get(key)


class DescriptorIndex:
    """The rules of Envoy configuration (`Rule.envoy`) by domain, matched like Envoy."""

    def __init__(self, rules: RuleSet) -> None:
        self.domains: dict[str, _Level] = {}
        for rule in rules.rules:
            if rule.envoy is None:
                continue
            level = self.domains.setdefault(rule.envoy.domain, _Level())
            for key, value in rule.envoy.path:
                level = level.child(key, value)
            level.rule = rule

    def match(self, domain: str, entries: Sequence[tuple[str, str]]) -> Rule | None:
        """The rule for a request descriptor of `domain`, or None (no limit applies)."""
        level = self.domains.get(domain)
        for key, value in entries:
            if level is None:
                return None
            level = level.find(key, value)
        return None if level is None else level.rule


def escape(text: str) -> str:
    """`text` with `%`, `/`, `=`, blanks and unprintable characters percent-encoded."""
    if text.isprintable() and not _ESCAPED.intersection(text):
        return text
    return "".join(
        c
        if c.isprintable() and c not in _ESCAPED
        else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
        for c in text
    )


def limit_key(domain: str, entries: Sequence[tuple[str, str]]) -> str:
    """The limit key of a descriptor: `domain/key1=value1/...`, escaped (see the module)."""
    return "/".join([escape(domain), *(f"{escape(k)}={escape(v)}" for k, v in entries)])
