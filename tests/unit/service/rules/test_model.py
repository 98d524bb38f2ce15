"""Limit rules: parsing, matching by prefix and tier, named limits, and clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service.errors import ConfigError, UnknownRule
from service.rules.codec import encode_rule
from service.rules.document import load_rules, parse_rules
from service.rules.model import DEFAULT_RULE, Rule, default_rule

FALLBACK = default_rule("token_bucket", 10.0, 20, 1.0)

DOCUMENT = """
default: {rate: 5, burst: 10}
rules:
  - {name: partners, prefix: "partner-", rate: 100, burst: 200}
  - {name: gold, tier: gold, rate: 50, burst: 50}
  - {name: exports, algorithm: sliding_window, limit: 100, window_s: 60}
  - {name: daily, algorithm: fixed_window, limit: 1000, window_s: 86400, shadow: true}
"""


def test_parse_and_match_prefix_tier_default() -> None:
    rules = parse_rules(yaml.safe_load(DOCUMENT), FALLBACK)

    assert rules.default.name == DEFAULT_RULE
    assert (rules.default.rate, rules.default.burst) == (5, 10)
    assert rules.match("partner-7").name == "partners"
    assert rules.match("alice", "gold").name == "gold"
    assert rules.match("alice", "silver").name == DEFAULT_RULE
    assert rules.match("alice").name == DEFAULT_RULE
    # The first matching rule wins: a partner in the gold tier is a partner.
    assert rules.match("partner-7", "gold").name == "partners"
    assert [r.name for r in rules.all()] == ["default", "partners", "gold", "exports", "daily"]


def test_named_limits_and_windows() -> None:
    rules = parse_rules(yaml.safe_load(DOCUMENT), FALLBACK)

    exports = rules.get("exports")
    assert exports.algorithm == "sliding_window"
    assert exports.capacity == 100
    assert exports.window == 60
    daily = rules.get("daily")
    assert daily.algorithm == "fixed_window"
    assert daily.shadow
    partners = rules.get("partners")
    assert partners.capacity == 200
    assert partners.window == 2  # a bucket refills fully in burst / rate seconds
    assert rules.get("default") is rules.default


def test_unknown_rule_name_lists_the_known_ones() -> None:
    rules = parse_rules(yaml.safe_load(DOCUMENT), FALLBACK)

    with pytest.raises(UnknownRule, match="'silver'") as caught:
        rules.get("silver")
    assert "partners" in str(caught.value)
    assert caught.value.http_status == 404


@pytest.mark.parametrize("data", [None, {}, {"rules": []}])
def test_empty_documents_use_the_fallback_default(data: Any) -> None:
    rules = parse_rules(data, FALLBACK)

    assert rules.default == FALLBACK
    assert rules.rules == ()


def test_default_rule_from_settings() -> None:
    bucket = default_rule("token_bucket", 2.0, 4, 1.0)
    window = default_rule("sliding_window", 2.0, 4, 30.0)

    assert (bucket.rate, bucket.burst, bucket.capacity, bucket.window) == (2.0, 4, 4, 2.0)
    assert (window.limit, window.window_s, window.rate) == (4, 30.0, None)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"rules": [{"name": "a", "rate": 1, "burst": 1}, {"name": "a", "rate": 2, "burst": 2}]},
            "rule names must be unique, repeated: a",
        ),
        (
            {"rules": [{"name": "default", "rate": 1, "burst": 1}]},
            "repeated: default",
        ),
        ({"rules": [{"name": "a", "rate": 1}]}, "a token_bucket rule needs rate and burst"),
        (
            {
                "rules": [
                    {
                        "name": "w",
                        "algorithm": "fixed_window",
                        "limit": 5,
                        "window_s": 1,
                        "rate": 3,
                    }
                ]
            },
            "rate and burst belong to token_bucket rules",
        ),
        (
            {"rules": [{"name": "w", "algorithm": "sliding_window", "limit": 5}]},
            "needs limit and window_s",
        ),
        (
            {"rules": [{"name": "b", "rate": 1, "burst": 1, "limit": 3}]},
            "limit and window_s belong to window rules",
        ),
        (
            {"rules": [{"name": "a", "prefix": "p-", "tier": "gold", "rate": 1, "burst": 1}]},
            "match by prefix or by tier, not both",
        ),
        ({"default": {"rate": 1, "burst": 1, "prefix": "x"}}, "no prefix or tier"),
        ({"rules": [{"name": "a", "rate": 0, "burst": 1}]}, "rules.0.rate"),
        ({"rules": [{"name": "a b", "rate": 1, "burst": 1}]}, "rules.0.name"),
        ({"rules": [{"name": "a", "rate": 1, "burst": 1, "colour": "red"}]}, "colour"),
        ({"limits": []}, "limits"),
    ],
)
def test_bad_documents_are_explained(data: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_rules(data, FALLBACK, source="rules file r.yaml")

    message = str(caught.value)
    assert message.startswith("rules file r.yaml: ")
    assert expected in message


@pytest.mark.parametrize("data", [["a", "b"], "just text", 3])
def test_a_document_must_be_a_mapping(data: Any) -> None:
    with pytest.raises(ConfigError, match="expected a mapping with 'default' and 'rules'"):
        parse_rules(data, FALLBACK)


def test_load_rules_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(DOCUMENT)

    rules = load_rules(path, FALLBACK)

    assert rules.get("gold").tier == "gold"


def test_load_rules_without_a_file_is_the_default_alone() -> None:
    rules = load_rules(None, FALLBACK)

    assert rules.all() == (FALLBACK,)


def test_invalid_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("default: {rate: 1, burst: [\n")

    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        load_rules(path, FALLBACK)
    assert str(path) in str(caught.value)


def test_invalid_rules_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("rules:\n  - {name: a, rate: 1}\n")

    with pytest.raises(ConfigError, match=r"bad\.yaml: .*needs rate and burst"):
        load_rules(path, FALLBACK)


def test_unreadable_rules_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: No such file"):
        load_rules(tmp_path / "missing.yaml", FALLBACK)


def test_rules_are_frozen() -> None:
    rule = Rule(name="x", rate=1, burst=1)

    with pytest.raises(ValueError, match="frozen"):
        rule.rate = 2  # type: ignore[misc]


CALENDAR = """
rules:
  - {name: monthly, prefix: "m-", algorithm: calendar, period: month, limit: 10000}
  - {name: weekly, algorithm: calendar, period: week, limit: 500, shadow: true}
