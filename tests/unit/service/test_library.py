"""The library API in process: check() answers like /v1/check, lifecycle, rules, shadow mode."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from service.bootstrap import build_node
from service.errors import BadRequest, ConfigError, InvalidParameter, Unavailable, UnknownRule
from service.http.app import create_app
from service.library import CheckResult, RateLimiter
from service.rules.model import Rule, RuleSet
from service.testing import ManualClock
from tests.service_helpers import clean_env, standalone_settings

RULES = {
    "rules": [
        {"name": "search", "algorithm": "fixed_window", "limit": 3, "window_s": 60},
        {"name": "trial", "prefix": "trial-", "rate": 1, "burst": 2, "shadow": True},
    ]
}


@pytest.fixture(autouse=True)
def _no_ratelimiter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def test_check_spends_the_burst_then_denies_with_when_to_retry(clock: ManualClock) -> None:
    async with RateLimiter(rate=2, burst=3, clock=clock) as limiter:
        results = [await limiter.check("alice") for _ in range(4)]

    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.remaining for r in results] == [2, 1, 0, 0]
    assert results[0] == CheckResult(True, 2, 3, 0, 500, "default")
    # Empty bucket of 3 at 2/s: one token in 0.5 s, full in 1.5 s.
    assert results[3] == CheckResult(False, 0, 3, 500, 1500, "default")


async def test_check_answers_exactly_what_v1_check_answers(clock: ManualClock) -> None:
    settings = standalone_settings(rate=2, burst=3)
    app = create_app(settings, build_node(settings, clock=ManualClock()))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://node") as client,
        RateLimiter(rate=2, burst=3, clock=clock) as limiter,
    ):
        for cost in (1, 2, 1, 5):
            body = (await client.post("/v1/check", json={"key": "k", "cost": cost})).json()
            assert (await limiter.check("k", cost)).as_dict() == body


async def test_cost_above_capacity_never_fits(clock: ManualClock) -> None:
    async with RateLimiter(rate=1, burst=5, clock=clock) as limiter:
        result = await limiter.check("bob", cost=6)
    assert not result.allowed
    assert result.retry_after_ms is None


async def test_named_limits_and_prefix_rules_from_a_mapping(clock: ManualClock) -> None:
    async with RateLimiter(rate=100, burst=100, rules=RULES, clock=clock) as limiter:
        searches = [(await limiter.check("carol", limit="search")).allowed for _ in range(4)]
        assert searches == [True, True, True, False]
        assert (await limiter.check("carol")).rule == "default"
        assert limiter.rule_for("trial-1").name == "trial"
        assert limiter.rule_for("carol").name == "default"
        with pytest.raises(UnknownRule, match="'gold'"):
            await limiter.check("carol", limit="gold")


async def test_rules_from_a_yaml_file_or_a_rule_set(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("default: {rate: 1, burst: 1}\n")
    async with RateLimiter(rules=path, clock=clock) as limiter:
        assert [(await limiter.check("d")).allowed for _ in range(2)] == [True, False]
    ruleset = RuleSet(default=Rule(name="default", rate=1, burst=2))
    async with RateLimiter(rules=ruleset, clock=clock) as limiter:
        assert limiter.rules is ruleset
        assert (await limiter.check("d")).limit == 2


def test_bad_settings_and_rules_name_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match="burst"):
        RateLimiter(rate=1, burst=0)
    with pytest.raises(ConfigError, match="rate"):
        RateLimiter(rules={"default": {"rate": -1, "burst": 1}})
    with pytest.raises(ConfigError, match="flush_ms"):
        RateLimiter(flush_ms=-5)


async def test_keys_are_validated_like_user_ids(clock: ManualClock) -> None:
    async with RateLimiter(clock=clock) as limiter:
        for key in ("", " padded ", "x" * 257, "tab\there"):
            with pytest.raises(BadRequest, match="key"):
                await limiter.check(key)
        with pytest.raises(InvalidParameter, match="cost"):
            await limiter.check("ok", cost=0)
        assert (await limiter.check("é" * 128)).allowed  # 256 bytes of UTF-8


async def test_check_before_start_or_after_stop_is_unavailable(clock: ManualClock) -> None:
    limiter = RateLimiter(clock=clock)
    with pytest.raises(Unavailable, match="not started"):
        await limiter.check("early")
    await limiter.start()
    await limiter.start()  # idempotent
    assert (await limiter.check("on")).allowed
    await limiter.stop()
    await limiter.stop()
    with pytest.raises(Unavailable, match="not started"):
        await limiter.check("late")


async def test_shadow_rule_admits_and_counts_would_be_denials(clock: ManualClock) -> None:
    async with RateLimiter(rate=100, burst=100, rules=RULES, clock=clock) as limiter:
        rule = limiter.rule_for("trial-7").name
        results = [await limiter.check("trial-7", limit=rule) for _ in range(5)]
        metrics = limiter.metrics().decode()

    assert all(r.allowed for r in results)
    assert [r.shadow_denied for r in results] == [False, False, True, True, True]
    # A would-be denial spends nothing, as an enforced denial would not.
    assert [r.remaining for r in results] == [1, 0, 0, 0, 0]
    assert 'ratelimiter_decisions_total{outcome="shadow_denied",rule="trial"} 3.0' in metrics
    assert 'ratelimiter_decisions_total{outcome="admitted",rule="trial"} 2.0' in metrics
    assert 'ratelimiter_decisions_total{outcome="denied",rule="trial"} 0.0' in metrics


async def test_headers_are_the_nodes(clock: ManualClock) -> None:
    async with RateLimiter(rate=10, burst=20, clock=clock) as limiter:
        admitted = await limiter.check("h", cost=20)
        denied = await limiter.check("h")
    assert admitted.headers() == [
        (b"ratelimit-policy", b'"default";q=20;w=2'),
        (b"ratelimit", b'"default";r=0;t=2'),
    ]
    assert (b"retry-after", b"1") in denied.headers()
