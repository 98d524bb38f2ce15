"""The one place a node is wired: settings in; rules, engine, metrics and adapters made; a
Node out. Real adapters (Kafka) are the defaults; tests and benchmarks pass fakes
(`service.testing`) or adapters of their own. Nothing connects here: `Node.start()` does."""

from __future__ import annotations

import secrets
import time

from crdt.policy import SyncTiming
from service.clock import AnchoredClock, Clock, DisciplinedClock
from service.engine import Engine
from service.errors import ConfigError
from service.membership.log import KafkaMembersLog, MembersLog
from service.membership.members import Membership
from service.metrics import Metrics
from service.node import Node
from service.placement import Placement
from service.regions import RegionTracker
from service.replication.codec import partition_for_user
from service.replication.remotelog import KafkaRemoteLog, RemoteLog
from service.replication.replicator import Replicator
from service.replication.snapshot import snapshot_path
from service.replication.statelog import KafkaStateLog, StateLog
from service.rules.document import load_rules
from service.rules.feed import RulesFeed
from service.rules.log import KafkaRulesLog, RulesLog
from service.rules.model import RuleSet, default_rule
from service.settings import Settings, remote_topic_selector


def new_incarnation() -> str:
    """A fresh id for this process start: peers never confuse it with an earlier run."""
    return f"{int(time.time()):x}{secrets.token_hex(3)}"


def kafka_state_log(settings: Settings) -> KafkaStateLog:
    """The state topic on the settings' Kafka cluster."""
    return KafkaStateLog(
        settings.kafka,
        settings.topic,
        settings.partitions,
        client_id=f"ratelimiter-{settings.node_id}",
        linger_ms=max(1, int(settings.flush_ms / 4)),
        publish_timeout_s=settings.publish_timeout_ms / 1000,
        security=settings.kafka_options(),
    )


def kafka_remote_log(settings: Settings) -> KafkaRemoteLog:
    """Other regions' mirrored state topics on the settings' Kafka cluster (--region)."""
    return KafkaRemoteLog(
        settings.kafka,
        remote_topic_selector(settings),
        client_id=f"ratelimiter-{settings.node_id}",
        security=settings.kafka_options(),
    )


def kafka_rules_log(settings: Settings) -> KafkaRulesLog:
    """The rules topic on the settings' Kafka cluster."""
    return KafkaRulesLog(
        settings.kafka,
        settings.rules_topic,
        client_id=f"ratelimiter-{settings.node_id}-rules",
        options=settings.kafka_options(),
    )


def kafka_members_log(settings: Settings) -> KafkaMembersLog:
    """The members topic on the settings' Kafka cluster."""
    return KafkaMembersLog(
        settings.kafka,
        settings.members_topic,
        client_id=f"ratelimiter-{settings.node_id}-members",
        options=settings.kafka_options(),
    )


def build_node(
    settings: Settings,
    *,
    clock: Clock | None = None,
    rules: RuleSet | None = None,
    state_log: StateLog | None = None,
    rules_log: RulesLog | None = None,
    members_log: MembersLog | None = None,
    remote_log: RemoteLog | None = None,
) -> Node:
    """A node for `settings`: standalone when `kafka` is `none`, else replicating through
    `state_log` (the state topic on Kafka by default) and following `rules_log` (the rules
    topic, unless `rules_topic` is `none`). `rules` replaces the --rules file. With
    `--replicas N` it also announces itself on `members_log` (the members topic by default)
    and reads only the partitions it owns.

    `clock` is the node's own cluster clock (default: the wall clock anchored to the
    monotonic one); a replicating node keeps it on the broker's time (--clock-mode)."""
    if settings.standalone and (state_log is not None or rules_log is not None):
        raise ConfigError("a standalone node (kafka: none) has no state or rules log")
    replica = f"{settings.node_id}/{new_incarnation()}"
    source = clock if clock is not None else AnchoredClock()
    discipline: DisciplinedClock | None = None
    if not settings.standalone:
        clock = discipline = DisciplinedClock(
            source, settings.clock_mode, settings.max_clock_skew_s
        )
    else:
        clock = source
    if rules is None:
        fallback = default_rule(
            settings.algorithm, settings.rate, settings.burst, settings.window_s
        )
        rules = load_rules(settings.rules, fallback)
    sync_timing = SyncTiming(settings.epoch_ms / 1000, settings.seal_ms / 1000)
    engine = Engine(rules, replica, clock, sync_timing, settings.max_keys)
    metrics = Metrics(settings.node_id)
    replicator: Replicator | None = None
    rules_feed: RulesFeed | None = None
    placement: Placement | None = None
    if not settings.standalone:
        log = state_log if state_log is not None else kafka_state_log(settings)
        partitions = log.partitions
        remote: RemoteLog | None = None
        regions: RegionTracker | None = None
        if settings.region is not None:
            remote = remote_log if remote_log is not None else kafka_remote_log(settings)
            regions = RegionTracker(
                settings.region_stale_s, remote_topic_selector(settings).expected_regions()
            )
        replicator = Replicator(
            engine,
            log,
            metrics,
            clock,
            lambda user: partition_for_user(user, partitions),
            flush_s=settings.flush_ms / 1000,
            snapshot_s=settings.snapshot_ms / 1000,
            max_buffered=settings.max_buffered_keys,
            discipline=discipline,
            expire_after_s=settings.expire_writers_s,
            snapshot_file=(
                snapshot_path(settings.state_dir, settings.node_id, settings.topic)
                if settings.state_dir is not None
                else None
            ),
            topic=settings.topic,
            remote=remote,
            regions=regions,
            heartbeat_s=settings.region_heartbeat_s if settings.region is not None else None,
            bootstrap_from=settings.bootstrap_peers,
            admin_token=(
                settings.admin_token.get_secret_value() if settings.admin_token is not None else ""
            ),
        )
        if settings.replica_count is not None:
            membership = Membership(
                members_log if members_log is not None else kafka_members_log(settings),
                settings.node_id,
                replica,
                settings.advertised_address,
                metrics,
                heartbeat_s=settings.heartbeat_s,
                expiry_s=settings.member_expiry_s,
            )
            placement = Placement(
                membership,
                replicator,
                replicas=settings.replica_count,
                partitions=partitions,
                partition_of=replicator.partition_of,
                mode=settings.placement,
            )
        if settings.rules_topic != "none":
            feed_log = rules_log if rules_log is not None else kafka_rules_log(settings)
            rules_feed = RulesFeed(feed_log, metrics)
    return Node(
        settings,
        replica=replica,
        rules=rules,
        engine=engine,
        metrics=metrics,
        clock=clock,
        replicator=replicator,
        rules_feed=rules_feed,
        placement=placement,
    )
