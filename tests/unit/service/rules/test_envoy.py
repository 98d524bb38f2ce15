"""Envoy ratelimit configuration as rules: the README examples load, matching follows
Envoy's order, descriptors map to distinct limit keys, and bad files name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service.errors import ConfigError
from service.rules.codec import RuleRecord, decode_rule, encode_rule
from service.rules.descriptor import EnvoyDescriptor
from service.rules.descriptor_index import DescriptorIndex, limit_key
from service.rules.document import load_rules
from service.rules.envoy import parse_envoy
from service.rules.model import Rule, RuleSet, default_rule

FIXTURES = Path(__file__).parents[3] / "fixtures" / "envoy"
FALLBACK = default_rule("token_bucket", 10.0, 20, 1.0)


def index_of(name: str) -> DescriptorIndex:
    return DescriptorIndex(load_rules(FIXTURES / name, FALLBACK))


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_readme_example_loads_as_rules(path: Path) -> None:
    rules = load_rules(path, FALLBACK)
    envoy = [rule for rule in rules.rules if rule.envoy is not None]
    assert envoy, "every example configures descriptors"
    assert all(rule.algorithm == "fixed_window" and rule.prefix is None for rule in envoy)
    # Rules travel through the rules topic with their place in the tree.
    for rule in envoy:
        assert decode_rule(RuleRecord(rule.name.encode(), encode_rule(rule))) == (rule.name, rule)


def found(index: DescriptorIndex, domain: str, *entries: tuple[str, str]) -> Rule:
    rule = index.match(domain, entries)
    assert rule is not None, f"no rule for {domain} {entries}"
    return rule


def place(rule: Rule) -> EnvoyDescriptor:
    assert rule.envoy is not None
    return rule.envoy


def test_example1_exact_values_and_units() -> None:
    index = index_of("example1.yaml")
    rule = found(index, "mongo_cps", ("database", "users"))
    assert rule.name == "mongo_cps.database_users"
    assert (rule.limit, rule.window_s) == (500, 1.0)
    assert index.match("mongo_cps", [("database", "other")]) is None
    assert index.match("other_domain", [("database", "users")]) is None


def test_example2_nested_and_key_only_descriptors() -> None:
    index = index_of("example2.yaml")
    marketing = found(index, "messaging", ("message_type", "marketing"), ("to_number", "206"))
    anyone = found(index, "messaging", ("to_number", "206"))
    assert (marketing.limit, marketing.window_s) == (5, 86_400.0)
    assert (anyone.limit, anyone.window_s) == (100, 86_400.0)
    # The level above is a placeholder without a limit of its own.
    assert place(found(index, "messaging", ("message_type", "marketing"))).unit is None


def test_example3_exact_value_beats_key_only() -> None:
    index = index_of("example3.yaml")
    assert (
        place(found(index, "edge_proxy_per_ip", ("remote_address", "50.0.0.5"))).requests_per_unit
        == 0
    )
    assert found(index, "edge_proxy_per_ip", ("remote_address", "50.0.0.1")).limit == 10


def test_example4_matches_by_depth() -> None:
    request = [("key", "value"), ("subkey", "subvalue")]
    assert index_of("example4a.yaml").match("example4", request) is None
    assert found(index_of("example4b.yaml"), "example4", *request).limit == 300


def test_example5_unlimited_example6_shadow_example7_replaces() -> None:
    assert place(found(index_of("example5.yaml"), "internal", ("ldap", "x"))).unlimited
    six = index_of("example6.yaml")
    assert found(six, "example6", ("service", "auth"), ("user", "user-a")).shadow
    user_b = found(six, "example6", ("service", "auth"), ("user", "user-b"))
    assert (user_b.shadow, user_b.limit) == (False, 20)
    seven = index_of("example7.yaml")
    first = place(found(seven, "example7", ("key_1", "value_1"), ("user", "bkthomps")))
    second = place(found(seven, "example7", ("key_2", "value_2"), ("user", "bkthomps")))
    assert first.name == "specific_limit"
    assert second.replaces == ("specific_limit",)


def test_example8_and_9_key_only_and_wildcard() -> None:
    eight = index_of("example8.yaml")
    assert found(eight, "example8", ("key1", "value1")).limit == 20
    assert found(eight, "example8", ("key1", "other")).limit == 10
    nine = index_of("example9.yaml")
    assert nine.match("example9", [("key1", "value_2")]) is not None
    assert nine.match("example9", [("key1", "valu")]) is None


def test_the_longest_wildcard_prefix_wins() -> None:
    rules = parse_envoy(
        [
            {
                "domain": "d",
                "descriptors": [
                    {
                        "key": "path",
                        "value": "/api/*",
                        "rate_limit": {"unit": "second", "requests_per_unit": 1},
                    },
                    {
                        "key": "path",
                        "value": "/api/v2/*",
                        "rate_limit": {"unit": "second", "requests_per_unit": 2},
                    },
                ],
            }
        ]
    )
    index = DescriptorIndex(RuleSet(default=FALLBACK, rules=tuple(rules)))
    assert [found(index, "d", ("path", p)).limit for p in ("/api/v1/x", "/api/v2/x")] == [1, 2]


def test_several_domains_in_one_file(tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(
        (FIXTURES / "example1.yaml").read_text()
        + "---\n"
        + (FIXTURES / "example5.yaml").read_text()
    )
    index = DescriptorIndex(load_rules(path, FALLBACK))
    assert index.match("mongo_cps", [("database", "users")]) is not None
    assert index.match("internal", [("azure", "x")]) is not None


def test_limit_keys_are_distinct_and_escaped() -> None:
    assert limit_key("messaging", [("to_number", "2061111111")]) == "messaging/to_number=2061111111"
    assert limit_key("d", [("a", "b"), ("c", "d")]) == "d/a=b/c=d"
    # Separators inside values cannot make two descriptors share a key.
    assert limit_key("d", [("a", "b/c=d")]) != limit_key("d", [("a", "b"), ("c", "d")])
    assert limit_key("d", [("a", "b/c=d")]) == "d/a=b%2Fc%3Dd"
    assert limit_key("d", [("a", " x\n")]) == "d/a=%20x%0A"
    assert limit_key("d", [("a", "100%")]) != limit_key("d", [("a", "100%25")])


def bad(document: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_envoy([document])
    return str(caught.value)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {
                "domain": "d",
                "descriptors": [
                    {
                        "key": "a",
                        "descriptors": [
                            {"key": "b"},
                            {
                                "key": "c",
                                "rate_limit": {"unit": "fortnight", "requests_per_unit": 1},
                            },
                        ],
                    }
                ],
            },
            "descriptors[0].descriptors[1].rate_limit.unit: unknown unit 'fortnight'",
        ),
        (
            {
                "domain": "d",
                "descriptors": [
                    {"key": "a", "rate_limit": {"unit": "year", "requests_per_unit": 1}}
                ],
            },
            "descriptors[0].rate_limit.unit: unit 'year' is not supported",
        ),
        (
            {
                "domain": "d",
                "descriptors": [
                    {"key": "a", "rate_limit": {"unit": "Year", "requests_per_unit": 1}}
                ],
            },
            "descriptors[0].rate_limit.unit: unit 'Year' is not supported",
        ),
        ({"descriptors": []}, "domain: required"),
        ({"domain": "d", "descriptors": [{"value": "x"}]}, "descriptors[0].key: required"),
        (
            {
                "domain": "d",
                "descriptors": [
                    {"key": "a", "rate_limit": {"unit": "second", "requests_per_unit": -1}}
                ],
            },
            "descriptors[0].rate_limit.requests_per_unit: from 0 to 4294967295, got -1",
        ),
        (
            {"domain": "d", "descriptors": [{"key": "a", "rate_limit": {"unit": "second"}}]},
            "descriptors[0].rate_limit.requests_per_unit: required",
        ),
        (
            {"domain": "d", "descriptors": [{"key": "a", "ratelimit": {}}]},
            "descriptors[0].ratelimit: unknown field",
        ),
        (
            {"domain": "d", "descriptors": [{"key": "a", "shadow_mode": "yes"}]},
            "descriptors[0].shadow_mode: expected true or false",
        ),
        (
            {
                "domain": "d",
                "descriptors": [{"key": "a", "value": "b"}, {"key": "a", "value": "b"}],
            },
            "descriptors[1]: descriptor 'a=b' appears twice",
        ),
        (
            {
                "domain": "d",
                "descriptors": [{"key": "a", "rate_limit": {"unlimited": True, "unit": "second"}}],
            },
            "descriptors[0].rate_limit.unit: an unlimited rate_limit takes no limit",
        ),
        (
            {
                "domain": "d",
                "descriptors": [
                    {
                        "key": "a",
                        "rate_limit": {"replaces": ["x"], "unit": "second", "requests_per_unit": 1},
                    }
                ],
            },
            "descriptors[0].rate_limit.replaces[0]: expected {name:",
        ),
        ({"domain": "d", "descriptors": {"key": "a"}}, "descriptors: expected a list"),
    ],
)
def test_bad_documents_name_the_field(document: dict[str, Any], message: str) -> None:
    assert message in bad(document)


def test_a_bad_file_stops_loading_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "domain": "d",
                "descriptors": [
                    {"key": "a", "rate_limit": {"unit": "fortnight", "requests_per_unit": 1}}
                ],
            }
        )
    )
    with pytest.raises(
        ConfigError,
        match=r"envoy.yaml: descriptors\[0\]\.rate_limit\.unit: unknown unit 'fortnight'",
    ):
        load_rules(path, FALLBACK)


def test_long_or_unusual_places_get_valid_unique_names() -> None:
    rules = parse_envoy(
        [
            {
                "domain": "d",
                "descriptors": [
                    {"key": "a_b", "rate_limit": {"unit": "second", "requests_per_unit": 1}},
                    {
                        "key": "a",
                        "value": "b",
                        "rate_limit": {"unit": "second", "requests_per_unit": 2},
                    },
                    {
                        "key": "path",
                        "value": "/x y",
                        "rate_limit": {"unit": "second", "requests_per_unit": 3},
                    },
                    {"key": "k" * 100, "rate_limit": {"unit": "second", "requests_per_unit": 4}},
                ],
            }
        ]
    )
    names = [rule.name for rule in rules]
    assert len(set(names)) == 4
    RuleSet(default=FALLBACK, rules=tuple(rules))  # valid names, no duplicates
    assert all(isinstance(rule, Rule) and len(rule.name) <= 64 for rule in rules)


CALENDAR_CONFIG = """
domain: billing
descriptors:
  - key: plan
    value: free
    rate_limit: {unit: month, requests_per_unit: 1000}
  - key: plan
    value: team
    rate_limit: {unit: WEEK, requests_per_unit: 5000}
  - key: plan
    value: burst
    rate_limit: {unit: day, requests_per_unit: 100}
"""


def parse_rules_text(text: str) -> RuleSet:
    rules = parse_envoy([yaml.safe_load(text)])
    return RuleSet(default=FALLBACK, rules=tuple(rules))


def test_week_and_month_units_are_calendar_quotas() -> None:
    index = DescriptorIndex(parse_rules_text(CALENDAR_CONFIG))
    free = found(index, "billing", ("plan", "free"))
    team = found(index, "billing", ("plan", "team"))
    day = found(index, "billing", ("plan", "burst"))
    assert (free.algorithm, free.period, free.limit) == ("calendar", "month", 1000)
    assert (team.algorithm, team.period, team.limit) == ("calendar", "week", 5000)
    assert (place(free).unit, place(team).unit) == ("month", "week")
    # Units of fixed length stay fixed windows (their wire names are unchanged).
    assert (day.algorithm, day.window_s, day.period) == ("fixed_window", 86_400.0, None)
    for rule in (free, team):
        assert decode_rule(RuleRecord(rule.name.encode(), encode_rule(rule))) == (rule.name, rule)
