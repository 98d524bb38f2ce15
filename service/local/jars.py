"""Jar caches (the broker's, MirrorMaker's): fetched once from Maven Central with Maven,
verified by a marker file. One pom per jar set; both pin the same Kafka version."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from service.errors import BrokerError

POM = Path(__file__).with_name("pom.xml")
MIRROR_POM = Path(__file__).with_name("pom-mirror.xml")  # MirrorMaker 2 (connect-mirror)
MIRROR_SUFFIX = "-mirror"  # its cache folder: <version>-mirror beside the broker's
MARKER = "jars.txt"
HOME_ENV = "RATELIMITER_KAFKA_HOME"
MAVEN_TIMEOUT_S = 900.0

Progress = Callable[[str], None]


def kafka_version(pom: Path = POM) -> str:
    """The Kafka version pinned in the pom (its single source of truth)."""
    found = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", pom.read_text())
    if found is None:
        raise BrokerError(f"{pom} does not pin <kafka.version>")
    return found.group(1)


def repo_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) holding `.git`."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".git").exists():
            return folder
    return here


def default_cache_root() -> Path:
    """`$RATELIMITER_KAFKA_HOME`, else `.kafka/libs` at the repository root (git-ignored)."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    return repo_root() / ".kafka" / "libs"


def default_jars_dir() -> Path:
    """Where this Kafka version's jars are cached: one folder per version."""
    return default_cache_root() / kafka_version()


def default_mirror_jars_dir() -> Path:
    """Where MirrorMaker 2's jars (at the broker's Kafka version) are cached."""
    return default_cache_root() / f"{kafka_version()}{MIRROR_SUFFIX}"


def pom_digest(pom: Path = POM) -> str:
    """SHA-256 of the pom, so editing it (another version, another binding) refetches."""
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def jar_problems(jars_dir: Path, pom: Path = POM) -> list[str]:
    """Why the cache at `jars_dir` is unusable; empty when it is complete."""
    marker = jars_dir / MARKER
    if not marker.is_file():
        return [f"no {MARKER} marker in {jars_dir} (never fetched, or the fetch was interrupted)"]
    lines = marker.read_text().splitlines()
    if not lines or lines[0] != f"# pom-sha256 {pom_digest(pom)}":
        return [f"{marker} was written for a different pom.xml"]
    problems: list[str] = []
    listed = 0
    for line in lines[1:]:
        name, _, size_text = line.rpartition(" ")
        jar = jars_dir / name
        listed += 1
        if not jar.is_file():
            problems.append(f"{name} is missing")
        elif str(jar.stat().st_size) != size_text:
            problems.append(f"{name} has size {jar.stat().st_size}, expected {size_text}")
    if listed == 0:
        problems.append(f"{marker} lists no jars")
    return problems


def write_marker(jars_dir: Path, pom: Path = POM) -> None:
    """Record every jar in `jars_dir` with its size, after a successful fetch."""
    jars = sorted(p for p in jars_dir.iterdir() if p.suffix == ".jar")
    if not jars:
        raise BrokerError(f"Maven copied no jars into {jars_dir}")
    lines = [f"# pom-sha256 {pom_digest(pom)}", *(f"{p.name} {p.stat().st_size}" for p in jars)]
    (jars_dir / MARKER).write_text("\n".join(lines) + "\n")


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_jars(
    jars_dir: Path, *, pom: Path = POM, progress: Progress | None = None, what: str = "Kafka"
) -> Path:
    """Ensure `jars_dir` holds the complete jar set of `pom`, running Maven only when it
    does not; `what` names the set in messages ("Kafka", "MirrorMaker")."""
    if not jar_problems(jars_dir, pom):
        return jars_dir
    # Several processes (a test session and a CLI) may race for the first fetch.
    with file_lock(jars_dir.parent / f".{jars_dir.name}.lock"):
        problems = jar_problems(jars_dir, pom)
        if not problems:
            return jars_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(
                f"the {what} jars in {jars_dir} are not usable ({problems[0]}) and Maven (mvn) "
                f"is not on PATH to fetch them; install Maven 3.x, or point {HOME_ENV} at a "
                "folder that already holds them"
            )
        if progress is not None:
            progress(f"fetching {what} {kafka_version(pom)} jars into {jars_dir} (once) ...")
        staging = jars_dir.with_name(f"{jars_dir.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _copy_dependencies(mvn, pom, staging, what)
            write_marker(staging, pom)
            shutil.rmtree(jars_dir, ignore_errors=True)
            staging.rename(jars_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    problems = jar_problems(jars_dir, pom)
    if problems:
        raise BrokerError(f"the {what} jars in {jars_dir} are incomplete: {'; '.join(problems)}")
    return jars_dir


def _copy_dependencies(mvn: str, pom: Path, output: Path, what: str) -> None:
    """Run maven-dependency-plugin's copy-dependencies for `pom` into `output`."""
    command = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={output}",
    ]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=MAVEN_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(f"Maven did not fetch the {what} jars within {exc.timeout}s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise BrokerError(
            f"Maven failed to fetch the {what} jars (exit {done.returncode}):\n{tail}"
        )
