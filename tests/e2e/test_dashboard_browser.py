"""The /dashboard page rendered by headless Chromium: its script must show the live numbers."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from service.local.jars import repo_root
from tests.e2e.conftest import Spawn
from tests.e2e.http import key_view, protected, wait_until

pytestmark = pytest.mark.e2e

CHROMIUM_APT_PACKAGE = "chromium"  # Debian's package; CI installs it
ARTIFACTS = repo_root(Path(__file__).parent) / "artifacts"


def chromium() -> str:
    """The Chromium binary; a missing browser fails the test (never skips it)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.fail(
        "headless Chromium is not installed: the dashboard test needs Debian's "
        f"`{CHROMIUM_APT_PACKAGE}` package (apt-get install -y {CHROMIUM_APT_PACKAGE})",
        pytrace=False,
    )


def browse(url: str, profile: Path, *extra: str) -> str:
    """Run headless Chromium on `url` with 3 s of virtual time for the page's script."""
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=3000",
        *extra, url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


class Rendered(HTMLParser):
    """Text of every element with an id, and the body rows of every table with an id."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self._open: list[str | None] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        ident = dict(attrs).get("id")
        if tag == "table" and ident:
            self._table = ident
            self.rows[ident] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        self._open.append(ident)
        if ident:
            self.text.setdefault(ident, "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._table is not None and self._row:
            self.rows[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        for ident in self._open:
            if ident:
                self.text[ident] += data


def test_dashboard_shows_totals_peers_and_top_keys_in_a_browser(
    spawn: Spawn, kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    chromium()  # fail at once, before starting anything, when the browser is missing
    # Rate 1/s: the 30 requests take far less than a second, so 20 pass and 10 do not.
    args = ("--topic", topic, "--rate", "1", "--burst", "20")
    a = spawn("dash-a", kafka_bootstrap, *args)
    b = spawn("dash-b", kafka_bootstrap, *args)
    with httpx.Client() as client:
        codes = [protected(client, a, "alice") for _ in range(30)]
        assert codes.count(200) == 20
        wait_until(lambda: key_view(client, b, "alice")["consumed"] == 20, 10, "b merges alice")

    page_a = Rendered(browse(f"{a.url}/dashboard", tmp_path / "profile-a", "--dump-dom"))
    page_b = Rendered(browse(f"{b.url}/dashboard", tmp_path / "profile-b", "--dump-dom"))

    assert page_a.text["node"] == "dash-a"
    assert page_a.text["admitted-total"] == "20"
    assert page_a.text["denied-total"] == "10"
    assert float(page_a.text["admitted-rate"]) > 0
    assert page_b.text["admitted-total"] == "0"  # b decided nothing itself ...
    alice = next(row for row in page_b.rows["top-keys"] if row[0] == "alice")
    assert alice[2] == "20"  # ... but merged what a admitted for alice
    assert [row[0] for row in page_b.rows["peers"]] == ["dash-a"]
    assert page_b.rows["peers"][0][2].endswith("s ago")
    assert int(page_b.text["lag-count"]) > 0
    assert page_b.text["lag-p99"] != "–"
    assert page_b.text["loop-p99"] != "–"  # the event-loop lag probe runs from the start
    assert page_b.text["status"].startswith("ready")

    screenshot = tmp_path / "dashboard.png"
    browse(
        f"{b.url}/dashboard",
        tmp_path / "profile-shot",
        f"--screenshot={screenshot}",
        "--window-size=1200,800",
        "--hide-scrollbars",
    )
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000  # a rendered page, not a blank one
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(screenshot, ARTIFACTS / "dashboard.png")
