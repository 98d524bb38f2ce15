"""The local broker's error paths that need no running Java: Java, Maven, ports, jars, pids."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.cli import main
from service.errors import BrokerError
from service.local.broker import LocalBroker
from service.local.jars import MARKER, fetch_jars, jar_problems, kafka_version, write_marker
from service.local.process import (
    find_java,
    free_port,
    parse_java_major,
    pid_alive,
    port_in_use,
    require_java,
    require_port_free,
)


@pytest.fixture
def bare_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holds only an empty folder (add fakes there); JAVA_HOME is unset."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    return folder


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port some other program listens on for the test's duration."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def fake_program(folder: Path, name: str, script: str) -> Path:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def fake_java(folder: Path, version: str) -> Path:
    return fake_program(folder, "java", f"echo 'openjdk version \"{version}\" 2024-01-16' >&2")


def broker_in(tmp_path: Path, port: int = 1) -> LocalBroker:
    return LocalBroker(port=port, data_dir=tmp_path / "data", jars_dir=tmp_path / "libs" / "v")


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ('openjdk version "22-ea" 2024-03-19', 22),
        ("no version here", None),
    ],
)
def test_parse_java_major(output: str, major: int | None) -> None:
    assert parse_java_major(output) == major


@pytest.mark.usefixtures("bare_path")
def test_java_missing_is_a_clear_error() -> None:
    with pytest.raises(BrokerError, match=r"Java not found .* Java 17\+"):
        find_java()


def test_java_older_than_17_is_refused(bare_path: Path) -> None:
    fake_java(bare_path, "11.0.22")
    with pytest.raises(BrokerError, match=r"needs Java 17 or newer; .* is Java 11"):
        require_java()


def test_java_home_wins_over_path(
    bare_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_java(bare_path, "11.0.22")
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    java = fake_java(home / "bin", "21.0.1")
    monkeypatch.setenv("JAVA_HOME", str(home))
    assert find_java() == str(java)
    assert require_java() == str(java)


@pytest.mark.usefixtures("bare_path")
def test_up_without_java_fails_before_fetching_or_starting(tmp_path: Path) -> None:
    broker = broker_in(tmp_path, port=free_port())
    with pytest.raises(BrokerError, match="Java not found"):
        broker.up()
    assert not broker.pid_file.exists()
    assert not broker.jars_dir.exists()


def test_port_in_use_detection(listening_port: int) -> None:
    assert port_in_use(listening_port)
    with pytest.raises(BrokerError, match=rf"port {listening_port} on 127.0.0.1 is already in use"):
        require_port_free(listening_port)


def test_free_port_is_not_in_use() -> None:
    assert not port_in_use(free_port())


@pytest.mark.usefixtures("bare_path")
def test_up_on_a_taken_port_fails_before_anything_else(tmp_path: Path, listening_port: int) -> None:
    broker = broker_in(tmp_path, port=listening_port)
    with pytest.raises(BrokerError, match=rf"port {listening_port} .* already in use"):
        broker.up()
    assert not broker.pid_file.exists()


def test_cli_prints_the_error_and_exits_non_zero(
    tmp_path: Path, listening_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["kafka", "up", "--port", str(listening_port), "--data-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert f"ratelimiter kafka: error: port {listening_port}" in err


def test_cli_status_exits_3_when_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kafka", "status", "--data-dir", str(tmp_path)]) == 3
    assert "not running" in capsys.readouterr().out


def test_help_documents_the_status_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["kafka", "--help"])
    assert "exit 0 when running, 3 when not" in capsys.readouterr().out


def test_pom_pins_kafka_4_1_1() -> None:
    assert kafka_version() == "4.1.1"


def test_missing_marker_means_incomplete(tmp_path: Path) -> None:
    (tmp_path / "kafka_2.13-4.1.1.jar").write_bytes(b"jar")
    assert jar_problems(tmp_path) == [
        f"no {MARKER} marker in {tmp_path} (never fetched, or the fetch was interrupted)"
    ]


def test_missing_or_resized_jars_are_detected(tmp_path: Path) -> None:
    for name in ("a.jar", "b.jar", "c.jar"):
        (tmp_path / name).write_bytes(name.encode())
    write_marker(tmp_path)
    assert jar_problems(tmp_path) == []

    (tmp_path / "a.jar").unlink()
    (tmp_path / "b.jar").write_bytes(b"truncated!")
    assert jar_problems(tmp_path) == ["a.jar is missing", "b.jar has size 10, expected 5"]


def test_marker_of_another_pom_means_incomplete(tmp_path: Path) -> None:
    (tmp_path / "a.jar").write_bytes(b"a")
    other_pom = tmp_path / "other-pom.xml"
    other_pom.write_text("<kafka.version>9.9.9</kafka.version>")
    write_marker(tmp_path, pom=other_pom)
    assert jar_problems(tmp_path) == [f"{tmp_path / MARKER} was written for a different pom.xml"]


@pytest.mark.usefixtures("bare_path")
def test_complete_cache_needs_no_maven(tmp_path: Path) -> None:
    (tmp_path / "a.jar").write_bytes(b"a")
    write_marker(tmp_path)
    assert fetch_jars(tmp_path) == tmp_path


@pytest.mark.usefixtures("bare_path")
def test_maven_missing_is_an_error_only_when_jars_must_be_fetched(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match=r"Maven \(mvn\) is not on PATH"):
        fetch_jars(tmp_path / "libs" / "4.1.1")


def test_failed_maven_run_shows_its_output_and_leaves_nothing(
    bare_path: Path, tmp_path: Path
) -> None:
    fake_program(bare_path, "mvn", "echo 'Could not resolve org.apache.kafka:kafka_2.13'\nexit 1")
    jars_dir = tmp_path / "libs" / "4.1.1"
    with pytest.raises(BrokerError, match=r"(?s)Maven failed .*exit 1.*Could not resolve"):
        fetch_jars(jars_dir)
    assert sorted(p.name for p in jars_dir.parent.iterdir()) == [".4.1.1.lock"]


def test_successful_fetch_writes_a_verified_marker(bare_path: Path, tmp_path: Path) -> None:
    # A stand-in for Maven that "copies" two jars into -DoutputDirectory.
    fake_mvn = bare_path / "mvn"
    fake_mvn.write_text(
        f"#!{sys.executable}\n"
        "import pathlib, sys\n"
        "[out] = [a.split('=', 1)[1] for a in sys.argv if a.startswith('-DoutputDirectory=')]\n"
        "pathlib.Path(out).mkdir(parents=True)\n"
        "for name in ('one.jar', 'two.jar'):\n"
        "    (pathlib.Path(out) / name).write_text(name)\n"
    )
    fake_mvn.chmod(0o755)
    jars_dir = tmp_path / "libs" / "4.1.1"
    jars_dir.mkdir(parents=True)
    (jars_dir / "stale.jar").write_bytes(b"left from an interrupted fetch")

    assert fetch_jars(jars_dir) == jars_dir
    assert sorted(p.name for p in jars_dir.iterdir()) == [MARKER, "one.jar", "two.jar"]
    assert jar_problems(jars_dir) == []


def test_status_of_a_fresh_data_dir_is_not_running(tmp_path: Path) -> None:
    status = broker_in(tmp_path, port=9999).status()
    assert not status.running
    assert status.pid is None
    assert status.address == "127.0.0.1:9999"


def test_stale_pid_file_is_not_running_and_down_cleans_it(tmp_path: Path) -> None:
    broker = broker_in(tmp_path)
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    broker.data_dir.mkdir()
    broker.pid_file.write_text(f"{exited.pid}\n")

    assert not broker.status().running
    assert broker.down() is None
    assert not broker.pid_file.exists()


def test_pid_of_another_program_is_not_our_broker(tmp_path: Path) -> None:
    broker = broker_in(tmp_path)
    broker.data_dir.mkdir()
    broker.pid_file.write_text("1\n")  # alive, but not a kafka.Kafka of this data dir
    assert pid_alive(1)
    assert not broker.status().running


def test_down_of_a_missing_data_dir_is_a_no_op(tmp_path: Path) -> None:
    broker = broker_in(tmp_path)
    assert broker.down() is None
    assert not broker.data_dir.exists()
