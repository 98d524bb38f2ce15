"""The local MirrorMaker's configuration and error paths that need no running Java."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.cli import main
from service.cli.up import region_names
from service.errors import BrokerError
from service.local import jars
from service.local.mirror import LocalMirror, mm2_properties, parse_clusters
from service.local.process import free_port

CLUSTERS = {"a": "127.0.0.1:9092", "b": "127.0.0.1:9093"}


def test_clusters_parse_from_region_equals_address() -> None:
    assert parse_clusters("a=127.0.0.1:9092, b=127.0.0.1:9093") == CLUSTERS


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a=127.0.0.1:9092", "at least two"),
        ("a=127.0.0.1:9092,a=127.0.0.1:9093", "named twice"),
        ("a.b=127.0.0.1:9092,c=127.0.0.1:9093", "bad cluster"),
        ("a=nowhere,b=127.0.0.1:9093", "bad cluster"),
    ],
)
def test_bad_clusters_are_refused(text: str, problem: str) -> None:
    with pytest.raises(BrokerError, match=problem):
        parse_clusters(text)


def test_every_cluster_is_mirrored_to_every_other_keeping_source_timestamps() -> None:
    props = mm2_properties({**CLUSTERS, "c": "127.0.0.1:9094"}, r"ratelimiter\.state", 2)
    flows = sorted(k for k, v in props.items() if k.endswith(".enabled") and "->" in k)
    assert flows == [f"{s}->{t}.enabled" for s in "abc" for t in "abc" if s != t]
    assert props["b.bootstrap.servers"] == "127.0.0.1:9093"
    # A mirrored topic must not get the source's LogAppendTime: its broker would restamp.
    excluded = [p.strip() for p in props["config.properties.exclude"].split(",")]
    assert any(re.fullmatch(p, "message.timestamp.type") for p in excluded)
    assert props["replication.factor"] == "1"
    assert props["topics"] == r"ratelimiter\.state"


def test_mirror_pom_pins_the_brokers_kafka_version() -> None:
    assert jars.kafka_version(jars.MIRROR_POM) == jars.kafka_version()
    assert "connect-mirror" in jars.MIRROR_POM.read_text()


def test_mirror_jars_are_cached_beside_the_brokers() -> None:
    assert jars.default_mirror_jars_dir().name == f"{jars.kafka_version()}-mirror"
    assert jars.default_mirror_jars_dir().parent == jars.default_jars_dir().parent


def test_status_of_a_fresh_data_dir_is_not_running(tmp_path: Path) -> None:
    status = LocalMirror(CLUSTERS, tmp_path).status()
    assert not status.running
    assert status.pid is None


def test_up_fails_clearly_when_a_cluster_does_not_answer(tmp_path: Path) -> None:
    port = free_port()
    mirror = LocalMirror(
        {"a": f"127.0.0.1:{port}", "b": "127.0.0.1:9093"}, tmp_path, jars_dir=tmp_path / "libs"
    )
    with pytest.raises(BrokerError, match=rf"cluster 'a' at 127.0.0.1:{port} does not answer"):
        mirror.up()
    assert not mirror.pid_file.exists()
    assert not (tmp_path / "libs").exists()  # nothing fetched for nothing


def test_cli_mirror_status_exits_3_and_up_needs_clusters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kafka", "mirror", "status", "--data-dir", str(tmp_path)]) == 3
    assert "not running" in capsys.readouterr().out
    assert main(["kafka", "mirror", "up", "--data-dir", str(tmp_path)]) == 1
    assert "needs --clusters" in capsys.readouterr().err


def test_up_without_java_fails_before_fetching_or_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    mirror = LocalMirror(CLUSTERS, tmp_path / "mirror", jars_dir=tmp_path / "libs")
    with pytest.raises(BrokerError, match="Java not found"):
        mirror.up()
    assert not mirror.pid_file.exists()
    assert not (tmp_path / "libs").exists()


def test_up_regions_names_regions_a_b_and_refuses_too_many() -> None:
    assert region_names(2) == ["a", "b"]
    with pytest.raises(BrokerError, match="2 to 26"):
        region_names(27)
