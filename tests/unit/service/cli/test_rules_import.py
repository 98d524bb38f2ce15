"""`ratelimiter rules import`: Envoy ratelimit YAML checked before any broker is asked,
and a re-imported domain replaces its own rules only."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import main
from service.cli.rules import envoy_file_rules, import_changes
from service.rules.model import InvalidRule, Rule

FIXTURES = Path(__file__).parents[3] / "fixtures" / "envoy"


def test_a_bad_file_exits_2_naming_the_field_without_a_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(
        "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n"
        "      - key: c\n        rate_limit: {unit: fortnight, requests_per_unit: 1}\n"
    )
    # Port 1 answers nobody: the file is refused before Kafka is tried.
    assert main(["rules", "import", str(path), "--kafka", "127.0.0.1:1"]) == 2
    error = capsys.readouterr().err
    assert "descriptors[0].descriptors[1].rate_limit.unit: unknown unit 'fortnight'" in error
    assert str(path) in error


def test_reimporting_a_domain_deletes_its_rules_that_are_gone_and_keeps_others() -> None:
    first = envoy_file_rules(FIXTURES / "example2.yaml")
    other = envoy_file_rules(FIXTURES / "example1.yaml")
    own = Rule(name="premium", prefix="p-", rate=1, burst=1)
    held = {rule.name: rule for rule in [*first, *other, own]}
    kept = [rule for rule in first if rule.name != "messaging.to_number"]
    changes = import_changes(held, kept)
    assert changes["messaging.to_number"] is None
    assert all(changes[rule.name] == rule for rule in kept)
    assert not {rule.name for rule in other} & set(changes)
    assert "premium" not in changes


def test_an_import_beyond_the_rule_cap_is_refused() -> None:
    many = {f"r{i}": Rule(name=f"r{i}", rate=1, burst=1) for i in range(999)}
    with pytest.raises(InvalidRule, match="at most 1000"):
        import_changes(many, envoy_file_rules(FIXTURES / "example2.yaml"))
