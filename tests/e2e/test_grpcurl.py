"""grpcurl, a gRPC client nobody here wrote, calls a real node's ShouldRateLimit through
server reflection (no proto files): OK until the descriptor's limit, then OVER_LIMIT, with
the answer's JSON checked; health through it too, and the request id in the trailers.

grpcurl is built by `make tools` (`go install`, into .tools/); without it this test fails
and says how to build it: it never skips.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from service.local.process import free_port
from tests.e2e.conftest import Spawn
from tests.e2e.http import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: hour, requests_per_unit: 3}
"""
RLS = "envoy.service.ratelimit.v3.RateLimitService"


def grpcurl_binary() -> Path:
    """The grpcurl that `make tools` built (or $GRPCURL); fails the test when absent."""
    makefile = (ROOT / "Makefile").read_text()
    found = re.search(r"^GRPCURL_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert found, "the Makefile names no GRPCURL_VERSION"
    version = found.group(1)
    default = ROOT / ".tools" / f"grpcurl-{version}" / "grpcurl"
    binary = Path(os.environ.get("GRPCURL", default))
    if not os.access(binary, os.X_OK):
        log = Path(os.environ.get("GRPCURL_LOG", ROOT / ".tools" / f"grpcurl-{version}.log"))
        why = log.read_text()[-2000:] if log.is_file() else "it was never built"
        pytest.fail(
            f"grpcurl {version} is missing at {binary}. Build it with `make tools` (needs Go: "
            f"GOBIN={binary.parent} go install "
            f"github.com/fullstorydev/grpcurl/cmd/grpcurl@{version}). Last build:\n{why}"
        )
    return binary


def grpcurl(binary: Path, address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # -emit-defaults: OK (0) and a remaining 0 are written out, not left implicit (and
        # fields keep their proto names: overall_code, limit_remaining).
        [
            str(binary),
            "-plaintext",
            "-emit-defaults",
            "-max-time",
            "10",
            *args[:-1],
            address,
            args[-1],
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def call(binary: Path, address: str, method: str, body: dict[str, Any], *flags: str) -> Any:
    done = grpcurl(binary, address, *flags, "-d", json.dumps(body), method)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if "-v" not in flags else done.stdout


def test_grpcurl_calls_should_rate_limit_by_reflection(spawn: Spawn, tmp_path: Path) -> None:
    binary = grpcurl_binary()
    rules = tmp_path / "envoy.yaml"
    rules.write_text(CONFIG)
    port = free_port()
    spawn("grpcurl-1", "none", "--rules", str(rules), "--grpc-port", str(port))
    address = f"127.0.0.1:{port}"

    def serving() -> bool:
        done = grpcurl(binary, address, "-d", '{"service": ""}', "grpc.health.v1.Health/Check")
        return done.returncode == 0 and json.loads(done.stdout).get("status") == "SERVING"

    wait_until(serving, 30, "gRPC health SERVING, asked by grpcurl")
    listed = grpcurl(binary, address, "list")
    assert listed.returncode == 0, listed.stderr
    assert RLS in listed.stdout.split()

    ask = {
        "domain": "edge",
        "descriptors": [{"entries": [{"key": "remote_address", "value": "10.0.0.1"}]}],
    }
    answers = [call(binary, address, f"{RLS}/ShouldRateLimit", ask) for _ in range(4)]

    assert [a["overall_code"] for a in answers] == ["OK", "OK", "OK", "OVER_LIMIT"]
    first, last = answers[0]["statuses"][0], answers[-1]["statuses"][0]
    assert first["code"] == "OK"
    assert first["current_limit"] == {
        "name": "edge.remote_address",
        "requests_per_unit": 3,
        "unit": "HOUR",
    }
    assert first["limit_remaining"] == 2
    assert last["code"] == "OVER_LIMIT"
    assert last["limit_remaining"] == 0
    assert last["duration_until_reset"].endswith("s")
    headers = {h["key"]: h["value"] for h in answers[-1]["response_headers_to_add"]}
    assert headers["ratelimit"].startswith('"edge.remote_address";r=0;')
    assert int(headers["retry-after"]) > 0
    # Another address has its own budget.
    other = {**ask, "descriptors": [{"entries": [{"key": "remote_address", "value": "10.0.0.2"}]}]}
    assert call(binary, address, f"{RLS}/ShouldRateLimit", other)["overall_code"] == "OK"
    # The request id given in the metadata comes back in the trailers.
    verbose = call(
        binary, address, f"{RLS}/ShouldRateLimit", other, "-v", "-H", "x-request-id: grpcurl-7"
    )
    trailers = verbose.split("Response trailers received:")[1]
    assert "x-request-id: grpcurl-7" in trailers