"""


def test_calendar_rules_state_their_period_at_its_longest() -> None:
    rules = parse_rules(yaml.safe_load(CALENDAR), FALLBACK)
    monthly = rules.get("monthly")
    assert (monthly.algorithm, monthly.period, monthly.capacity) == ("calendar", "month", 10000)
    assert monthly.window == 31 * 86_400  # RateLimit-Policy w=, never a decision's reset
    assert rules.get("weekly").window == 7 * 86_400
    assert rules.match("m-alice").name == "monthly"
    # The period is part of the limits (a changed period is a new budget) ...
    assert monthly.limits[-1] == "month"


def test_rules_without_a_period_keep_their_limits_and_wire_digests() -> None:
    # ... and other rules' limits stay what earlier nodes digest into wire names.
    rules = parse_rules(yaml.safe_load(DOCUMENT), FALLBACK)
    assert rules.get("exports").limits == ("sliding_window", None, None, 100, 60.0)
    assert rules.get("partners").limits == ("token_bucket", 100.0, 200, None, None)
    # Rules topic records of such rules stay readable by nodes that know no `period`.
    assert b"period" not in encode_rule(rules.get("exports"))
    assert b'"period":"month"' in encode_rule(
        parse_rules(yaml.safe_load(CALENDAR), FALLBACK).get("monthly")
    )


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"algorithm": "calendar", "limit": 5}, "a calendar rule needs limit and period"),
        ({"algorithm": "calendar", "period": "month"}, "a calendar rule needs limit and period"),
        (
            {"algorithm": "calendar", "period": "month", "limit": 5, "window_s": 60},
            "a calendar rule takes limit and period only",
        ),
        (
            {"algorithm": "calendar", "period": "month", "limit": 5, "rate": 1, "burst": 1},
            "a calendar rule takes limit and period only",
        ),
        ({"algorithm": "calendar", "period": "year", "limit": 5}, "rules.0.period"),
        ({"algorithm": "calendar", "period": "month", "limit": 0}, "rules.0.limit"),
        ({"algorithm": "calendar", "period": "month", "limit": 10**13}, "rules.0.limit"),
        (
            {"algorithm": "fixed_window", "limit": 5, "window_s": 60, "period": "month"},
            "period belongs to calendar rules",
        ),
        ({"rate": 1, "burst": 1, "period": "day"}, "period belongs to calendar rules"),
    ],
)
def test_bad_calendar_rules_are_explained(rule: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_rules({"rules": [{"name": "c", **rule}]}, FALLBACK)
    assert expected in str(caught.value)
