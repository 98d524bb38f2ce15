"""The decision API benchmark's pure parts: request bodies, the wrk Lua script, options,
probe verdicts, Gubernator's environment and version, ratios and the report (no wrk, no Go,
no server)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from stress_test.bench_check import (
    BATCH,
    GUBERNATOR_MODULE,
    GUBERNATOR_VERSION,
    SCENARIOS,
    answer_ok,
    body_parts,
    check_batch_body,
    check_body,
    check_item,
    compact,
    gubernator_body,
    gubernator_env,
    gubernator_item,
    lua_script,
    module_version,
    parse_args,
    ratio,
    ratios,
    render_table,
    verdict,
)
from stress_test.bench_processes import wrk_command

SCENARIO = {s.name: s for s in SCENARIOS}


def script_of(name: str) -> str:
    make = SCENARIO[name].script
    assert make is not None
    return make()


def lua_bodies(script: str, keys: int, prefix: str = "user-", requests: int = 3) -> list[str]:
    """The first bodies the script's init() builds, computed from its text as Lua would."""

    def long_string(name: str) -> str:
        found = re.search(rf"^local {name} = \[==\[(.*)\]==\]$", script, re.MULTILINE)
        assert found, name
        return found.group(1)

    per_found = re.search(r"^local per_request = (\d+)$", script, re.MULTILINE)
    assert per_found
    per = int(per_found.group(1))
    head, item, tail = long_string("head"), long_string("item"), long_string("tail")
    return [
        head + ",".join(item % f"{prefix}{(r * per + j) % keys}" for j in range(per)) + tail
        for r in range(requests)
    ]


def test_check_bodies_are_the_single_and_batch_forms() -> None:
    assert check_body(["user-1"]) == {"key": "user-1", "cost": 1}
    keys = [f"user-{k}" for k in range(BATCH)]
    batch = {"checks": [{"key": f"user-{k}", "cost": 1} for k in range(BATCH)]}
    assert check_body(keys) == check_batch_body(keys) == batch
    assert check_batch_body(["user-1"]) == {"checks": [{"key": "user-1", "cost": 1}]}


def test_gubernator_body_is_one_hit_under_a_million_per_minute() -> None:
    assert gubernator_body(["user-7"]) == {
        "requests": [
            {
                "name": "bench",
                "unique_key": "user-7",
                "hits": 1,
                "limit": 1_000_000,
                "duration": 60_000,
            }
        ]
    }


@pytest.mark.parametrize(
    ("item", "body", "n"),
    [
        (check_item, check_body, 1),
        (check_item, check_batch_body, 1),
        (check_item, check_batch_body, 2),
        (check_item, check_batch_body, BATCH),
        (gubernator_item, gubernator_body, 1),
        (gubernator_item, gubernator_body, 3),
    ],
)
def test_body_parts_rebuild_each_body_exactly(item: Any, body: Any, n: int) -> None:
    keys = [f"user-{k}" for k in range(n)]
    head, template, tail = body_parts(item, body)
    if body is check_body:
        assert (head, tail) == ("", "")
    assert head + ",".join(template % k for k in keys) + tail == compact(body(keys))


def test_the_lua_script_sends_the_bodies_python_would() -> None:
    script = script_of("check_batch10")
    bodies = lua_bodies(script, keys=1000, requests=101)
    assert json.loads(bodies[0]) == check_body([f"user-{k}" for k in range(10)])
    assert json.loads(bodies[1]) == check_body([f"user-{k}" for k in range(10, 20)])
    assert bodies[100] == bodies[0]  # 100 batches of 10 cover the 1,000 keys, then repeat
    single = script_of("gubernator")
    assert [json.loads(b) for b in lua_bodies(single, keys=2)] == [
        gubernator_body(["user-0"]),
        gubernator_body(["user-1"]),
        gubernator_body(["user-0"]),
    ]


def test_the_lua_script_builds_requests_once_and_cycles() -> None:
    script = lua_script("check", body_parts(check_item, check_body), 1)
    assert "function init(args)" in script
    assert "function request()" in script
    assert '["Content-Type"] = "application/json"' in script
    assert "i = i % count + 1" in script
    assert "function response" not in script  # a Lua call per answer would slow wrk


