"""Records of the rules topic: keyed by rule name, the rule as versioned JSON, null deletes.

Records are keyed by the rule name; the value is the rule as versioned JSON,
`{"v":1,"name":"premium","algorithm":"token_bucket","rate":100.0,"burst":200,...}`,
and a tombstone (null value) deletes the override.
"""

from __future__ import annotations

import orjson

from service.errors import PoisonRecord
from service.kafka.record import LogRecord
from service.rules.model import InvalidRule, Rule, rule_from_mapping

VERSION = 1


# A record of the rules topic (value None: a tombstone).
RuleRecord = LogRecord


def encode_rule(rule: Rule) -> bytes:
    """The record value of a rule: versioned compact JSON."""
    return orjson.dumps({"v": VERSION, **rule.model_dump(exclude_none=True)})


def decode_rule(record: RuleRecord) -> tuple[str, Rule | None]:
    """(rule name, rule or None for a deletion); PoisonRecord(kind, message) when unusable."""
    if not record.key:
        raise PoisonRecord("bad_key", "rules records are keyed by the rule name")
    try:
        name = record.key.decode("utf-8")
    except UnicodeDecodeError:
        raise PoisonRecord("bad_key", "a rule name key must be UTF-8") from None
    if record.value is None:
        return name, None
    try:
        doc = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        raise PoisonRecord("bad_json", f"rule {name!r}: not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise PoisonRecord("bad_shape", f"rule {name!r}: the value is not a JSON object")
    version = doc.pop("v", None)
    if version != VERSION:
        raise PoisonRecord("unknown_version", f"rule {name!r}: unknown version {version!r}")
    try:
        return name, rule_from_mapping(doc, name)
    except InvalidRule as exc:
        raise PoisonRecord("invalid_rule", str(exc)) from exc
