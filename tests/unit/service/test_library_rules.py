"""Rules at runtime: precedence over the file, wire names, engine state across changes, the
rules topic codec and feed (in memory), admin endpoints and the `rules` CLI's validation."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from pydantic import SecretStr

from crdt.delta import Delta, Entry
from crdt.policy import SyncTiming
from service.bootstrap import build_node
from service.cli import main
from service.engine import Engine, wire_name
from service.errors import BrokerError, PoisonRecord, TopicConfigMismatch, Unavailable
from service.http.app import create_app
from service.node import Node
from service.rules.codec import RuleRecord, decode_rule, encode_rule
from service.rules.document import parse_rules
from service.rules.model import InvalidRule, Rule, overlay, rule_from_mapping
from service.settings import load_settings
from service.testing import T0, ManualClock, MemoryLog, MemoryRules, MemoryRulesLog, MemoryStateLog
from tests.service_helpers import clean_env, sample, served, wait_for

FILE = parse_rules(
    {
        "default": {"rate": 1, "burst": 5},
        "rules": [
            {"name": "partners", "prefix": "partner-", "rate": 10, "burst": 10},
            {"name": "gold", "tier": "gold", "rate": 5, "burst": 5},
        ],
    },
    Rule(name="default", rate=1, burst=1),
)
TIMING = SyncTiming(1.0, 3.0)


def rule(name: str, **fields: object) -> Rule:
    return rule_from_mapping({"name": name, **fields})


@pytest.fixture(autouse=True)
def _no_ratelimiter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


# -- precedence and validation ----------------------------------------------------


def test_topic_rules_override_file_rules_in_place_and_follow_in_name_order() -> None:
    overrides = {
        "zeta": rule("zeta", prefix="z-", rate=1, burst=1),
        "partners": rule("partners", prefix="p-", rate=2, burst=2),
        "alpha": rule("alpha", prefix="a-", rate=1, burst=1),
        "default": rule("default", rate=3, burst=3),
    }
    rules = overlay(FILE, overrides)

    assert [r.name for r in rules.all()] == ["default", "partners", "gold", "alpha", "zeta"]
    assert rules.default.burst == 3
    assert rules.match("p-1").name == "partners"
    assert rules.match("partner-1").name == "default"  # the override replaced the prefix
    assert overlay(FILE, {}) == FILE  # deleting every override restores the file


def test_rule_validation_names_the_problem() -> None:
    with pytest.raises(InvalidRule, match=r"invalid rule 'x': rate: Input should be greater"):
        rule_from_mapping({"name": "x", "rate": 0, "burst": 1})
    with pytest.raises(InvalidRule, match="needs rate and burst"):
        rule_from_mapping({"name": "x", "rate": 1})
    with pytest.raises(InvalidRule, match="named 'x' but was sent as 'y'"):
        rule_from_mapping({"name": "x", "rate": 1, "burst": 1}, "y")
    with pytest.raises(InvalidRule, match="default rule applies to everyone"):
        rule_from_mapping({"rate": 1, "burst": 1, "prefix": "a"}, "default")
    with pytest.raises(InvalidRule, match="JSON object"):
        rule_from_mapping([1, 2], "x")
    assert rule_from_mapping({"rate": 1, "burst": 2}, "y").name == "y"


# -- wire names ---------------------------------------------------------------------


def test_wire_names_are_plain_for_file_limits_and_digests_otherwise() -> None:
    assert wire_name(FILE.default, FILE) == "default"
    shadowed = rule("partners", prefix="x-", rate=10, burst=10, shadow=True)
    assert wire_name(shadowed, FILE) == "partners"  # matching and shadow are not limits
    changed = wire_name(rule("partners", rate=10, burst=11), FILE)
    assert changed.startswith("partners~")
    assert changed == wire_name(rule("partners", prefix="q", rate=10, burst=11), FILE)
    assert wire_name(rule("new", rate=1, burst=1), FILE).startswith("new~")
    long_a, long_b = "a" * 63 + "1", "a" * 63 + "2"
    wa = wire_name(rule(long_a, rate=1, burst=1), FILE)
    wb = wire_name(rule(long_b, rate=1, burst=1), FILE)
    assert len(wa) <= 64
    assert wa != wb


# -- the engine across rule changes -------------------------------------------------


def engine() -> Engine:
    return Engine(FILE, "me/1", ManualClock(), TIMING, 1000)


def test_state_is_kept_when_limits_do_not_change() -> None:
    e = engine()
    e.decide("partner-1", 4, FILE.get("partners"), T0)
    kept = e.limiter(FILE.get("partners"))
    shadowed = rule("partners", prefix="partner-", rate=10, burst=10, shadow=True)
    rules = overlay(FILE, {"partners": shadowed})

    assert e.replace_rules(rules) == []
    assert e.limiter(rules.get("partners")) is kept
    assert e.view("partner-1", rules.get("partners"), T0).tokens == pytest.approx(6)


def test_changed_limits_start_full_and_the_old_limiter_ships_its_admissions() -> None:
    e = engine()
    e.decide("alice", 5, FILE.default, T0)
    rules = overlay(FILE, {"default": rule("default", rate=1, burst=2)})

    assert e.replace_rules(rules) == ["default"]
    new_wire = e.wire["default"]
    assert new_wire.startswith("default~")
    assert e.view("alice", rules.default, T0).tokens == 2  # full under the new limits
    assert [e.decide("alice", 1, rules.default, T0).allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]
    flushed = {name: delta.key for name, delta in e.flush(T0)}
    assert flushed == {"default": "alice", new_wire: "alice"}


def test_deltas_under_retired_limits_are_history_not_unknown_rules() -> None:
    e = engine()
    rules = overlay(FILE, {"default": rule("default", rate=1, burst=2)})
    e.replace_rules(rules)
    old = Delta("bob", "peer/1", (Entry(1000, T0, 1, 0),))

    assert e.apply([("default", old)], T0) == 0  # retired, still held: merged
    assert e.apply([("default~0123456789", old)], T0) == 0  # other limits of a known rule
    assert e.apply([("platinum", old)], T0) == 1  # a rule this node does not know


def test_retired_limiters_go_once_idle_and_come_back_with_their_limits() -> None:
    e = engine()
    e.decide("carol", 5, FILE.default, T0)
    original = e.limiter(FILE.default)
    e.replace_rules(overlay(FILE, {"default": rule("default", rate=1, burst=2)}))
    e.replace_rules(FILE)  # back to the file's limits before the key went idle

    assert e.limiter(FILE.default) is original
    assert e.view("carol", FILE.default, T0).tokens == pytest.approx(0)

    e.replace_rules(overlay(FILE, {"default": rule("default", rate=1, burst=2)}))
    e.flush(T0)
    assert "default" in e.limiters
    later = T0 + 60  # every epoch sealed, the bucket long full again
    e.flush(later)
    e.sweep(later, 1000)
    assert "default" not in e.limiters
    assert set(e.limiters) == set(e.wire.values())


# -- the rules topic codec ----------------------------------------------------------


def test_rule_records_round_trip_and_tombstones_delete() -> None:
    premium = rule("premium", prefix="premium-", rate=100, burst=200, shadow=True)
    value = encode_rule(premium)

    assert orjson.loads(value)["v"] == 1
    assert decode_rule(RuleRecord(b"premium", value)) == ("premium", premium)
    assert decode_rule(RuleRecord(b"premium", None)) == ("premium", None)


@pytest.mark.parametrize(
    ("record", "kind"),
    [
        (RuleRecord(None, b"{}"), "bad_key"),
        (RuleRecord(b"\xff", b"{}"), "bad_key"),
        (RuleRecord(b"x", b"{not json"), "bad_json"),
        (RuleRecord(b"x", b"[1]"), "bad_shape"),
        (RuleRecord(b"x", b'{"v": 2, "rate": 1, "burst": 1}'), "unknown_version"),
        (RuleRecord(b"x", b'{"v": 1, "rate": -1, "burst": 1}'), "invalid_rule"),
        (RuleRecord(b"x", b'{"v": 1, "name": "y", "rate": 1, "burst": 1}'), "invalid_rule"),
        (RuleRecord(b"default", b'{"v": 1, "rate": 1, "burst": 1, "tier": "t"}'), "invalid_rule"),
    ],
)
def test_bad_rule_records_are_poison_of_a_kind(record: RuleRecord, kind: str) -> None:
    with pytest.raises(PoisonRecord) as caught:
        decode_rule(record)
    assert caught.value.kind == kind


# -- nodes following a rules topic in memory ------------------------------------------


class Cluster:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.state = MemoryLog(3)
        self.rules = MemoryRules()
        self.clock = ManualClock()

    def node(self, node_id: str, **overrides: object) -> Node:
        values: dict[str, object] = {
            "kafka": "127.0.0.1:1",
            "node_id": node_id,
            "partitions": 3,
            "flush_ms": 5,
            "rate": 1,
            "burst": 5,
            **overrides,
        }
        return build_node(
            load_settings(**values),
            clock=self.clock,
            state_log=MemoryStateLog(self.state),
            rules_log=MemoryRulesLog(self.rules),
        )

    def put(self, key: bytes, value: bytes | None) -> None:
        self.rules.records.append(RuleRecord(key, value))


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Cluster:
    return Cluster(monkeypatch)


async def test_a_node_starts_with_the_topic_rules_and_follows_changes(cluster: Cluster) -> None:
    cluster.put(b"premium", encode_rule(rule("premium", prefix="p-", rate=1, burst=50)))
    cluster.put(b"default", encode_rule(rule("default", rate=1, burst=2)))
    cluster.put(b"premium", None)
    cluster.put(b"vip", encode_rule(rule("vip", prefix="v-", rate=1, burst=9)))
    async with cluster.node("a") as node:
        await node.wait_ready(5)
        assert [r.name for r in node.rules.all()] == ["default", "vip"]
        assert node.rules.default.burst == 2
        assert sample(node, "ratelimiter_topic_rules") == 2

        cluster.put(b"default", encode_rule(rule("default", rate=1, burst=7)))
        await wait_for(lambda: node.rules.default.burst == 7, 1.0, "the change applied")
        assert node.decide("anyone", 7, node.rules.default).allowed
        cluster.put(b"default", None)
        await wait_for(lambda: node.rules.default.burst == 5, 1.0, "the file default back")
        assert sample(node, "ratelimiter_rule_changes_total") == 5


async def test_bad_records_are_skipped_counted_and_the_rest_applies(cluster: Cluster) -> None:
    cluster.put(b"gold", b"not json")
    cluster.put(b"gold", b'{"v": 1, "name": "gold", "rate": 0, "burst": 1}')
    cluster.put(b"silver", encode_rule(rule("silver", tier="silver", rate=1, burst=3)))
    async with cluster.node("a") as node:
        await node.wait_ready(5)
        assert [r.name for r in node.rules.all()] == ["default", "silver"]
        assert sample(node, "ratelimiter_rule_records_skipped_total", kind="bad_json") == 1
        assert sample(node, "ratelimiter_rule_records_skipped_total", kind="invalid_rule") == 1


async def test_replicas_share_a_changed_rule_and_not_its_old_consumption(cluster: Cluster) -> None:
    async with cluster.node("a") as a, cluster.node("b") as b:
        await a.wait_ready(5)
        await b.wait_ready(5)
        assert a.decide("dave", 5, a.rules.default).allowed

        cluster.put(b"default", encode_rule(rule("default", rate=1, burst=3)))
        await wait_for(lambda: a.rules.default.burst == b.rules.default.burst == 3, 1.0)
        # Fresh limits: dave is full again; consumption under them is shared.
        assert a.decide("dave", 2, a.rules.default).allowed
        await wait_for(lambda: b.engine.view("dave", b.rules.default).tokens < 2, 1.0)
        assert not b.decide("dave", 2, b.rules.default).allowed
        assert b.decide("dave", 1, b.rules.default).allowed


async def test_shadow_mode_set_through_the_topic_admits_and_counts(cluster: Cluster) -> None:
    async with cluster.node("a") as node:
        await node.wait_ready(5)
        shadow = rule("default", rate=1, burst=5, shadow=True)
        cluster.put(b"default", encode_rule(shadow))
        await wait_for(lambda: node.rules.default.shadow, 1.0, "shadow mode on")
        results = [node.decide("erin", 1, node.rules.default) for _ in range(8)]

    assert all(r.allowed for r in results)
    assert node.decisions[("default", "shadow_denied")] == 3
    assert node.decisions[("default", "admitted")] == 5


# -- admin endpoints ------------------------------------------------------------------

ADMIN = {"Authorization": "Bearer s3cret-admin-token-for-tests"}


@pytest.fixture
async def admin_client(cluster: Cluster) -> AsyncIterator[tuple[Node, httpx.AsyncClient]]:
    node = cluster.node("a", admin_token="s3cret-admin-token-for-tests")
    app = create_app(node.settings, node)
    transport = httpx.ASGITransport(app=served(app))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://a") as client,
    ):
        await node.wait_ready(5)
        yield node, client


async def test_admin_endpoints_put_list_and_delete_rules(
    admin_client: tuple[Node, httpx.AsyncClient],
) -> None:
    node, client = admin_client
    body = {"prefix": "beta-", "rate": 1, "burst": 1}

    assert (await client.put("/v1/rules/beta", json=body)).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await client.put("/v1/rules/beta", json=body, headers=wrong)).status_code == 401
    put = await client.put("/v1/rules/beta", json=body, headers=ADMIN)
    assert put.status_code == 200
    assert put.json()["applied"] is True
    assert node.rules.get("beta").prefix == "beta-"

    listed = (await client.get("/v1/rules")).json()
    assert [(r["name"], r["source"]) for r in listed["rules"]] == [
        ("default", "file"),
        ("beta", "topic"),
    ]
    assert listed["rules"][1]["wire"].startswith("beta~")
    # The fast path answers with the new rule's policy at once.
    protected = await client.post("/protected", headers={"X-User-ID": "beta-1"})
    assert protected.headers["ratelimit-policy"] == '"beta";q=1;w=1'

    deleted = await client.delete("/v1/rules/beta", headers=ADMIN)
    assert deleted.status_code == 200
    assert deleted.json() == {"deleted": "beta", "applied": True, "now": None}
    missing = await client.delete("/v1/rules/default", headers=ADMIN)
    assert missing.status_code == 404
    assert "can be overridden, not deleted" in missing.json()["message"]


async def test_admin_put_rejects_invalid_rules_with_a_clear_message(
    admin_client: tuple[Node, httpx.AsyncClient],
) -> None:
    node, client = admin_client
    bad = await client.put("/v1/rules/x", json={"rate": 1}, headers=ADMIN)
    assert bad.status_code == 422
    assert bad.json()["error"] == "invalid_rule"
    assert "needs rate and burst" in bad.json()["message"]
    garbage = await client.put("/v1/rules/x", content=b"{", headers=ADMIN)
    assert garbage.status_code == 400
    assert [r.name for r in node.rules.all()] == ["default"]


async def test_admin_put_answers_503_when_the_topic_cannot_be_written(
    admin_client: tuple[Node, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    node, client = admin_client
    assert node.rules_feed is not None

    async def refuse(key: bytes, value: bytes | None) -> None:
        raise BrokerError("Kafka is away")

    monkeypatch.setattr(node.rules_feed.log, "publish", refuse)
    response = await client.put("/v1/rules/x", json={"rate": 1, "burst": 1}, headers=ADMIN)
    assert response.status_code == 503
    assert "the rule was not written: Kafka is away" in response.json()["message"]


async def test_a_node_without_a_rules_topic_applies_admin_changes_to_itself() -> None:
    settings = load_settings(kafka="none", admin_token=SecretStr("s3cret-admin-token-for-tests"))
    node = build_node(settings, clock=ManualClock())
    app = create_app(settings, node)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://a") as client,
    ):
        put = await client.put("/v1/rules/default", json={"rate": 1, "burst": 1}, headers=ADMIN)
        assert put.json()["applied"] is True
        assert (await client.get("/v1/rules")).json()["rules_topic"] is None
    assert node.rules.default.burst == 1


# -- the CLI validates before it connects ---------------------------------------------


def test_cli_rejects_an_invalid_rule_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["rules", "put", "gold", "--rate", "5", "--kafka", "127.0.0.1:1"])
    assert code == 2
    assert "invalid rule 'gold'" in capsys.readouterr().err
    code = main(["rules", "put", "gold", "--json", "[1]", "--kafka", "127.0.0.1:1"])
    assert code == 2
    assert "--json must be a JSON object" in capsys.readouterr().err


def test_cli_needs_a_broker(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "list"]) == 2
    assert "--kafka HOST:PORT" in capsys.readouterr().err


class FlakyRulesLog(MemoryRulesLog):
    """Fails its first `failures` starts with `error`."""

    def __init__(self, topic: MemoryRules, failures: int, error: Exception) -> None:
        super().__init__(topic)
        self.failures = failures
        self.error = error

    async def start(self) -> None:
        if self.failures:
            self.failures -= 1
            raise self.error
        await super().start()


async def test_a_node_waits_for_the_rules_topic_and_reports_a_mismatch(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("service.node.RETRY_S", 0.01)
    cluster.put(b"default", encode_rule(rule("default", rate=1, burst=2)))
    settings = cluster.node("a").settings
    flaky = FlakyRulesLog(cluster.rules, 3, BrokerError("Kafka is away"))
    node = build_node(
        settings,
        clock=cluster.clock,
        state_log=MemoryStateLog(cluster.state),
        rules_log=flaky,
    )
    async with node:
        await node.wait_ready(5)
        assert node.rules.default.burst == 2
    assert flaky.failures == 0

    broken = FlakyRulesLog(cluster.rules, 1, TopicConfigMismatch("rules topic has 3 partitions"))
    node = build_node(
        settings,
        clock=cluster.clock,
        state_log=MemoryStateLog(cluster.state),
        rules_log=broken,
    )
    async with node:
        with pytest.raises(Unavailable, match="rules topic has 3 partitions"):
            await node.wait_ready(5)
        assert not node.ready