def test_the_lua_script_refuses_what_it_cannot_quote() -> None:
    with pytest.raises(ValueError, match="holds"):
        lua_script("x", ("", '{"key":"]==]%s"}', ""), 1)
    with pytest.raises(ValueError, match="at least 1"):
        lua_script("x", ("", "%s", ""), 0)


def test_every_scenario_has_a_script_or_the_headers_script() -> None:
    assert [s.name for s in SCENARIOS] == ["check", "check_batch10", "gubernator", "protected"]
    assert SCENARIO["check_batch10"].per_request == BATCH
    assert SCENARIO["protected"].script is None
    for scenario in SCENARIOS:
        if scenario.script is not None:
            assert f"local per_request = {scenario.per_request}\n" in scenario.script()


def test_an_absolute_script_path_reaches_wrk_unchanged() -> None:
    command = wrk_command("wrk", "http://127.0.0.1:1/v1/check", 16, 8, "/tmp/x/check.lua", ["9"])
    assert command[command.index("-s") + 1] == "/tmp/x/check.lua"
    assert command[:4] == ["wrk", "-t1", "-c16", "-d8s"]
    assert "--latency" in command


def test_options_defaults_quick_and_overrides() -> None:
    args = parse_args([])
    assert (args.reps, args.secs, args.conns, args.keys, args.json) == (3, 8.0, 16, 1000, False)
    quick = parse_args(["--quick", "--json"])
    assert (quick.reps, quick.secs, quick.json) == (1, 3.0, True)
    given = parse_args(["--quick", "--secs", "5", "--reps", "2", "--conns", "32"])
    assert (given.reps, given.secs, given.conns) == (2, 5.0, 32)


@pytest.mark.parametrize(
    "argv", [["--reps", "0"], ["--conns", "0"], ["--keys", "0"], ["--secs", "0.5"]]
)
def test_impossible_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2


def test_probe_verdicts() -> None:
    check, batch = SCENARIO["check"], SCENARIO["check_batch10"]
    gub, protected = SCENARIO["gubernator"], SCENARIO["protected"]
    assert answer_ok(check, 200, {"allowed": True, "remaining": 5}) is None
    assert answer_ok(check, 200, {"allowed": False}) is not None
    assert answer_ok(check, 422, {"error": "x"}) is not None
    assert answer_ok(batch, 200, {"results": [{"allowed": True}] * BATCH}) is None
    assert answer_ok(batch, 200, {"results": [{"allowed": True}] * 3}) is not None
    assert answer_ok(batch, 200, [{"allowed": True}] * BATCH) is not None
    assert answer_ok(gub, 200, {"responses": ["x"]}) is not None
    fine = {"status": "UNDER_LIMIT", "limit": "1000000", "remaining": "999999", "error": ""}
    assert answer_ok(gub, 200, {"responses": [fine]}) is None
    lost = {"error": "Error in GetPeer: unable to pick a peer; pool is empty"}
    assert "pick a peer" in str(answer_ok(gub, 200, {"responses": [lost]}))
    assert answer_ok(gub, 200, {"responses": [{**fine, "status": "OVER_LIMIT"}]}) is not None
    assert answer_ok(protected, 429, None) is None
    assert answer_ok(protected, 500, None) is not None


def test_gubernator_runs_alone_on_loopback_with_itself_as_only_peer() -> None:
    env = gubernator_env(1050, 1051, 7946, keys=1000)
    assert env["GUBER_HTTP_ADDRESS"] == "127.0.0.1:1050"
    assert env["GUBER_GRPC_ADDRESS"] == env["GUBER_ADVERTISE_ADDRESS"] == "127.0.0.1:1051"
    assert env["GUBER_PEER_DISCOVERY_TYPE"] == "member-list"
    gossip = {env[k] for k in env if k.startswith("GUBER_MEMBERLIST_")}
    assert gossip == {"127.0.0.1:7946"}
    assert env["GUBER_CACHE_SIZE"] == "50000"
    assert gubernator_env(1, 2, 3, keys=100_000)["GUBER_CACHE_SIZE"] == "200000"
    assert all("0.0.0.0" not in value for value in env.values())


