"""Node settings: defaults, RATELIMITER_* variables, overrides, and errors naming the setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service.errors import ConfigError
from service.settings import load_settings, remote_topic_selector
from tests.service_helpers import clean_env

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _no_ratelimiter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


def test_defaults() -> None:
    settings = load_settings()

    assert settings.rate == 10
    assert settings.burst == 20
    assert settings.flush_ms == 20
    assert settings.partitions == 12
    assert settings.topic == "ratelimiter.state"
    assert settings.kafka == "none"
    assert settings.standalone
    assert settings.rules is None


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATELIMITER_RATE", "2.5")
    monkeypatch.setenv("RATELIMITER_BURST", "7")
    monkeypatch.setenv("RATELIMITER_NODE_ID", "edge-3")
    monkeypatch.setenv("RATELIMITER_KAFKA", "broker-1:9092,broker-2:9092")
    monkeypatch.setenv("RATELIMITER_FLUSH_MS", "50")
    monkeypatch.setenv("RATELIMITER_TOPIC", "other.state")

    settings = load_settings()

    assert settings.rate == 2.5
    assert settings.burst == 7
    assert settings.node_id == "edge-3"
    assert settings.kafka == "broker-1:9092,broker-2:9092"
    assert not settings.standalone
    assert settings.flush_ms == 50
    assert settings.topic == "other.state"


def test_explicit_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATELIMITER_RATE", "2.5")
    monkeypatch.setenv("RATELIMITER_BURST", "7")

    # Flags arrive as strings from the CLI; None means "flag not given".
    settings = load_settings(rate="4", burst=None)

    assert settings.rate == 4
    assert settings.burst == 7


def test_kafka_none_is_case_insensitive() -> None:
    assert load_settings(kafka=" NONE ").standalone


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("rate", 0),
        ("rate", -1),
        ("rate", "nan"),
        ("burst", 1.5),
        ("burst", 0),
        ("port", 70000),
        ("kafka", "nohost"),
        ("node_id", "node one"),
        ("flush_ms", 0),
        ("partitions", 0),
        ("topic", "bad topic"),
    ],
)
def test_bad_values_name_the_setting_its_flag_and_variable(name: str, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**{name: value})

    message = str(caught.value)
    assert name in message
    assert "--" + name.replace("_", "-") in message
    assert "RATELIMITER_" + name.upper() in message
    assert caught.value.exit_code == 2


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATELIMITER_BURST", "lots")

    with pytest.raises(ConfigError, match="RATELIMITER_BURST"):
        load_settings()


@pytest.mark.parametrize(("seal", "epoch"), [(1000, 1000), (500, 1000)])
def test_seal_must_exceed_epoch(seal: float, epoch: float) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(seal_ms=seal, epoch_ms=epoch)

    message = str(caught.value)
    assert "seal_ms" in message
    assert "--seal-ms" in message
    assert "RATELIMITER_SEAL_MS" in message


def test_missing_rules_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError) as caught:
        load_settings(rules=str(missing))

    message = str(caught.value)
    assert "--rules" in message
    assert "RATELIMITER_RULES" in message
    assert "nope.yaml" in message


def test_existing_rules_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("default: {rate: 1, burst: 2}\n")

    assert load_settings(rules=str(path)).rules == path


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match="colour"):
        load_settings(colour="blue")


def test_serve_cli_refuses_a_bad_rate_before_binding() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--rate", "0", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )

    assert result.returncode == 2, result.stderr
    assert "rate" in result.stderr
    assert "--rate" in result.stderr
    assert "RATELIMITER_RATE" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_region_by_default() -> None:
    settings = load_settings(kafka="127.0.0.1:9092")
    assert settings.region is None
    assert settings.region_fail_mode == "local"


def test_a_region_takes_every_mirrored_copy_by_default() -> None:
    settings = load_settings(kafka="127.0.0.1:9092", region="eu", region_fail_mode="share")
    assert remote_topic_selector(settings).matches("us.ratelimiter.state")


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"remote_topics": "b.ratelimiter.state"}, "needs --region"),
        ({"region": "a", "kafka": "none"}, "needs --kafka"),
        ({"region": "a", "replicas": "2"}, "not supported with --replicas"),
        ({"region": "a", "region_stale_s": 1, "region_heartbeat_s": 1}, "must exceed"),
        ({"region": "a", "remote_topics": "a.ratelimiter.state"}, "own topic"),
        ({"region": "a.b"}, "region"),
        ({"region": "a", "region_fail_mode": "closed"}, "region_fail_mode"),
    ],
)
def test_bad_region_settings_name_the_setting(overrides: dict[str, Any], problem: str) -> None:
    values = {"kafka": "127.0.0.1:9092", **overrides}
    with pytest.raises(ConfigError, match=problem):
        load_settings(**values)


def test_a_state_dir_is_refused_with_replicas_n_at_start() -> None:
    with pytest.raises(ConfigError, match=r"invalid setting state_dir .*--replicas N"):
        load_settings(kafka="127.0.0.1:9092", replicas="2", state_dir="/tmp/never-used")
    load_settings(kafka="127.0.0.1:9092", replicas="all", state_dir="/tmp/never-used")


def test_bootstrap_from_lists_peer_urls_and_needs_kafka_and_the_admin_token() -> None:
    token = "0123456789abcdef"
    settings = load_settings(
        kafka="127.0.0.1:9092",
        admin_token=token,
        bootstrap_from="http://10.0.0.1:8000/, https://peer-2.example:8443",
    )
    assert settings.bootstrap_peers == ("http://10.0.0.1:8000", "https://peer-2.example:8443")
    assert load_settings(kafka="127.0.0.1:9092").bootstrap_peers == ()
    flag = r"invalid setting bootstrap_from \(--bootstrap-from / RATELIMITER_BOOTSTRAP_FROM\)"
    for bad in ("10.0.0.1:8000", "http://10.0.0.1", "ftp://a:1", "http://a:1/v1/state"):
        with pytest.raises(ConfigError, match=flag):
            load_settings(kafka="127.0.0.1:9092", admin_token=token, bootstrap_from=bad)
    with pytest.raises(ConfigError, match=flag + ".*--admin-token"):
        load_settings(kafka="127.0.0.1:9092", bootstrap_from="http://a:1")
    with pytest.raises(ConfigError, match=flag + ".*--kafka"):
        load_settings(kafka="none", admin_token=token, bootstrap_from="http://a:1")
    with pytest.raises(ConfigError, match=flag + ".*--replicas N"):
        load_settings(
            kafka="127.0.0.1:9092", admin_token=token, bootstrap_from="http://a:1", replicas="2"
        )
