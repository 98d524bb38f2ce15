"""`ratelimiter rules put` flags build the rule they name, calendar quotas included."""

from __future__ import annotations

import argparse

import pytest

from service.cli.rules import _describe, add_arguments, rule_from_args
from service.rules.model import InvalidRule


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["put", *argv])


def test_a_calendar_quota_from_flags() -> None:
    rule = rule_from_args(
        parsed("free-plan", "--algorithm", "calendar", "--period", "month", "--limit", "10000")
    )
    assert (rule.algorithm, rule.period, rule.limit) == ("calendar", "month", 10000)
    assert "limit=10000 per month" in _describe(rule)


def test_a_calendar_quota_needs_its_period() -> None:
    with pytest.raises(InvalidRule, match="needs limit and period"):
        rule_from_args(parsed("q", "--algorithm", "calendar", "--limit", "5"))


def test_unknown_periods_are_refused_by_the_parser() -> None:
    with pytest.raises(SystemExit):
        parsed("q", "--algorithm", "calendar", "--period", "year", "--limit", "5")