def test_the_module_version_is_read_from_go_version_m() -> None:
    text = (
        ".gubernator/bin/gubernator: go1.26.0\n"
        "\tpath\tgithub.com/gubernator-io/gubernator/v2/cmd/gubernator\n"
        f"\tmod\t{GUBERNATOR_MODULE}\t{GUBERNATOR_VERSION}\th1:abc=\n"
        "\tdep\tgithub.com/sirupsen/logrus\tv1.9.2\th1:def=\n"
    )
    assert module_version(text, GUBERNATOR_MODULE) == GUBERNATOR_VERSION
    assert module_version(text, "github.com/other/module") is None
    assert module_version("", GUBERNATOR_MODULE) is None


def result(rps: float, p99: float, cpu: float, per: int = 1, **extra: Any) -> dict[str, Any]:
    return {"rps": rps, "checks_per_s": rps * per, "p99_ms": p99, "cpu_s_per_request": cpu,
            **extra}  # fmt: skip


def test_ratios_are_ours_over_gubernator() -> None:
    results = {
        "check": result(5000, 4.0, 200e-6),
        "check_batch10": result(2000, 8.0, 500e-6, per=BATCH),
        "gubernator": result(20000, 2.0, 50e-6),
        "protected": result(6000, 3.0, 150e-6),
    }
    assert ratios(results) == {
        "check_rps_vs_gubernator": 0.25,
        "check_p99_vs_gubernator": 2.0,
        "check_cpu_per_request_vs_gubernator": 4.0,
        "batch10_checks_per_s_vs_gubernator": 1.0,
        "batch10_cpu_per_check_vs_gubernator": 1.0,
        "protected_rps_vs_gubernator": 0.3,
    }


def test_ratios_without_gubernator_are_none() -> None:
    values = ratios({"check": result(5000, 4.0, 2e-4)})
    assert set(values.values()) == {None}
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 2.0) is None
    assert ratio(1.0, 3.0) == 0.333


def test_verdicts_let_429s_pass_on_protected_only() -> None:
    clean = {"non_2xx": 0, "socket_errors": 0}
    assert verdict("check", clean) is None
    assert verdict("check", {**clean, "non_2xx": 3}) == "3 non-2xx answers"
    assert verdict("gubernator", {**clean, "non_2xx": 1}) is not None
    assert verdict("protected", {**clean, "non_2xx": 50}) is None
    assert verdict("protected", {**clean, "socket_errors": 2}) == "2 socket errors"


def test_the_table_shows_every_scenario_ratio_and_skip() -> None:
    row = {"label": "ours POST /v1/check", "rps": 5000.0, "checks_per_s": 5000.0,
           "p50_ms": 2.5, "p99_ms": 4.0, "non_2xx": 0, "cpu_us_per_check": 190.5,
           "server_cores": 0.98, "wrk_cores": 0.3, "ok": True}  # fmt: skip
    report = {
        "command": "python -m stress_test.bench_check --quick",
        "date": "2025-01-01T00:00:00+00:00",
        "git": {"commit": "abc1234", "dirty": True},
        "elapsed_s": 20.0,
        "machine": {"cpu": "x", "nproc": 2},
        "settings": {"keys": "cycled over 1000 keys"},
        "results": {"check": row, "protected": {**row, "label": "ours /protected", "ok": False}},
        "ratios": ratios({}),
        "problems": {"protected": "2 socket errors"},
        "skipped": {"gubernator": "Gubernator skipped: `go` not found"},
    }
    text = render_table(report)
    assert "ours POST /v1/check" in text
    assert "5000" in text
    assert "190.5" in text
    assert "! 2 socket errors" in text
    assert "check_rps_vs_gubernator" in text
    assert "None" in text
    assert "skipped gubernator: Gubernator skipped" in text
    assert "(dirty tree)" in text
