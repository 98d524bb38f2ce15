"""Node settings: flags, RATELIMITER_* environment variables and defaults, validated once."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from crdt.limiter import Algorithm
from crdt.policy import bucket_problem, window_problem
from service.clock import ClockMode
from service.errors import ConfigError
from service.regions import TopicSelector

_NODE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
_PEER_URL = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+:\d{1,5}/?$")

FailMode = Literal["local", "share", "closed"]
RegionFailMode = Literal["local", "share"]
MIN_ADMIN_TOKEN = 16


class Settings(BaseSettings):
    """Everything a node needs; each field is also RATELIMITER_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix="RATELIMITER_", extra="forbid")

    node_id: str = "node-1"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    kafka: str = "none"
    rate: float = Field(10.0, gt=0, allow_inf_nan=False)
    burst: int = Field(20, ge=1)
    algorithm: Algorithm = "token_bucket"
    window_s: float = Field(1.0, gt=0, allow_inf_nan=False)
    flush_ms: float = Field(20.0, gt=0, le=10_000, allow_inf_nan=False)
    # Key records (the compacted per-user snapshot) every 5 s, of the keys changed in the
    # interval before the last. At most 20 s: batches are only kept for
    # min.compaction.lag.ms (60 s), and a key record must cover them first (2.5 intervals).
    snapshot_ms: float = Field(5000.0, gt=0, le=20_000, allow_inf_nan=False)
    partitions: int = Field(12, ge=1, le=10_000)
    topic: str = Field("ratelimiter.state", pattern=r"^[A-Za-z0-9._-]{1,249}$")
    rules: Path | None = None
    # Compacted topic of rule overrides (hot reload); "none" turns it off.
    rules_topic: str = Field("ratelimiter.rules", pattern=r"^[A-Za-z0-9._-]{1,249}$")
    max_keys: int = Field(1_000_000, ge=1)
    epoch_ms: float = Field(1000.0, gt=0, allow_inf_nan=False)
    seal_ms: float = Field(3000.0, gt=0, allow_inf_nan=False)
    fail_mode: FailMode = "local"
    # The broker stamps state records (LogAppendTime); each publish measures this node's
    # offset from it. correct: step the cluster clock to the broker's; refuse: keep it and
    # report not ready beyond max_clock_skew_s; off: measure only.
    clock_mode: ClockMode = "correct"
    max_clock_skew_s: float = Field(1.0, gt=0, le=3600, allow_inf_nan=False)
    bootstrap_timeout_s: float = Field(120.0, gt=0, allow_inf_nan=False)
    # Unset: admin endpoints are off. Set: at least MIN_ADMIN_TOKEN characters.
    admin_token: SecretStr | None = None
    # X-User-Tier picks a rule only behind a gateway that sets it (clients could claim any).
    trust_tier_header: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Envoy's rate limit service (gRPC, with health checking) on this port of `host`;
    # unset: off. A descriptor's own `limit` is honoured only with allow_limit_override.
    grpc_port: int | None = Field(None, ge=0, le=65535)
    allow_limit_override: bool = False
    # Tracing (on when an OTEL_* variable is set) shows keys as sha256(salt + key): with
    # the same salt on every node one key hashes alike across the fleet; unset, each
    # process draws its own.
    trace_key_salt: SecretStr | None = None
    max_buffered_keys: int = Field(1_000_000, ge=1)
    publish_timeout_ms: float = Field(2000.0, gt=0, le=120_000, allow_inf_nan=False)
    # Records of writers (process incarnations) silent this long are tombstoned by the
    # next node that bootstraps, once their keys are idle: the topic does not grow with
    # every deploy.
    # A restarted node loads the state it wrote here at its last graceful stop and reads
    # the state topic only from the offsets recorded with it; unset: off.
    state_dir: Path | None = None
    # A new node asks these peers (comma-separated base URLs, first first) for their state
    # at bootstrap, with --admin-token, and reads the state topic only from the offsets it
    # covers; unset, or when every peer refuses: the whole topic is read.
    bootstrap_from: str | None = Field(None, min_length=1, max_length=2000)
    expire_writers_s: float = Field(600.0, gt=0, allow_inf_nan=False)
    peer_timeout_s: float = Field(10.0, gt=0, allow_inf_nan=False)
    # Each partition is read by R nodes (`all`: every node reads every partition, no
    # members topic). With R, a node reads only the partitions it owns (top R live members
    # by rendezvous hash) and forwards other users' requests to an owner.
    replicas: str = Field("all", pattern=r"^(all|[1-9][0-9]{0,3})$")
    # How the owners are chosen with --replicas N. `ring`: the first R members clockwise
    # on nginx's consistent-hash ring over their --advertise addresses from the point of
    # the partition number, so nginx with `hash $rl_partition consistent` over the same
    # addresses (deploy/partition.js) sends each user to an owner (README "Scaling out").
    placement: Literal["rendezvous", "ring"] = "rendezvous"
    members_topic: str = Field("ratelimiter.members", pattern=r"^[A-Za-z0-9._-]{1,249}$")
    heartbeat_s: float = Field(1.0, gt=0, le=60, allow_inf_nan=False)
    member_expiry_s: float = Field(5.0, gt=0, le=600, allow_inf_nan=False)
    # A forwarded request waits this long for the owners (one after another) before this
    # node decides locally under --fail-mode.
    forward_timeout_ms: float = Field(50.0, gt=0, le=10_000, allow_inf_nan=False)
    # host:port peers forward to (default: --host:--port; a wildcard host gives the hostname).
    advertise: str | None = Field(None, pattern=r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
    # Regions (see service/replication/regions.py): this node's region (the MirrorMaker
    # alias of its Kafka cluster; unset: no regions) and the mirrored state topics of the
    # others it merges: a comma list of names, or a regular expression (default: every
    # `<region>.<topic>`). A remote region is stale when its newest record is older than
    # region_stale_s; then `local` keeps deciding, `share` takes 1/R of every limit.
    region: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    remote_topics: str | None = Field(None, min_length=1, max_length=1000)
    region_fail_mode: RegionFailMode = "local"
    region_stale_s: float = Field(5.0, gt=0, le=3600, allow_inf_nan=False)
    # With --region, a node that published nothing for this long publishes an empty record,
    # so an idle region is seen to be alive (and not stale) by the others.
    region_heartbeat_s: float = Field(1.0, gt=0, le=60, allow_inf_nan=False)
    # Passed through to every Kafka client (producer, consumer, admin).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str) -> str:
        if not _NODE_ID.match(value):
            raise ValueError("use 1-64 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value()
        if token != token.strip() or len(token) < MIN_ADMIN_TOKEN:
            raise ValueError(
                f"use at least {MIN_ADMIN_TOKEN} characters without surrounding blanks "
                "(or leave it unset to turn the admin endpoints off)"
            )
        return value

    @field_validator("kafka")
    @classmethod
    def _kafka(cls, value: str) -> str:
        value = value.strip()
        if value.lower() == "none":
            return "none"
        for part in value.split(","):
            if not _HOST_PORT.match(part.strip()):
                raise ValueError("use HOST:PORT[,HOST:PORT...] or 'none'")
        return value

    @field_validator("bootstrap_from")
    @classmethod
    def _bootstrap_from(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for part in value.split(","):
            if not _PEER_URL.match(part.strip()):
                raise ValueError("use http(s)://HOST:PORT[,http(s)://HOST:PORT...]")
        return value

    @property
    def bootstrap_peers(self) -> tuple[str, ...]:
        """The base URLs of --bootstrap-from, in order."""
        if self.bootstrap_from is None:
            return ()
        return tuple(part.strip().rstrip("/") for part in self.bootstrap_from.split(","))

    @field_validator("rules")
    @classmethod
    def _rules(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @property
    def standalone(self) -> bool:
        """True when the node runs without Kafka."""
        return self.kafka == "none"

    @property
    def replica_count(self) -> int | None:
        """R of --replicas, or None for `all`."""
        return None if self.replicas == "all" else int(self.replicas)

    @property
    def advertised_address(self) -> str:
        """host:port where peers reach this node's HTTP server."""
        if self.advertise is not None:
            return self.advertise
        host = self.host
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard bind, not a bind
            host = socket.gethostname()
        return f"{host}:{self.port}"

    def kafka_options(self) -> dict[str, Any]:
        """TLS and SASL keyword arguments for aiokafka clients (empty for PLAINTEXT)."""
        options: dict[str, Any] = {}
        protocol = self.kafka_security_protocol
        if protocol == "PLAINTEXT":
            return options
        options["security_protocol"] = protocol
        if protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None,
                certfile=str(self.kafka_ssl_certfile) if self.kafka_ssl_certfile else None,
                keyfile=str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
            )
        if protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.kafka_sasl_mechanism or "PLAIN"
            options["sasl_plain_username"] = self.kafka_sasl_username
            if self.kafka_sasl_password is not None:
                options["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        return options


def load_settings(**overrides: Any) -> Settings:
    """Settings from overrides (flags) over RATELIMITER_* variables over defaults.

    Raises ConfigError naming the setting, its flag and its variable.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "settings"
            flag = "--" + name.replace("_", "-")
            problems.append(
                f"{name} ({flag} / RATELIMITER_{name.upper()}): {error['msg']}"
                f" (got {error.get('input')!r})"
            )
        raise ConfigError("invalid setting " + "; ".join(problems)) from exc
    if settings.kafka_security_protocol.startswith("SASL") and not settings.kafka_sasl_username:
        raise ConfigError(
            "invalid setting kafka_sasl_username (--kafka-sasl-username / "
            "RATELIMITER_KAFKA_SASL_USERNAME): required with a SASL security protocol"
        )
    problem = (
        bucket_problem(settings.rate, settings.burst)
        if settings.algorithm == "token_bucket"
        else window_problem(settings.window_s)
    )
    if problem:
        name, _, reason = problem.partition(": ")
        raise ConfigError(
            f"invalid setting {name} (--{name.replace('_', '-')} / "
            f"RATELIMITER_{name.upper()}): {reason}"
        )
    if settings.bootstrap_from is not None:
        if settings.admin_token is None or settings.standalone:
            raise ConfigError(
                "invalid setting bootstrap_from (--bootstrap-from / "
                "RATELIMITER_BOOTSTRAP_FROM): needs --kafka and --admin-token (the peers' "
                "admin token: their state is an admin endpoint)"
            )
        if settings.replica_count is not None:
            raise ConfigError(
                "invalid setting bootstrap_from (--bootstrap-from / "
                "RATELIMITER_BOOTSTRAP_FROM): not supported with --replicas N yet (use "
                "--replicas all)"
            )
    if settings.replica_count is not None:
        if settings.state_dir is not None:
            raise ConfigError(
                "invalid setting state_dir (--state-dir / RATELIMITER_STATE_DIR): not "
                "supported with --replicas N yet (use --replicas all)"
            )
        if settings.member_expiry_s <= settings.heartbeat_s:
            raise ConfigError(
                "invalid setting member_expiry_s (--member-expiry-s / "
                "RATELIMITER_MEMBER_EXPIRY_S): must exceed heartbeat_s "
                f"({settings.heartbeat_s}), got {settings.member_expiry_s}"
            )
    _check_regions(settings)
    if settings.seal_ms <= settings.epoch_ms:
        raise ConfigError(
            f"invalid setting seal_ms (--seal-ms / RATELIMITER_SEAL_MS): must exceed "
            f"epoch_ms ({settings.epoch_ms}), got {settings.seal_ms}"
        )
    return settings


def _check_regions(settings: Settings) -> None:
    """Region settings that only make sense together."""
    if settings.region is None:
        if settings.remote_topics is not None:
            raise ConfigError(
                "invalid setting remote_topics (--remote-topics / RATELIMITER_REMOTE_TOPICS): "
                "needs --region (the region this node belongs to)"
            )
        return
    if settings.standalone:
        raise ConfigError(
            "invalid setting region (--region / RATELIMITER_REGION): needs --kafka (a "
            "standalone node has no mirrored topics to read)"
        )
    if settings.replica_count is not None:
        raise ConfigError(
            "invalid setting region (--region / RATELIMITER_REGION): not supported with "
            "--replicas N yet (use --replicas all)"
        )
    if settings.region_stale_s <= settings.region_heartbeat_s:
        raise ConfigError(
            "invalid setting region_stale_s (--region-stale-s / RATELIMITER_REGION_STALE_S): "
            f"must exceed region_heartbeat_s ({settings.region_heartbeat_s}), got "
            f"{settings.region_stale_s}"
        )
    try:
        remote_topic_selector(settings)
    except ValueError as exc:
        raise ConfigError(
            f"invalid setting remote_topics (--remote-topics / RATELIMITER_REMOTE_TOPICS): {exc}"
        ) from exc


def remote_topic_selector(settings: Settings) -> TopicSelector:
    """Which mirrored state topics a node of `settings.region` merges."""
    assert settings.region is not None
    return TopicSelector.parse(settings.remote_topics, settings.topic, settings.region)
